# ruff: noqa: F821
"""Solutions to the exercises of tutorials/05_communication_and_load_balancing.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 5.1: the top k of g + residual; the rest is the new residual
def topk_step(g, residual, k):
    a = g + residual
    idx = np.argpartition(np.abs(a), a.size - k)[a.size - k:]
    values = a[idx]
    new_residual = a.copy()
    new_residual[idx] = 0.0
    return idx, values, new_residual

# %% Exercise 5.1 (mistake): no error feedback
def topk_step(g, residual, k):
    idx = np.argpartition(np.abs(g), g.size - k)[g.size - k:]
    new_residual = g.copy()
    new_residual[idx] = 0.0
    return idx, g[idx], new_residual

# %% Exercise 5.2: k values and k indices, 4 bytes each, sent once to the one other rank
topk_bytes = 8 * math.ceil(0.01 * 101_770)

# %% Exercise 5.2 (mistake): the values alone
topk_bytes = 4 * math.ceil(0.01 * 101_770)

# %% Exercise 5.3: largest remainders
def balanced_shares(B, speeds):
    s = np.asarray(speeds, dtype=np.float64)
    exact = B * s / s.sum()
    shares = np.floor(exact).astype(int)
    left = B - shares.sum()
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:left]] += 1
    return shares.tolist()

# %% Exercise 5.3 (mistake): rounding down and stopping there
def balanced_shares(B, speeds):
    s = np.asarray(speeds, dtype=np.float64)
    return np.floor(B * s / s.sum()).astype(int).tolist()

# %% Exercise 5.4: max(n_r / s_r) with equal shares, against B / Σ s_r
balance_gain = (512 * 1e-4 / 0.4) / (1024 * 1e-4 / (1.0 + 0.4))

# %% Exercise 5.4 (mistake): equal shares against no straggler
balance_gain = (512 * 1e-4 / 0.4) / (512 * 1e-4 / 1.0)

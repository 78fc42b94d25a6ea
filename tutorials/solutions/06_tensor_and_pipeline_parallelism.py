# ruff: noqa: F821
"""Solutions to the exercises of tutorials/06_tensor_and_pipeline_parallelism.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 6.1: ∂W_r = xᵀ g_r needs nothing; ∂x = Σ_r g_r W_rᵀ needs an all-reduce
def column_backward(comm, x, W_r, g_r):
    dW_r = x.T @ g_r
    dx = comm.allreduce(np.ascontiguousarray(g_r @ W_r.T))
    return dx, dW_r

# %% Exercise 6.1 (mistake): each rank keeps its own share of ∂x
def column_backward(comm, x, W_r, g_r):
    return g_r @ W_r.T, x.T @ g_r

# %% Exercise 6.2: (P − 1)/(M + P − 1) ≤ 0.1  ⇔  M ≥ 9(P − 1) = 27
min_micro_batches = next(m for m in range(1, 1000) if 3 / (m + 3) <= 0.1)

# %% Exercise 6.2 (mistake): M + P − 1 = 30, forgetting to subtract P − 1
min_micro_batches = 30

# %% Exercise 6.3: P − 1 − s warm-up forwards, then F/B in turn, then the last backwards
def one_f_one_b_stage(M, P, s):
    warmup = min(P - 1 - s, M)
    order = [(m, "forward") for m in range(warmup)]
    for i in range(M - warmup):
        order += [(warmup + i, "forward"), (i, "backward")]
    order += [(m, "backward") for m in range(M - warmup, M)]
    return order

# %% Exercise 6.3 (mistake): one warm-up forward too many
def one_f_one_b_stage(M, P, s):
    warmup = min(P - s, M)
    order = [(m, "forward") for m in range(warmup)]
    for i in range(M - warmup):
        order += [(warmup + i, "forward"), (i, "backward")]
    order += [(m, "backward") for m in range(M - warmup, M)]
    return order

# %% Exercise 6.4: GPipe holds all M; 1F1B at most P − s = 4 on stage 0
held_gpipe = 16
held_1f1b = 4

# %% Exercise 6.4 (mistake): one at a time
held_gpipe = 16
held_1f1b = 1

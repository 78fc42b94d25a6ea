# ruff: noqa: F821
"""Solutions to the exercises of tutorials/04_data_parallelism.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 4.1: from the last parameter to the first
def my_buckets(nbytes, bucket_bytes):
    buckets, current, size = [], [], 0
    for i in reversed(range(len(nbytes))):
        if current and size + nbytes[i] > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
    if current:
        buckets.append(current)
    return buckets

# %% Exercise 4.1 (mistake): from the first parameter to the last
def my_buckets(nbytes, bucket_bytes):
    buckets, current, size = [], [], 0
    for i in range(len(nbytes)):
        if current and size + nbytes[i] > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
    return buckets + [current] if current else buckets

# %% Exercise 4.2: every micro-batch's loss divided by the whole batch size
def accumulate(model, x, y, K):
    model.zero_grad()
    B = len(y)
    for k in range(K):
        rows = slice(k * B // K, (k + 1) * B // K)
        local_loss(model, x[rows], y[rows], B).backward()
    return [p.grad.copy() for p in model.parameters()]

# %% Exercise 4.2 (mistake): each micro-batch averaged over itself
def accumulate(model, x, y, K):
    model.zero_grad()
    B = len(y)
    for k in range(K):
        rows = slice(k * B // K, (k + 1) * B // K)
        local_loss(model, x[rows], y[rows], B // K).backward()
    return [p.grad.copy() for p in model.parameters()]

# %% Exercise 4.3: eight full copies of 16 bytes per parameter
job_state_bytes = 8 * 16 * 101_770

# %% Exercise 4.3 (mistake): as if the workers shared one copy
job_state_bytes = 16 * 101_770

# %% Exercise 4.4: B // P each, the remainder to the first ranks
def shard_bounds(B, P):
    base, extra = divmod(B, P)
    sizes = [base + (1 if r < extra else 0) for r in range(P)]
    return [int(v) for v in np.cumsum([0] + sizes)]

# %% Exercise 4.4 (mistake): dropping the remainder
def shard_bounds(B, P):
    return [r * (B // P) for r in range(P + 1)]

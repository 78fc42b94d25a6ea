# ruff: noqa: F821
"""Solutions to the exercises of tutorials/07_memory.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 7.1: parameters 4, gradients 4, Adam 8; stage k divides the first k kinds from the end
def zero_bytes_per_param(stage, P):
    params, grads, optimizer = 4.0, 4.0, 8.0
    if stage >= 1:
        optimizer /= P
    if stage >= 2:
        grads /= P
    if stage >= 3:
        params /= P
    return params + grads + optimizer

# %% Exercise 7.1 (mistake): stage 2 dividing everything
def zero_bytes_per_param(stage, P):
    return {0: 16.0, 1: 8 + 8 / P, 2: 16 / P, 3: 16 / P}[stage]

# %% Exercise 7.2: the input of each of the 5 blocks and the logits: 16 rows x 4 bytes each
held_predicted = 16 * 4 * (32 + 64 + 64 + 64 + 64 + 10)

# %% Exercise 7.2 (mistake): every Linear's and every ReLU's output, as without recomputation
held_predicted = 16 * 4 * (32 + 2 * (64 + 64 + 64 + 64) + 10)

# %% Exercise 7.3: 2e-10 · S must reach half of float16's smallest step, 2⁻²⁵
smallest_scale = next(2.0**k for k in range(64)
                      if np.all((tiny * 2.0**k).astype(np.float16) != 0))

# %% Exercise 7.3 (mistake): one power of two too small
smallest_scale = 128.0

# %% Exercise 7.4: 16 rows per micro-step
accum_activation_bytes = (64 // 4) * 4 * (784 + 2 * 128 + 10)

# %% Exercise 7.4 (mistake): the whole batch
accum_activation_bytes = 64 * 4 * (784 + 2 * 128 + 10)

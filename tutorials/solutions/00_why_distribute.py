# ruff: noqa: F821
"""Solutions to the exercises of tutorials/00_why_distribute.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 0.1: four float32 numbers per parameter
gpt3_state_bytes = 175e9 * (4 + 4 + 4 + 4)   # parameter, gradient, Adam's m and v

# %% Exercise 0.1 (mistake): forgetting Adam's moments
gpt3_state_bytes = 175e9 * (4 + 4)

# %% Exercise 0.2: round up
devices_for_gpt3 = math.ceil(2.8e12 / (80 * 2**30))

# %% Exercise 0.2 (mistake): rounding down
devices_for_gpt3 = int(2.8e12 // (80 * 2**30))

# %% Exercise 0.3: 2 FLOPs per multiply-add, three products per layer
def train_flops(sizes, batch):
    return 6 * batch * sum(n_in * n_out for n_in, n_out in zip(sizes, sizes[1:]))

# %% Exercise 0.3 (mistake): the forward pass only
def train_flops(sizes, batch):
    return 2 * batch * sum(n_in * n_out for n_in, n_out in zip(sizes, sizes[1:]))

# %% Exercise 0.4: FLOPs / (devices x achieved FLOP/s), in days
days_on_1024 = 3.14e23 / (1024 * 0.45 * 312e12) / 86400

# %% Exercise 0.4 (mistake): at the peak rate
days_on_1024 = 3.14e23 / (1024 * 312e12) / 86400

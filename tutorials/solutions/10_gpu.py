# ruff: noqa: F821
"""Solutions to the exercises of tutorials/10_gpu.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 10.1: 4 bytes per gradient, device to host and back
staged_bytes = 2 * 4 * 101_770

# %% Exercise 10.1 (mistake): one way only
staged_bytes = 4 * 101_770

# %% Exercise 10.2: 2·B·784·1024 / rate_gpu = launch_s
batch_launch_bound = launch_s * rate_gpu / (2 * 784 * 1024)

# %% Exercise 10.2 (mistake): one FLOP per multiply-add
batch_launch_bound = launch_s * rate_gpu / (784 * 1024)

# %% Exercise 10.3: 814,160 bytes at 25e9 bytes per second: about 33 µs, small next to a step
staging_us = 2 * 4 * 101_770 / 25e9 * 1e6

# %% Exercise 10.3 (mistake): one way only
staging_us = 4 * 101_770 / 25e9 * 1e6

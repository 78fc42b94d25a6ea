# ruff: noqa: F821
"""Solutions to the exercises of tutorials/09_cost_model_at_scale.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 9.1 (mistake): N counted in elements, not bytes
grad_elements = 784 * 256 + 256 + 256 * 10 + 10
bucket_seconds = line["a"] + line["b"] * grad_elements + profile["engine"]["layouts"]["dp"]["2"]

# %% Exercise 9.1: the bucket line, plus what a data-parallel step costs in a real run
grad_bytes = 4 * (784 * 256 + 256 + 256 * 10 + 10)
bucket_seconds = line["a"] + line["b"] * grad_bytes + profile["engine"]["layouts"]["dp"]["2"]

# %% Exercise 9.2 (mistake): (P - 1) / M, the bubble over the busy time, not over the flush
bubble_share = 3 / 8

# %% Exercise 9.2: (P - 1) / (M + P - 1)
bubble_share = 3 / 11

# %% Exercise 9.3 (mistake): one device, which has no all-reduce at all
bend_10gbe = 1

# %% Exercise 9.3: read off the prediction at each power of two
tenG = sim.hardware(profile, link_spec="ethernet-10g", separate=True)
for i in range(14):
    p = sim.predict(model, sim.Layout(dp=2 ** i, batch_size=16384, blas_threads=1), tenG)
    if sum(p["breakdown"]["communication_s"].values()) > p["breakdown"]["compute_s"]:
        bend_10gbe = 2 ** i
        break

# ruff: noqa: F821
"""Solutions to the exercises of tutorials/01_autograd_and_logistic_regression.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 1.1: the local derivative uses tanh of the input
def tanh(v):
    t = math.tanh(v.data)
    return Value(t, (v,), (1.0 - t * t,))

# %% Exercise 1.1 (mistake): 1 − z² instead of 1 − tanh(z)²
def tanh(v):
    return Value(math.tanh(v.data), (v,), (1.0 - v.data * v.data,))

# %% Exercise 1.2: (ŷ − y)·x with y = 0
grad_negative = (1 / (1 + math.exp(-(1.0 * 2.0 + 0.0))) - 0.0) * 2.0

# %% Exercise 1.2 (mistake): the formula for y = 1
grad_negative = (1 / (1 + math.exp(-2.0)) - 1.0) * 2.0

# %% Exercise 1.3: errors h·|L''|/2 and ε·L/h balance near sqrt(ε), far below the central
# difference's best h (near ε^(1/3)): the forward difference's truncation error is larger
forward = {h: abs((loss_at(w + h, b) - loss_at(w, b)) / h - exact) for h in hs}
best_h_forward = min(forward, key=forward.get)

# %% Exercise 1.3 (mistake): the central difference again
best_h_forward = min(central, key=central.get)

# %% Exercise 1.4: w' = w − η·(+0.268)
w_by_article = 1.0 - 0.01 * 0.268

# %% Exercise 1.4 (mistake): the true gradient's update
w_by_article = 1.0 - 0.01 * (-0.268)

# ruff: noqa: F821
"""Solutions to the exercises of tutorials/02_mlp_on_fashion_mnist.ipynb.

Each ``# %% Exercise ID`` section is the answer cell of that exercise, filled in; each
``(mistake)`` section is a wrong answer that the exercise's check must reject, saying why
(tests/test_notebooks.py runs both).
"""

# %% Exercise 2.1: (softmax − one-hot) / B
def ce_grad(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)

# %% Exercise 2.1 (mistake): the gradient of the summed loss
def ce_grad(logits, labels):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p

# %% Exercise 2.2: moments, bias correction, step
def adam_step(theta, g, m, v, t):
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return theta, m, v

# %% Exercise 2.2 (mistake): no bias correction
def adam_step(theta, g, m, v, t):
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    return theta - 1e-3 * m / (np.sqrt(v) + 1e-8), m, v

# %% Exercise 2.3: 60,000 / 32 and 60,000 / 1,000
steps_per_epoch = 60_000 // 32
batch_for_1000 = 60_000 // 1_000

# %% Exercise 2.3 (mistake): counting a partial last batch that does not exist
steps_per_epoch = 60_000 // 32 + 1
batch_for_1000 = 60

# %% Exercise 2.4: the largest entry of the Shirt row, off the diagonal
row = confusion[CLASSES.index("Shirt")].copy()
row[CLASSES.index("Shirt")] = 0
shirt_mistaken_for = CLASSES[int(row.argmax())]

# %% Exercise 2.4 (mistake): the largest entry including the diagonal
shirt_mistaken_for = CLASSES[int(confusion[CLASSES.index("Shirt")].argmax())]

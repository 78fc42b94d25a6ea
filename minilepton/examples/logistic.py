"""The article's §4 worked example, one SGD step of logistic regression, computed correctly.

One sample x = 1 with label y = 1, weight w = 1, bias b = 0, learning rate η = 0.01:

    z  = w·x + b = 1              ŷ = σ(z) = 1 / (1 + e⁻¹) = 0.7310586
    L  = −[y ln ŷ + (1 − y) ln(1 − ŷ)] = −ln ŷ = 0.3132617
    ∂L/∂z = ŷ − y = −0.2689414    ∂L/∂w = (ŷ − y)·x = −0.2689414,  ∂L/∂b = ŷ − y = −0.2689414
    w' = w − η ∂L/∂w = 1.0026894  b' = b − η ∂L/∂b = 0.0026894

The gradient is negative because ŷ < y: raising w raises ŷ towards 1 and lowers the loss, so
the step moves w *up*. The article's printed values (``ARTICLE``) get several of these wrong;
``ERRATA`` says which and why. ``worked_example`` recomputes every number with the autograd
engine (``nn.logistic_regression``, ``binary_cross_entropy``, ``optim.SGD``) in float64.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .. import nn, optim
from ..autograd import Tensor

INPUTS = {"x": 1.0, "y": 1.0, "w": 1.0, "b": 0.0, "lr": 0.01}

# What the article prints for each quantity (None: it prints nothing for it).
ARTICLE = {"y_hat": 0.732, "loss": 0.365, "dL_dw": 0.268, "dL_db": 0.268, "w_new": 0.732,
           "b_new": -0.003}

ERRATA = [
    ("y_hat", "σ(1) = 1/(1 + e⁻¹) = 0.7310586, which rounds to 0.731, not 0.732."),
    ("loss", ("L = −ln ŷ = 0.3132617. Even the article's own ŷ = 0.732 gives −ln 0.732 = "
              "0.3120; 0.365 follows from neither.")),
    ("dL_dw", ("The article flips the sign: ∂L/∂w = (ŷ − y)·x = −0.2689 is negative because "
               "ŷ < y (raising w lowers the loss), so gradient descent must increase w.")),
    ("dL_db", "The same sign error: ∂L/∂b = ŷ − y = −0.2689, not +0.268."),
    ("w_new", ("w' = w − η·∂L/∂w = 1 + 0.01 × 0.2689 = 1.0026894. A step of η = 0.01 with "
               "|∂L/∂w| < 1 moves w by under 0.01, so w' = 0.732 cannot come from this "
               "update. Even the article's own +0.268 gives 1 − 0.01 × 0.268 = 0.99732: the "
               "printed 0.732 looks like that number with its '99' dropped.")),
    ("b_new", ("b' = b − η·∂L/∂b = 0 + 0.01 × 0.2689 = +0.0026894; the article's −0.003 is "
               "what its wrong-signed gradient gives (0 − 0.01 × 0.268 = −0.00268).")),
]

LABELS = {"y_hat": "ŷ = σ(w·x + b)", "loss": "L = BCE(ŷ, y)", "dL_dw": "∂L/∂w",
          "dL_db": "∂L/∂b", "w_new": "w' = w − η ∂L/∂w", "b_new": "b' = b − η ∂L/∂b"}


def closed_form(x=1.0, y=1.0, w=1.0, b=0.0, lr=0.01) -> dict:
    """The same quantities from the formulas in the module docstring, with plain floats."""
    y_hat = 1.0 / (1.0 + math.exp(-(w * x + b)))
    loss = -(y * math.log(y_hat) + (1 - y) * math.log(1 - y_hat))
    dz = y_hat - y
    return {"y_hat": y_hat, "loss": loss, "dL_dw": dz * x, "dL_db": dz,
            "w_new": w - lr * dz * x, "b_new": b - lr * dz}


def worked_example(x=1.0, y=1.0, w=1.0, b=0.0, lr=0.01) -> dict:
    """One forward, backward and SGD step with the autograd engine; the six values by name."""
    model = nn.logistic_regression(1, dtype="float64")
    model.load_state_dict({name: np.full(p.shape, w if p.ndim == 2 else b)
                           for name, p in model.named_parameters()})
    (_, weight), (_, bias) = model.named_parameters()
    optimizer = optim.SGD(model.parameters(), lr=lr)
    y_hat = model(Tensor(np.array([[x]], dtype=np.float64)))
    loss = nn.functional.binary_cross_entropy(y_hat, np.array([[y]]))
    optimizer.zero_grad()
    loss.backward()
    grads = {"dL_dw": float(weight.grad.reshape(-1)[0]),
             "dL_db": float(bias.grad.reshape(-1)[0])}
    optimizer.step()
    return {"y_hat": y_hat.item(), "loss": loss.item(), **grads,
            "w_new": weight.item(), "b_new": bias.item()}


def report(values: dict) -> dict:
    """Everything ``--json`` prints: inputs, correct values, the article's, and the errata."""
    return {"inputs": dict(INPUTS), "values": values, "article": dict(ARTICLE),
            "errors": [{"quantity": q, "article": ARTICLE[q], "correct": values[q], "why": why}
                       for q, why in ERRATA]}


def format_report(values: dict) -> str:
    """The human-readable walk through the example, one quantity per line, then the errata."""
    lines = ["Logistic regression, one SGD step (the article's §4 example):",
             "  x = 1, y = 1, w = 1, b = 0, η = 0.01", ""]
    for key, label in LABELS.items():
        printed = ARTICLE[key]
        note = "" if printed is None else f"   (article: {printed:g}"
        if printed is not None:
            note += ", wrong)" if not math.isclose(printed, values[key], abs_tol=5e-4) else ")"
        lines.append(f"  {label:<20} = {values[key]: .7f}{note}")
    lines += ["", "Where the article is wrong:"]
    lines += [f"  - {LABELS[q]}: {why}" for q, why in ERRATA]
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    values = worked_example(**INPUTS)
    print(json.dumps(report(values), indent=2, ensure_ascii=False) if as_json
          else format_report(values))
    return 0

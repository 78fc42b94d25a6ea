"""Worked examples behind ``minilepton example NAME``.

- ``logistic``: the article's §4 logistic-regression step, computed with autograd, and where the
  article's printed numbers are wrong.
"""

from __future__ import annotations

EXAMPLES = {"logistic": "the article's §4 logistic-regression step, corrected"}

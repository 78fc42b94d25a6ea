"""Measured tables and how the cost model reads between their points.

A rate measured at a few sizes is read at any other size by straight lines in log-log space
(sizes and seconds span orders of magnitude, and costs are close to power laws between points):

    log y(x) = log y_i + (log x − log x_i) · (log y_{i+1} − log y_i) / (log x_{i+1} − log x_i)

for x_i ≤ x ≤ x_{i+1}. Outside the table the end segment's *rate* is held (seconds per unit
scale with x beyond the largest point, the smallest point's seconds are a floor below it).
``grid`` reads a table over three axes (the m, k, n of a matrix product) the same way, one
axis after the other (multilinear interpolation in log space).
"""

from __future__ import annotations

import bisect
import math


def _log(x: float) -> float:
    return math.log(max(float(x), 1e-300))


def loglog(points, x: float) -> float:
    """y at x from sorted ``points`` [(x, y), ...] (positive), log-log interpolated.

    Below the first point y is the first y; above the last, y grows in proportion to x
    (a constant rate per unit, the largest measured one).
    """
    if not points:
        raise ValueError("an empty table has no value")
    xs = [p[0] for p in points]
    if x <= xs[0]:
        return float(points[0][1])
    if x >= xs[-1]:
        return float(points[-1][1]) * x / xs[-1]
    i = bisect.bisect_right(xs, x) - 1
    (x0, y0), (x1, y1) = points[i], points[i + 1]
    t = (_log(x) - _log(x0)) / (_log(x1) - _log(x0))
    return math.exp(_log(y0) + t * (_log(y1) - _log(y0)))


def _bracket(axis, x: float) -> tuple[int, int, float]:
    """Indices i, j of the axis points around x and the log-space weight of j (clamped)."""
    if x <= axis[0]:
        return 0, 0, 0.0
    if x >= axis[-1]:
        last = len(axis) - 1
        return last, last, 0.0
    j = bisect.bisect_right(axis, x)
    i = j - 1
    return i, j, (_log(x) - _log(axis[i])) / (_log(axis[j]) - _log(axis[i]))


def grid(axes, values, point) -> float:
    """Log-space multilinear interpolation of ``values`` (nested lists over ``axes``, one list
    of increasing positive sizes per axis) at ``point`` (one size per axis), clamped to the
    grid's edges. Values must be positive (rates, not times)."""
    corners = [(1.0, values)]
    for axis, x in zip(axes, point):
        i, j, w = _bracket(axis, x)
        corners = [(weight * (1.0 - w), table[i]) for weight, table in corners] + \
                  ([(weight * w, table[j]) for weight, table in corners] if w > 0 else [])
    return math.exp(sum(weight * _log(value) for weight, value in corners if weight > 0))

"""A strategy's memory by kind: the arrays it holds (for ``memory.MemoryTracker``) and what the
formulas of ``memory.predict`` say it should hold."""

from __future__ import annotations

from .memory import optimizer_arrays, predict, predict_activations


def held_arrays(strategy) -> dict:
    """``{kind: arrays}``: the model's parameters and gradients, the data group's buffers (or
    ZeRO's blocks), the optimizer's state and any master weights."""
    params = strategy.model.parameters()
    out = {"parameters": [p.data for p in params], "gradients": [p.grad for p in params],
           "optimizer": [], "buffers": []}
    parts = [strategy.dp.arrays()] if strategy.dp is not None else []
    parts.append(strategy.master.arrays() if strategy.master is not None
                 else {"optimizer": optimizer_arrays(strategy.optimizer)})
    for part in parts:
        for kind, arrays in part.items():
            out[kind] += arrays
    return out


def optimizer_states(optimizer) -> int:
    """Arrays of state per parameter: Adam's two moments, SGD's momentum buffer (if any)."""
    if type(optimizer).__name__ == "Adam":
        return 2
    return 1 if getattr(optimizer, "momentum", 0) else 0


def predicted(strategy, rows: int) -> dict:
    """``memory.predict`` for this rank's groups; activations for a batch of ``rows`` when the
    model is a whole MLP on this rank (no tensor or pipeline split), else None."""
    params, master = strategy.model.parameters(), strategy.master
    sizes = ([g.n for g in strategy.dp.groups] if strategy.zero
             else [p.data.size for p in params])
    b = params[0].data.dtype.itemsize
    m = master.masters[0].dtype.itemsize if master is not None else b
    out = predict(sizes, strategy.mesh.dp, strategy.zero, b, m,
                  optimizer_states(strategy.optimizer), master is not None and master.copies)
    layers = [layer for layer in strategy.model if hasattr(layer, "out_features")]
    if strategy.pipe is None and strategy.mesh.tp == 1 and rows and layers:
        widths = [layers[0].in_features] + [layer.out_features for layer in layers]
        out["activations_peak_bytes"] = predict_activations(
            widths, rows, b, strategy.recompute, float32_logits=strategy.precision != "fp32")
    return out

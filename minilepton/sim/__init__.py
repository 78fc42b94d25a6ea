"""The cost model: predict a training step's time, throughput and memory on 1 to 10,000 devices.

    from minilepton import sim
    hw = sim.hardware("a100-80gb")                       # or a profile from `minilepton calibrate`
    model = sim.gpt(layers=96, hidden=12288, heads=96, seq_len=2048, vocab=51200)
    layout = sim.Layout(dp=16, tp=8, pp=8, batch_size=1536, micro_batches=96,
                        schedule="1f1b", precision="bf16", recompute=True)
    sim.predict(model, layout, hw)["samples_per_second"]
    sim.search(model, devices=1024, hardware=hw, batch_size=1536)   # every layout that fits

One file per part, each with its formulas in its docstring: ``workload`` (what a model asks of
a device), ``accelerator`` and ``measured`` (how fast a device does it), ``collectives``
(α-β costs of messages, inside and between nodes), ``pipeline`` (bubbles replayed from
``parallel.schedules``), ``memory`` (bytes per device), ``compute`` (one micro-batch on one
stage), ``step`` (the whole step), ``search`` (every layout), ``report`` (the table and its
formulas). It imports no engine, cluster or data code: a configuration is read by attribute.
"""

from .hardware import Hardware, builtin_names, hardware, link, links
from .layout import Layout
from .step import predict
from .workload import Workload, gpt, mlp

__all__ = ["Hardware", "Layout", "Workload", "builtin_names", "gpt", "hardware", "link", "links",
           "mlp", "predict"]

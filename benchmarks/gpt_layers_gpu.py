"""The accelerator model against one GPU: predicted and measured forward + backward of GPT layers.

A stack of GPT decoder layers (layer norm, QKV, attention, projection, layer norm, MLP of 4h
with GELU; bfloat16 parameters and activations; attention through PyTorch's fused scaled
dot-product attention, which keeps no s × s scores, so the prediction uses ``flash_attention``)
is timed forward and backward with CUDA synchronisation, median of repeats after a warm-up. The
prediction is ``sim.compute.stage_time`` of the same layers on the device's built-in profile
(``--hardware``, default ``h200``): products by the efficiency curve, memory-bound work by
bandwidth. No optimizer, no embedding, no logits: the layers alone.

    python benchmarks/gpt_layers_gpu.py --json OUTDIR/gpt_layers_gpu.json

Needs PyTorch with CUDA; ``benchmarks/README.md`` quotes a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from minilepton import sim
from minilepton.sim.compute import stage_time

CASES = [  # layers, hidden, heads, sequence, micro-batch
    (8, 1024, 16, 1024, 8),
    (4, 2048, 16, 2048, 4),
    (4, 4096, 32, 2048, 2),
    (2, 8192, 64, 2048, 1),
    (2, 12288, 96, 2048, 1),
]


def predicted(layers, hidden, heads, seq, batch, hardware) -> float:
    model = sim.gpt(layers, hidden, heads, seq, 1024, flash_attention=True)
    shards = [layer.shard(1, 2) for layer in model.layers if layer.name.startswith("layer")]
    t = stage_time(shards, batch, hardware, "bf16", 1, False)
    return t.forward_s + t.backward_s


def measured(layers, hidden, heads, seq, batch, repeats: int) -> float:
    import torch
    import torch.nn.functional as F

    dev, dt = torch.device("cuda"), torch.bfloat16

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = torch.nn.LayerNorm(hidden, dtype=dt, device=dev)
            self.qkv = torch.nn.Linear(hidden, 3 * hidden, dtype=dt, device=dev)
            self.proj = torch.nn.Linear(hidden, hidden, dtype=dt, device=dev)
            self.ln2 = torch.nn.LayerNorm(hidden, dtype=dt, device=dev)
            self.fc1 = torch.nn.Linear(hidden, 4 * hidden, dtype=dt, device=dev)
            self.fc2 = torch.nn.Linear(4 * hidden, hidden, dtype=dt, device=dev)

        def forward(self, x):
            b, s, h = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, heads, h // heads).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, s, h))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    model = torch.nn.Sequential(*[Block() for _ in range(layers)])
    x = torch.randn(batch, seq, hidden, dtype=dt, device=dev, requires_grad=True)

    def step():
        model(x).float().sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="h200")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    hw = sim.hardware(args.hardware)
    rows = []
    for case in CASES:
        pred = predicted(*case, hw)
        meas = measured(*case, args.repeats)
        rows.append({"layers": case[0], "hidden": case[1], "heads": case[2], "seq_len": case[3],
                     "micro_batch": case[4], "predicted_s": pred, "measured_s": meas,
                     "error": meas / pred - 1})
        print(f"L={case[0]:2} h={case[1]:5} s={case[3]} b={case[4]}: predicted "
              f"{pred * 1e3:8.2f} ms, measured {meas * 1e3:8.2f} ms, throughput error "
              f"{100 * (meas / pred - 1):+6.1f} %", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": args.hardware, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One SGD training step of an MLP on a GPU: minilepton on CuPy against the same step written by
hand in CuPy, and against PyTorch CUDA with TF32 off (where PyTorch is installed).

    python benchmarks/gpu_step.py                  # the two models of the GPU issue, float32
    python benchmarks/gpu_step.py --device cpu --quick   # a dry run of the same code on NumPy

Models: MLP 784-128-10 at batch 128 (launch-bound: a few µs of Python per op decide the time)
and 784-4096-4096-10 at batch 4096 (compute-bound: three large matmuls forward, five backward).
Each implementation starts from the same parameters and the first losses are checked to agree,
so every timing is of the same computation. Timings are interleaved (each repeat runs every
implementation, in a rotating order), every clock read follows a device synchronisation, and
the figures are medians over repeats of the mean time of ``--steps`` consecutive steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

import minilepton as ml
from minilepton import backend

MODELS = {"full": [("784-128-10", [784, 128, 10], 128),
                   ("784-4096-4096-10", [784, 4096, 4096, 10], 4096)],
          "quick": [("784-128-10", [784, 128, 10], 128),
                    ("784-512-512-10", [784, 512, 512, 10], 512)]}
TARGETS = {"hand-written": 1.10, "pytorch": 1.15}  # on an H100, for the large model
LR = 0.01


class MinileptonStep:
    """zero_grad; forward; cross-entropy; backward; SGD update — the public API only."""

    name = "minilepton"

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, ml.Tensor(x), y
        self.opt = ml.optim.SGD(model.parameters(), lr=LR)

    def step(self):
        self.opt.zero_grad()
        loss = ml.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.data


class HandStep:
    """The same step in plain array code: z = a W + b, a = relu(z); softmax cross-entropy;
    ∂z_L = (softmax − onehot)/B, ∂W = aᵀ ∂z, ∂b = Σ ∂z, ∂a = ∂z Wᵀ, ∂z = ∂a·[z > 0]; W −= lr ∂W."""

    name = "hand-written"

    def __init__(self, weights, xp, x, y):
        self.params = [xp.array(w) for w in weights]  # W1, b1, W2, b2, ...
        self.xp, self.x, self.y, self.rows = xp, x, y, xp.arange(len(y))

    def step(self):
        xp, ps, batch = self.xp, self.params, len(self.y)
        acts, zs = [self.x], []
        for i in range(0, len(ps), 2):
            z = acts[-1] @ ps[i] + ps[i + 1]
            zs.append(z)
            if i + 2 < len(ps):
                acts.append(xp.maximum(z, 0))
        shifted = zs[-1] - zs[-1].max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = (xp.log(total).sum() - shifted[self.rows, self.y].sum()) / batch
        dz = e / total
        dz[self.rows, self.y] -= 1
        dz *= 1.0 / batch
        for layer in reversed(range(len(ps) // 2)):
            w, b = ps[2 * layer], ps[2 * layer + 1]
            dw, db = acts[layer].T @ dz, dz.sum(axis=0)
            if layer:
                dz = (dz @ w.T) * (zs[layer - 1] > 0)
            w -= LR * dw
            b -= LR * db
        return loss


class TorchStep:
    """``torch.nn`` Linear/ReLU, ``F.cross_entropy``, ``torch.optim.SGD``; TF32 off."""

    name = "pytorch"

    def __init__(self, torch, weights, device, x, y):
        self.torch = torch
        layers = []
        for i in range(0, len(weights), 2):
            w, b = weights[i], weights[i + 1]
            lin = torch.nn.Linear(*w.shape).to(device)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # (out, in)
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()


def load_torch(device: str):
    """``torch`` with TF32 off when it can run on ``device``, else (None, reason)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if device == "gpu" and not torch.cuda.is_available():
        return None, "PyTorch has no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch, f"PyTorch {torch.__version__}"


def build(sizes, batch, device, torch):
    """The implementations of one model, all from the same initial parameters and batch."""
    xp = backend.namespace(device)
    rng = np.random.default_rng(0)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    model = ml.nn.mlp(sizes, seed=0, dtype="float32")
    weights = [p.numpy().copy() for p in model.parameters()]
    impls = [MinileptonStep(model.to(device), xp.asarray(x), xp.asarray(y)),
             HandStep(weights, xp, xp.asarray(x), xp.asarray(y))]
    if torch is not None:
        impls.append(TorchStep(torch, weights, "cuda" if device == "gpu" else "cpu", x, y))
    return impls


def make_sync(torch, device):
    def sync():
        backend.synchronize()
        if torch is not None and device == "gpu":
            torch.cuda.synchronize()
    return sync


def check_same_computation(impls, sync):
    """The first step's losses agree (float32), so the timings compare the same work."""
    losses = [float(impl.step()) for impl in impls]
    sync()
    if not np.allclose(losses, losses[0], rtol=1e-4):
        raise SystemExit(f"the implementations disagree on the first loss: {losses}")
    return losses[0]


def time_interleaved(impls, sync, repeats: int, steps: int, warmup: int) -> dict:
    """Median over ``repeats`` of the mean seconds per step, implementations interleaved."""
    for impl in impls:
        for _ in range(warmup):
            impl.step()
    sync()
    samples = {impl.name: [] for impl in impls}
    for rep in range(repeats):
        for k in range(len(impls)):
            impl = impls[(rep + k) % len(impls)]  # rotate who goes first
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                impl.step()
            sync()
            samples[impl.name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(s) for name, s in samples.items()}


def count_graph_ops(impl) -> int:
    """Autograd nodes one minilepton step records (each one op with a backward rule)."""
    calls = [0]
    original = ml.Tensor._make.__func__

    def counting(cls, data, parents, backward):
        calls[0] += 1
        return original(cls, data, parents, backward)
    ml.Tensor._make = classmethod(counting)
    try:
        impl.step()
    finally:
        ml.Tensor._make = classmethod(original)
    return calls[0]


def describe_run(args, device, torch_note) -> list:
    lines = [f"command: python {' '.join(sys.argv)}",
             f"date (UTC): {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}",
             (f"python {platform.python_version()}, numpy {np.__version__}, "
              f"minilepton {ml.__version__}, {torch_note}"),
             (f"float32, SGD lr={LR}, {args.repeats} repeats x {args.steps} steps "
              f"(+{args.warmup} warm-up), interleaved, medians, synchronised before every clock read")]
    if device == "gpu":
        cp = backend.namespace("gpu")
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"device: {name}; CuPy {cp.__version__}, CUDA runtime "
                     f"{cp.cuda.runtime.runtimeGetVersion()}, driver {cp.cuda.runtime.driverGetVersion()}")
    else:
        lines.append("device: CPU (NumPy) — a dry run of the benchmark, not a GPU figure")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smaller second model")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        device = backend.resolve_device(args.device)
    except backend.DeviceError as exc:
        print(f"gpu_step: no GPU benchmark on this machine: {exc}")
        return 2
    torch, torch_note = load_torch(device)
    sync = make_sync(torch, device)
    print("\n".join(describe_run(args, device, torch_note)))
    results = {}
    for label, sizes, batch in MODELS["quick" if args.quick else "full"]:
        impls = build(sizes, batch, device, torch)
        loss0 = check_same_computation(impls, sync)
        medians = time_interleaved(impls, sync, args.repeats, args.steps, args.warmup)
        n_ops = count_graph_ops(impls[0])
        base = medians["hand-written"]
        print(f"\nMLP {label}, batch {batch} (first loss {loss0:.5f}, all implementations agree)")
        for name, seconds in medians.items():
            print(f"  {name:<13} {seconds * 1e3:9.3f} ms/step   {seconds / base:5.2f}x hand-written")
        overhead_s = medians["minilepton"] - base
        print(f"  per op: {n_ops} autograd ops per step; {medians['minilepton'] / n_ops * 1e6:.1f} µs "
              f"per op in all, {overhead_s / n_ops * 1e6:+.1f} µs per op over the hand-written step")
        results[label] = {"batch": batch, "median_s": medians, "autograd_ops": n_ops}
    label = MODELS["quick" if args.quick else "full"][-1][0]
    print()
    for name, target in TARGETS.items():
        if name in results[label]["median_s"]:
            ratio = results[label]["median_s"]["minilepton"] / results[label]["median_s"][name]
            results[label][f"ratio_vs_{name}"] = ratio
            verdict = ("met" if ratio <= target else "NOT met") if device == "gpu" else "CPU dry run"
            print(f"ratio {label}: minilepton / {name} = {ratio:.3f}x "
                  f"(target <= {target:.2f}x on an H100: {verdict})")
        else:
            print(f"ratio {label}: minilepton / {name}: not measured ({torch_note})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

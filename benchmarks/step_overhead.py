"""What the autograd engine costs: one full training step of minilepton against the same step
written by hand in NumPy.

A step is forward, softmax cross-entropy (mean), backward and a plain SGD update (lr 0.01) of
an MLP with ReLU, in float32, on one fixed random batch. Both sides start from the same weights
and run interleaved in one process (A, B, A, B, ... with the order alternating each round, so
drifts in clock speed or in load from other processes fall on both), and the reported figure is
the ratio of the median step times. Each block of steps is timed on two clocks: the thread's CPU
time (the default for the verdict: on a machine shared with other jobs it leaves out the time
the process waits for a core, which wall time charges to whichever side happened to be running)
and wall time (what a user waits on an idle machine; the two agree there). BLAS runs on one thread (the environment variables below are
set before NumPy is imported), so the ratio measures the engine's overhead, not thread scheduling.
When ``import torch`` works, PyTorch's CPU step (one thread) is timed alongside for scale;
minilepton itself never needs PyTorch.

Run as:  python benchmarks/step_overhead.py  [--rounds N] [--steps K] [--models small,large]
  small: MLP 784-128-10, batch 128 (the article's model)     target ratio <= 1.10
  large: MLP 784-1024-1024-10, batch 256                       target ratio <= 1.05

The README's benchmark section quotes a run of this command, with the machine it ran on.
"""

from __future__ import annotations

import os

# Before NumPy loads: BLAS reads these once, at import (the names of minilepton's
# THREAD_VARS (cluster/blas.py), written out because importing minilepton would import NumPy first).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse
import platform
import statistics
import time

import numpy as np

import minilepton as ml

MODELS = {"small": ([784, 128, 10], 128), "large": ([784, 1024, 1024, 10], 256)}
TARGETS = {"small": 1.10, "large": 1.05}
LR = 0.01


# ------------------------------------------------------------------ the contenders
class MinileptonStep:
    name = "minilepton"

    def __init__(self, sizes, state, x, y):
        self.model = ml.nn.mlp(sizes, seed=0)
        self.model.load_state_dict(state)
        self.opt = ml.optim.SGD(self.model.parameters(), lr=LR)
        self.x, self.y = x, y

    def __call__(self):
        self.opt.zero_grad()
        loss = ml.nn.functional.cross_entropy(self.model(ml.Tensor(self.x)), self.y)
        loss.backward()
        self.opt.step()
        return loss.data

    def weights(self):
        return [p.data for p in self.model.parameters()]


class NumpyStep:
    """The same step by hand: what one would write without an autograd engine."""

    name = "numpy"

    def __init__(self, sizes, state, x, y):
        names = list(state)
        self.w = [state[names[i]].copy() for i in range(0, len(names), 2)]
        self.b = [state[names[i + 1]].copy() for i in range(0, len(names), 2)]
        self.x, self.y = x, y
        self.rows = np.arange(len(y))

    def __call__(self):
        x, y, rows, n = self.x, self.y, self.rows, len(self.y)
        inputs = []  # the input of each layer, kept for the backward pass
        h = x
        last = len(self.w) - 1
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            inputs.append(h)
            h = h @ w
            h += b
            if i < last:
                np.maximum(h, 0, out=h)
        shifted = h - h.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = (np.log(total).sum() - shifted[rows, y].sum()) / n
        grad = e / total  # ∂loss/∂logits
        grad[rows, y] -= 1
        grad *= 1.0 / n
        for i in range(last, -1, -1):
            w, a = self.w[i], inputs[i]
            grad_w = a.T @ grad
            grad_b = grad.sum(axis=0)
            if i > 0:
                grad = grad @ w.T
                grad *= a > 0  # ReLU's derivative (a is this layer's input, a ReLU output)
            w -= LR * grad_w
            self.b[i] -= LR * grad_b
        return loss

    def weights(self):
        return [a for pair in zip(self.w, self.b) for a in pair]


class TorchStep:
    name = "torch"

    def __init__(self, sizes, state, x, y):
        import torch
        torch.set_num_threads(1)
        layers = []
        names = list(state)
        for i in range(len(sizes) - 1):
            linear = torch.nn.Linear(sizes[i], sizes[i + 1])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(state[names[2 * i]].T.copy()))
                linear.bias.copy_(torch.from_numpy(state[names[2 * i + 1]]))
            layers += [linear, torch.nn.ReLU()]
        self.torch = torch
        self.model = torch.nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install raises more than ImportError
        return False
    return True


# ------------------------------------------------------------------ timing
def compare(key: str, rounds: int, steps: int) -> dict:
    sizes, batch = MODELS[key]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    state = ml.nn.mlp(sizes, seed=0).state_dict()
    kinds = [MinileptonStep, NumpyStep] + ([TorchStep] if torch_available() else [])
    runners = [kind(sizes, state, x, y) for kind in kinds]
    losses = [float(run()) for run in runners]  # warm-up, and the same starting loss
    assert max(losses) - min(losses) < 1e-4 * max(1.0, abs(losses[0])), losses
    for mine, theirs in zip(runners[0].weights(), runners[1].weights()):  # the same update
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    cpu = {run.name: [] for run in runners}
    wall = {run.name: [] for run in runners}
    for r in range(rounds):
        order = runners if r % 2 == 0 else runners[::-1]
        for run in order:
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            for _ in range(steps):
                run()
            cpu[run.name].append((time.thread_time() - start_cpu) / steps)
            wall[run.name].append((time.perf_counter() - start_wall) / steps)
    result = {"model": "-".join(map(str, sizes)), "batch": batch, "target": TARGETS[key]}
    for clock, times in (("cpu", cpu), ("wall", wall)):
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        result[clock] = {"medians_s": medians, "ratio": medians["minilepton"] / medians["numpy"]}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,large", help="comma-separated: small, large")
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleaved rounds (default: 200 small, 30 large)")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per timed block (default: 5 small, 1 large)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="which clock the target is judged on (both are printed)")
    args = parser.parse_args(argv)
    print(f"numpy {np.__version__}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, BLAS threads "
          f"{os.environ['OPENBLAS_NUM_THREADS']}, float32, SGD lr={LR}")
    ok = True
    for key in args.models.split(","):
        rounds = args.rounds or (200 if key == "small" else 30)
        steps = args.steps or (5 if key == "small" else 1)
        res = compare(key, rounds, steps)
        print(f"MLP {res['model']} batch {res['batch']} (median of {rounds} rounds x {steps} "
              f"steps; target ratio <= {res['target']:.2f} on {args.clock} time):")
        for clock in ("cpu", "wall"):
            med, ratio = res[clock]["medians_s"], res[clock]["ratio"]
            times = ", ".join(f"{name} {t * 1e3:.3f} ms" for name, t in med.items())
            verdict = ""
            if clock == args.clock:
                verdict = "  ok" if ratio <= res["target"] else "  ABOVE TARGET"
                ok &= ratio <= res["target"]
            print(f"  {clock:4s} {times}; ratio {ratio:.3f}{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast one GPU multiplies matrices of each shape, and how fast it moves memory: the numbers
behind the accelerator profiles of the cost model (``minilepton/sim/profiles``).

For each (m, k, n) of a grid (square products, the shapes of a transformer layer's products at
several widths, skinny products, and the batched products of attention), the median time of
``A @ B`` over repeats timed with CUDA events after a warm-up, in bfloat16 and in float32 (TF32
off); then the bandwidth of a large copy and of a few memory-bound operations (add, GELU,
softmax, layer norm). Needs PyTorch with CUDA (or CuPy for the products and the copy).

    python benchmarks/gemm_curve.py --json OUTDIR/gemm_curve.json

The result lists seconds and TFLOP/s per shape; ``benchmarks/README.md`` quotes a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

SQUARE = [256, 512, 1024, 2048, 4096, 8192, 16384]
WIDTHS = [1024, 2048, 4096, 8192, 12288]
ROWS = [512, 2048, 8192]
SKINNY = [(m, 4096, 4096) for m in (1, 8, 32, 64, 128)] + [(8192, k, 8192) for k in (64, 128, 256)]


def shapes() -> list[tuple[int, int, int]]:
    out = [(s, s, s) for s in SQUARE]
    for h in WIDTHS:  # a transformer layer's products: qkv, projection, MLP up, MLP down
        for m in ROWS:
            out += [(m, h, 3 * h), (m, h, h), (m, h, 4 * h), (m, 4 * h, h)]
    return out + SKINNY


def timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_torch(repeats: int) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    rows = []
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for m, k, n in shapes():
            if dtype_name == "fp32" and m * k * n > 2 ** 36:
                continue  # the largest float32 products take long and add nothing
            a = torch.randn(m, k, device=dev, dtype=dtype)
            b = torch.randn(k, n, device=dev, dtype=dtype)
            reps = max(3, min(repeats, int(2e12 / max(2 * m * k * n, 1))))
            s = timed(lambda a=a, b=b: a @ b, reps, sync)
            rows.append({"dtype": dtype_name, "m": m, "k": k, "n": n, "seconds": s,
                         "tflops": 2 * m * k * n / s / 1e12})
        for batch, seq, head in ((32, 1024, 128), (96, 2048, 128), (128, 2048, 64),
                                 (64, 4096, 128)):
            q = torch.randn(batch, seq, head, device=dev, dtype=dtype)
            kt = torch.randn(batch, head, seq, device=dev, dtype=dtype)
            s = timed(lambda q=q, kt=kt: torch.bmm(q, kt), repeats, sync)
            rows.append({"dtype": dtype_name, "batch": batch, "m": seq, "k": head, "n": seq,
                         "seconds": s, "tflops": 2 * batch * seq * head * seq / s / 1e12})
    memory = []
    x = torch.empty(1 << 28, device=dev, dtype=torch.bfloat16)  # 512 MiB
    y = torch.empty_like(x)
    for name, fn, moved in (("copy", lambda: y.copy_(x), 2),
                            ("add", lambda: torch.add(x, x, out=y), 3),
                            ("gelu", lambda: torch.nn.functional.gelu(x), 2)):
        s = timed(fn, repeats, sync)
        memory.append({"op": name, "bytes": moved * x.numel() * 2, "seconds": s,
                       "gbps": moved * x.numel() * 2 / s / 1e9})
    z = x.view(-1, 8192)
    for name, fn in (("softmax", lambda: torch.softmax(z, dim=-1)),
                     ("layer_norm", lambda: torch.nn.functional.layer_norm(z, (8192,)))):
        s = timed(fn, repeats, sync)
        memory.append({"op": name, "bytes": 2 * z.numel() * 2, "seconds": s,
                       "gbps": 2 * z.numel() * 2 / s / 1e9})
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "matmul": rows, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    t0 = time.time()
    result = run_torch(args.repeats)
    result.update({"command": "python benchmarks/gemm_curve.py", "python": platform.python_version(),
                   "seconds": time.time() - t0})
    best = max((r for r in result["matmul"] if r["dtype"] == "bf16"), key=lambda r: r["tflops"])
    print(f"{result['gpu']}: best bf16 product {best['tflops']:.0f} TFLOP/s at "
          f"{best['m']}x{best['k']}x{best['n']}")
    for r in result["matmul"]:
        print(f"{r['dtype']:5} {r.get('batch', 1):4} x {r['m']:6} {r['k']:6} {r['n']:6}  "
              f"{r['tflops']:7.1f} TFLOP/s")
    for r in result["memory"]:
        print(f"{r['op']:10} {r['gbps']:7.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

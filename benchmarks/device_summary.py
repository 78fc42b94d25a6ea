"""Gather the parts of ``benchmarks/device_check.sh`` into one ``device.json``.

    python benchmarks/device_summary.py OUTDIR

Reads ``OUTDIR/gpu_step.json`` (``benchmarks/gpu_step.py --json``), ``OUTDIR/scaling.json``
(``minilepton bench scaling --json``) and the JUnit files of the test runs, whichever exist, and
writes ``OUTDIR/device.json``: the date, the machine and versions, the GPU step ratios and raw
medians, the test counts, and the data-parallel speedups with their per-round spread.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np

GPU_MODEL = "784-4096-4096-10"


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _tests(path):
    """passed/failed/skipped counts of a JUnit XML file (pytest --junitxml)."""
    if not os.path.exists(path):
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    skipped = int(suite.get("skipped"))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("minilepton", "cupy", "torch", "mpi4py"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as None
            out[name] = None
    return out


def _gpu(outdir):
    step = _load(os.path.join(outdir, "gpu_step.json"))
    tests = {"gpu": _tests(os.path.join(outdir, "gpu_tests.xml")),
             "device": _tests(os.path.join(outdir, "device_tests.xml"))}
    if step is None:
        return {"device": None, "note": "no GPU step benchmark ran", "tests": tests}
    big = step["results"].get(GPU_MODEL, {})
    try:
        import cupy  # noqa: PLC0415
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception:  # noqa: BLE001
        name = step["device"]
    return {"device": name, "model": f"mlp {GPU_MODEL}, batch 4096, float32, SGD",
            "ratio_vs_hand_cupy": big.get("ratio_vs_hand-written"),
            "ratio_vs_torch": big.get("ratio_vs_pytorch"),
            "targets": {"ratio_vs_hand_cupy": 1.10, "ratio_vs_torch": 1.15},
            "median_step_seconds": {label: r["median_s"] for label, r in step["results"].items()},
            "autograd_ops_per_step": {label: r["autograd_ops"]
                                      for label, r in step["results"].items()},
            "tests": tests}


def _scaling(outdir):
    scaling = _load(os.path.join(outdir, "scaling.json"))
    if scaling is None:
        return None
    rows = [r for r in scaling["results"] if r["compress"] == "none"]
    return {"cores": scaling["cores"], "model": scaling["model"],
            "batch_size": scaling["batch_size"], "blas_threads": scaling["blas_threads"],
            "rounds": scaling["rounds"], "steps": scaling["steps"],
            "speedup": {str(r["workers"]): r["speedup"] for r in rows},
            "best_speedup": {str(r["workers"]): r["best_speedup"] for r in rows},
            "round_speedups": {str(r["workers"]): r["round_speedups"] for r in rows},
            "samples_per_second": {str(r["workers"]): r["samples_per_second"] for r in rows},
            "samples_per_second_rounds": {str(r["workers"]): r["rounds"] for r in rows},
            "comm_seconds_fraction": {str(r["workers"]): r["comm_seconds_fraction"]
                                      for r in rows},
            "bytes_per_step": {str(r["workers"]): r["bytes_per_step"] for r in rows}}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/device_summary.py OUTDIR", file=sys.stderr)
        return 2
    outdir = argv[0]
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "command": "bash benchmarks/device_check.sh OUTDIR",
              "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor()},
              "versions": _versions(), "gpu": _gpu(outdir), "cpu_scaling": _scaling(outdir)}
    path = os.path.join(outdir, "device.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("date_utc", "gpu", "cpu_scaling")}, indent=1)[:3000])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

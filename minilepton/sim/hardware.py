"""Hardware profiles: the devices, the links between them, and how they are grouped in nodes.

A ``Hardware`` is what a prediction needs to know about a cluster:

- ``compute``: one device's rates, either an ``Accelerator`` (a built-in GPU profile: peak rates
  and an efficiency curve, ``accelerator.py``) or a ``MeasuredCompute`` (this machine, timed by
  ``minilepton calibrate``, ``measured.py``);
- ``network(kind)``: the collectives of gradient buckets (``"data"``) and of activations
  (``"model"``) over groups of devices, inside a node and between nodes (``collectives.py``);
- ``devices_per_node`` and ``memory_bytes`` (one device's memory), and for a measured profile
  ``cores``: how many workers can compute at once.

Built-in profiles live in ``profiles/`` (one JSON file per device, ``links.json`` for the
links), each value with its source; ``hardware("h100-sxm")`` loads one, and a path loads a file
of the same form or a profile written by ``minilepton calibrate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .accelerator import Accelerator
from .collectives import AlphaBeta, Link, Network
from .measured import MeasuredCompute, MeasuredFabric

PROFILES = Path(__file__).resolve().parent / "profiles"


def builtin_names() -> list[str]:
    """The built-in device profiles, e.g. ``['a100-80gb', 'h100-sxm', 'h200']``."""
    return sorted(p.stem for p in PROFILES.glob("*.json") if p.stem != "links")


def links() -> dict[str, Link]:
    """The built-in links by name (``profiles/links.json``)."""
    raw = json.loads((PROFILES / "links.json").read_text())
    return {name: Link(name, v["latency_us"], v["bandwidth_gbps"], v.get("efficiency", 1.0),
                       v.get("per_node", False)) for name, v in raw.items()}


def link(spec) -> Link:
    """A Link from a built-in name, a ``Link``, a dict with ``latency_us`` and
    ``bandwidth_gbps`` (optionally ``efficiency``, ``per_node``), or ``"LATENCY_US,GBPS"``."""
    if isinstance(spec, Link):
        return spec
    if isinstance(spec, dict):
        return Link(spec.get("name", "custom"), float(spec["latency_us"]),
                    float(spec["bandwidth_gbps"]), float(spec.get("efficiency", 1.0)),
                    bool(spec.get("per_node", False)))
    known = links()
    text = str(spec).strip().lower()
    if text in known:
        return known[text]
    parts = text.split(",")
    if len(parts) == 2:
        try:
            return Link(text, float(parts[0]), float(parts[1]))
        except ValueError:
            pass
    raise ValueError(f"unknown link {spec!r}; use one of {', '.join(known)} or "
                     "'LATENCY_US,GBPS'")


@dataclass
class Hardware:
    """A cluster of identical devices; see the module docstring."""

    name: str
    compute: object
    networks: dict
    devices_per_node: int | None
    memory_bytes: float
    cores: int | None = None         # measured profiles: workers that can compute at once
    sender_pays: bool = False        # a simulated link delays the sender of a message
    inter_link: str = ""
    intra_link: str = ""

    @property
    def kind(self) -> str:
        return self.compute.kind

    def network(self, kind: str = "model") -> Network:
        return self.networks[kind]

    def describe(self) -> str:
        node = (f"{self.devices_per_node} per node" if self.devices_per_node else "one machine")
        links_text = f"{self.intra_link} inside a node, {self.inter_link} between nodes" \
            if self.devices_per_node else self.inter_link
        return f"{self.name} ({node}; {links_text})"


def _read(spec) -> dict:
    if isinstance(spec, dict):
        return spec
    text = str(spec)
    if text in builtin_names():
        return json.loads((PROFILES / f"{text}.json").read_text())
    path = Path(text).expanduser()
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a hardware profile ({exc.msg})") from None
    raise ValueError(f"unknown hardware {spec!r}; use one of {', '.join(builtin_names())}, "
                     "'this-machine' or the path of a profile JSON")


def accelerator(profile: dict) -> Accelerator:
    keys = ("peak_tflops", "matmul_efficiency", "matmul_half_size", "memory_gib",
            "memory_bandwidth_gbs")
    missing = [k for k in keys if k not in profile]
    if missing:
        raise ValueError(f"hardware profile {profile.get('name', '?')!r} lacks "
                         f"{', '.join(missing)}")
    return Accelerator(
        name=profile["name"], peak_tflops=profile["peak_tflops"],
        matmul_efficiency=profile["matmul_efficiency"],
        matmul_half_size=profile["matmul_half_size"], memory_gib=profile["memory_gib"],
        memory_bandwidth_gbs=profile["memory_bandwidth_gbs"],
        memory_efficiency=profile.get("memory_efficiency", 0.84),
        launch_overhead_us=profile.get("launch_overhead_us", 4.0),
        reserved_gib=profile.get("reserved_gib", 3.0),
        description=profile.get("description", ""), sources=tuple(profile.get("sources", ())))


def hardware(spec, *, devices_per_node: int | None = None, inter=None, intra=None,
             backend: str = "shm", link_spec=None, separate: bool = False) -> Hardware:
    """Load ``spec`` (a built-in name, a path or a dict) as a ``Hardware``.

    Accelerators: ``devices_per_node`` (default the profile's), ``intra`` and ``inter`` links
    (names or Links; default the profile's); ``link_spec`` replaces the inter-node link too.
    Measured profiles: ``backend`` picks the collectives timed for "shm" or "mpi";
    ``link_spec`` is the simulated link between workers (as ``minilepton train --link``);
    ``separate``: each worker a machine of its own (its own cores), joined to the others by
    ``link_spec`` alone, α-β (how this machine's compute extrapolates to a cluster of them)."""
    profile = _read(spec)
    if profile.get("kind") == "measured" and separate:
        compute = MeasuredCompute(profile)
        compute.engine = {k: v for k, v in compute.engine.items() if k != "layouts"}
        net = Network(AlphaBeta(link(link_spec)), AlphaBeta(link(link_spec)), 1)
        return Hardware(profile.get("name", "this-machine"), compute, {"data": net, "model": net},
                        1, compute.memory_bytes, inter_link=link(link_spec).name,
                        intra_link="none")
    if profile.get("kind") == "measured":
        compute = MeasuredCompute(profile)
        fits = profile["collectives"].get(backend) or profile["collectives"]["shm"]
        simulated = link(link_spec) if link_spec not in (None, "none") else None
        nets = {kind: Network(MeasuredFabric(fits, path, simulated),
                              MeasuredFabric(fits, path, simulated), None)
                for kind, path in (("data", "arena"), ("model", "private"))}
        return Hardware(profile.get("name", "this-machine"), compute, nets, None,
                        compute.memory_bytes, cores=compute.cores,
                        sender_pays=simulated is not None,
                        inter_link=f"{backend} collectives" + (
                            f" over a simulated {simulated.name} link" if simulated else ""))
    device = accelerator(profile)
    per_node = int(devices_per_node or profile.get("gpus_per_node", 8))
    if per_node < 1:
        raise ValueError(f"--gpus-per-node must be positive, not {per_node}")
    intra_link = link(intra or profile.get("intra_node_link", "nvlink3"))
    inter_link = link(link_spec if link_spec not in (None, "none") else
                      (inter or profile.get("inter_node_link", "ib-hdr")))
    net = Network(AlphaBeta(intra_link), AlphaBeta(inter_link, sharing=per_node), per_node)
    return Hardware(device.name, device, {"data": net, "model": net}, per_node,
                    device.memory_bytes, inter_link=inter_link.name, intra_link=intra_link.name)

"""What a model asks of a device: its layers' products, memory traffic, activations and messages.

A ``Workload`` is a list of ``Layer``s. ``layer.shard(tp)`` says what one of ``tp``
tensor-parallel devices does for one sample: its matrix products, the elements its memory-bound
operations move (forward, backward, and once per step), the activations it keeps for backward,
its parameters, and the collectives the sharding needs. ``workload.stages(pp)`` cuts the layers
into pipeline stages the way the code does.

**The MLP** (``mlp``) is the model ``minilepton train`` builds: Linear layers with ReLU between
them. Tensor parallelism alternates column layers (output features split; backward all-reduces
the input gradient, unless the input is the data) and row layers (input features split; forward
all-reduces the output), as ``parallel.tensor_parallel.parallelize_mlp`` does inside each
pipeline stage; a last column layer with no partner all-gathers its output. Stages are cut by
``parallel.pipeline.partition_sizes``, the code's own partition.

**The GPT** (``gpt``) is a decoder of L layers of width h, a heads, sequence s, vocabulary V
(Megatron-LM; Narayanan et al. 2021, Korthikanti et al. 2022). Per layer and sequence:

    products   QKV s·h·3h, scores a·s·(h/a)·s, context a·s·s·(h/a), projection s·h·h,
               MLP s·h·4h and s·4h·h                      → forward FLOPs 24·s·h² + 4·s²·h
    parameters 12h² + 13h
    activations (16-bit) s·h·(10 + 24/t) + 5·a·s²/t bytes  (tensor parallel t; the s² term
               vanishes with flash attention)
    messages   2 all-reduces of s·h forward, 2 backward (tensor parallel)

plus the embedding (V·h + s·h parameters) on the first stage and the logits (s·h·V/t products)
on the last. Memory-bound traffic is taken as twice the activation bytes forward (each is
written, then read) and twice that backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..parallel.pipeline import partition_sizes


@dataclass(frozen=True)
class Shard:
    """One device's part of a layer, per sample (``gemms``: (rows, k, n, batch, needs_dx))."""

    gemms: tuple
    flops: float                 # model FLOPs of the whole layer, forward, per sample
    memory_fwd: float            # bytes moved by memory-bound work, per sample
    memory_bwd: float
    memory_step: float           # bytes moved once per step (gradient zeroing and accumulation)
    activations: float           # bytes kept for backward, per sample (outputs; the stage's
                                 # input is added once, by memory.stage_memory)
    inputs: float                # bytes of the layer's input, per sample (what recompute keeps)
    params: tuple                # this device's parameter tensors (element counts)
    messages: tuple = ()         # (phase, op, bytes per sample, calls) in the tensor group
    blocks: int = 1              # the engine's blocks (autograd nodes of one Linear and its ReLU)


@dataclass(frozen=True)
class Layer:
    name: str
    make: object = field(repr=False)   # make(tp, bytes_per_element) -> Shard

    def shard(self, tp: int = 1, itemsize: int = 4) -> Shard:
        return self.make(tp, itemsize)


@dataclass(frozen=True)
class Workload:
    """A model as layers; ``rows`` per sample (1 for the MLP, s tokens for the GPT)."""

    name: str
    layers: tuple
    rows: int = 1
    kind: str = "mlp"
    sizes: tuple = ()            # MLP widths (input, hidden..., classes)
    shape: dict = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(sum(layer.shard(1).params) for layer in self.layers)

    def flops_per_sample(self) -> float:
        """Model FLOPs of forward and backward (3× forward), one sample."""
        return 3.0 * sum(layer.shard(1).flops for layer in self.layers)

    def stages(self, pp: int) -> list[list[Layer]]:
        """The layers of each of ``pp`` pipeline stages."""
        if self.kind == "mlp":
            return mlp_stages(self.sizes, pp)
        body = [layer for layer in self.layers if layer.name.startswith("layer")]
        if pp > len(body):
            raise ValueError(f"--pp {pp} asks for more pipeline stages than the model's "
                             f"{len(body)} layers")
        per, extra = divmod(len(body), pp)
        out, i = [], 0
        for s in range(pp):
            n = per + (1 if s < extra else 0)
            out.append(body[i:i + n])
            i += n
        out[0].insert(0, self.layers[0])      # embedding
        out[-1].append(self.layers[-1])       # final norm and logits
        return out


# ---- the MLP of minilepton train
def _linear(k: int, n: int, role: str, first: bool, last: bool):
    """A Linear (k → n) with its ReLU (none after the last), ``role`` "column", "row" or
    "gather" (a column layer with no row partner), as parallelize_mlp shards it."""

    def make(tp: int, b: int) -> Shard:
        t = max(1, tp)
        k_dev = -(-k // t) if role == "row" and t > 1 else k
        n_dev = -(-n // t) if role in ("column", "gather") and t > 1 else n
        acts = 0 if last else 2          # linear output (+ ReLU output) kept for backward
        out_elems = n_dev * (1 + acts // 2)
        logits32 = 4 * n if last and b < 4 else 0   # 16-bit compute: float32 logits for the loss
        messages = []
        if t > 1 and role in ("column", "gather") and not first:
            messages.append(("backward", "allreduce", k * b, 1))
        if t > 1 and role == "row":
            messages.append(("forward", "allreduce", n * b, 1))
        if t > 1 and role == "gather":
            messages.append(("forward", "allgather", n * b, 1))
        bias = n_dev if role != "row" else n
        return Shard(
            gemms=((1, k_dev, n_dev, 1, not first),), flops=2.0 * k * n,
            memory_fwd=b * (2 * n_dev + (0 if last else 2 * n_dev) + (2 * n if role == "gather" and t > 1 else 0)),
            memory_bwd=b * (3 * n_dev + (0 if last else 3 * n_dev) + n_dev),
            memory_step=b * 4 * (k_dev * n_dev + bias),
            activations=b * out_elems + logits32, inputs=b * k_dev,
            params=(k_dev * n_dev, bias), messages=tuple(messages))

    return make


def mlp(sizes, name: str | None = None) -> Workload:
    """The MLP ``sizes[0]``-…-``sizes[-1]`` with ReLU, as ``minilepton train`` builds it."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"an MLP needs at least two positive sizes, not {list(sizes)}")
    return Workload(name or "mlp " + "-".join(map(str, sizes)), tuple(mlp_stages(sizes, 1)[0]),
                    1, "mlp", sizes)


def _role_in_stage(position: int, count: int) -> str:
    """Column, row, column, …; a last column layer without a row partner gathers."""
    if position % 2 == 1:
        return "row"
    return "gather" if position == count - 1 else "column"


def mlp_stages(sizes, pp: int) -> list[list[Layer]]:
    """The MLP's stages (``partition_sizes``), each Linear with the role it has in its stage."""
    sizes = list(sizes)
    out, i = [], 0
    for stage in partition_sizes(sizes, pp):
        layers = []
        for pos, (k, n) in enumerate(stage):
            role = _role_in_stage(pos, len(stage))
            layers.append(Layer(f"linear{i}", _linear(k, n, role, i == 0, i == len(sizes) - 2)))
            i += 1
        out.append(layers)
    return out


# ---- the GPT
def _transformer(s: int, h: int, a: int, flash: bool):
    def make(t: int, b: int) -> Shard:
        head = h // a
        quad = 0.0 if flash else 5.0 * a * s * s / t
        act_bytes = (s * h * (10 + 24 / t) + quad) * b / 2   # the formula is for 16-bit values
        return Shard(
            gemms=((s, h, 3 * h // t, 1, True), (s, head, s, a // t, True),
                   (s, s, head, a // t, True), (s, h // t, h, 1, True),
                   (s, h, 4 * h // t, 1, True), (s, 4 * h // t, h, 1, True)),
            flops=24.0 * s * h * h + 4.0 * s * s * h,
            memory_fwd=2 * act_bytes, memory_bwd=4 * act_bytes,
            memory_step=0.0, activations=act_bytes, inputs=s * h * b,
            params=((12 * h * h + 7 * h) // t, 6 * h),
            messages=(("forward", "allreduce", s * h * b, 2),
                      ("backward", "allreduce", s * h * b, 2)) if t > 1 else (),
            blocks=1)

    return make


def _embedding(s: int, h: int, V: int):
    def make(t: int, b: int) -> Shard:
        return Shard(gemms=(), flops=0.0, memory_fwd=2 * s * h * b, memory_bwd=2 * s * h * b,
                     memory_step=0.0, activations=s * h * b, inputs=0.0,
                     params=(V * h // t, s * h),
                     messages=(("forward", "allreduce", s * h * b, 1),) if t > 1 else ())

    return make


def _logits(s: int, h: int, V: int):
    def make(t: int, b: int) -> Shard:
        # logits kept in float32 for the cross-entropy; the word embedding is tied, so the last
        # stage holds its own copy (Megatron-LM)
        return Shard(gemms=((s, h, V // t, 1, True),), flops=2.0 * s * h * V,
                     memory_fwd=3 * 4 * s * V / t, memory_bwd=3 * 4 * s * V / t,
                     memory_step=0.0, activations=4 * s * V / t + 2 * s * h * b / 2,
                     inputs=s * h * b, params=(V * h // t, 2 * h))

    return make


def gpt(layers: int, hidden: int, heads: int, seq_len: int, vocab: int,
        flash_attention: bool = False, name: str | None = None) -> Workload:
    """A GPT decoder (see the module docstring); one sample is one sequence of ``seq_len``."""
    for label, value in (("--layers", layers), ("--hidden-size", hidden), ("--heads", heads),
                         ("--seq-len", seq_len), ("--vocab", vocab)):
        if isinstance(value, bool) or int(value) < 1:
            raise ValueError(f"{label} must be a positive integer, not {value!r}")
    if hidden % heads:
        raise ValueError(f"--hidden-size {hidden} is not divisible by --heads {heads}")
    body = [Layer(f"layer{i}", _transformer(seq_len, hidden, heads, flash_attention))
            for i in range(layers)]
    items = (Layer("embedding", _embedding(seq_len, hidden, vocab)), *body,
             Layer("logits", _logits(seq_len, hidden, vocab)))
    params = 12 * layers * hidden ** 2 + 13 * layers * hidden + vocab * hidden + seq_len * hidden
    return Workload(name or f"gpt {params / 1e9:.1f}B", items, seq_len, "gpt",
                    shape={"layers": layers, "hidden": hidden, "heads": heads,
                           "seq_len": seq_len, "vocab": vocab, "flash": flash_attention,
                           "parameters": params})

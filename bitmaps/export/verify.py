"""Proof of parity: an exported model run by ONNX Runtime against the PyTorch model it came from.

Why not just compare the final outputs: a binary activation is sign(x − β). Where x is within
float rounding of β (ONNX Runtime and PyTorch order additions differently, ~1e-7 relative in
float32, ~1e-3 in float16), the two runtimes can take different signs; a flipped bit changes that
row's output by 2·s·α, which flips more bits downstream. Over a BERT-base model such flips are
routine, so a model-level tolerance is either loose enough to hide real bugs or fails correct
exports. We therefore check every piece of the graph on the same inputs, *teacher-forced*:

1. **node check** — for every ``bitmaps::BinaryLinear`` node, its ONNX Runtime output Y against
   the PyTorch layer (PackedBinaryLinear: ``torch.ops.bitmaps.binary_linear`` with the module's
   packed weight, scales, bias and attributes) applied to the node's ONNX Runtime input X. Same
   X, so same sign bits: this tests the file's data and attributes and the runtime's op. The
   function backend is the reference math in standard ONNX ops, so this also cross-checks the
   torch op (native kernel when built) against it.
   A node with a fused activation (``activation = 1``, the onnxruntime target's BinaryLinear →
   Gelu) is checked against the layer followed by the module PyTorch applies to its output.
   A ``bitmaps::BinaryFeedForward`` node (two layers, the first feeding the second) is checked
   against its second layer applied to the bits the op defines for the first layer's output
   (the sign of exact GELU(y) − β, :class:`FeedForward`); its own intermediate cannot be tapped,
   so a bit whose GELU(y) lies within a float32 rounding of β (where the function backend's
   float32 GELU may take the other sign) may flip, and each such bit of a row widens that row's
   allowance by what one flip can change (2·s·|α| per output, s·|α| for {0, 1} inputs).
2. **segment check** — PyTorch runs with each PackedBinaryLinear's output replaced by the ONNX
   Runtime value of that node (forward hooks; for a fused node, its activation module's output).
   Then every node's input X and the final output, as PyTorch computes them, depend only on the
   float part of the graph since the previous binary layer, so they must agree with ONNX
   Runtime's within float tolerance; no flip can amplify.
3. **end to end (reported, not enforced)** — plain PyTorch against ONNX Runtime, per sequence:
   how many sequences agree within tolerance and, for the others, the first node where their
   binary activations took a different sign (or that none did: float drift, reported as such).

Error measure, for every comparison: ``max|onnx − torch| / max(1, max|torch|)`` (absolute for
small tensors, relative to the tensor's range for large ones), computed in float64. The first
check that exceeds the tolerance names the node (module path) and what drifted.

Default tolerances (``ExportConfig.DEFAULT_TOLERANCE``): 1e-4 for FP32 (float32 rounding
differences between the runtimes measure ≤ 1e-6 on BERT-tiny and BERT-base shapes), 2e-2 for FP16
(float16's relative step is 1e-3; ONNX Runtime and PyTorch CPU round LayerNorm, Softmax, GELU and
MatMul differently: measured ≤ 2e-3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch

from bitmaps.core.errors import BitmapsError
from bitmaps.core.ops import ffn_bits
from bitmaps.core.ort import library_missing, open_session
from bitmaps.core.packed import PackedBinaryLinear
from bitmaps.export.onnx_export import ExportWrapper
from bitmaps.export.onnx_function import FEEDS, binary_ffn_nodes, binary_linear_nodes
from bitmaps.export.onnx_graph import Tap, tap_binary_linears

SENTENCES = (
    "The president spoke to the nation about the economy and the state of the union.",
    "We will build roads, bridges and schools for our children.",
    "Congress must act.",
    "In the year that has passed, the people of this country have shown great courage, and "
    "the government has kept its promise to defend the constitution.",
)
RANDOM_SHAPES = ((1, 5), (2, 16), (3, 37))


class ExportVerificationError(BitmapsError):
    """The exported model does not compute what the PyTorch model computes; nothing was written."""


@dataclasses.dataclass
class Batch:
    label: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def verification_batches(vocab_size: int, tokenizer: object | None, seed: int = 0) -> list[Batch]:
    """Random token ids (three shapes, a padded row each) and, with a tokenizer, real sentences."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b, s in RANDOM_SHAPES:
        ids = torch.randint(0, vocab_size, (b, s), generator=g)
        mask = torch.ones(b, s, dtype=torch.int64)
        if b > 1:
            mask[-1, s // 2 :] = 0
        batches.append(Batch(f"random {b}x{s}", ids, mask))
    if tokenizer is not None:
        enc = tokenizer(list(SENTENCES), padding=True, truncation=True, max_length=64,
                        return_tensors="pt")  # fmt: skip
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        batches.append(Batch(f"sentences {ids.shape[0]}x{ids.shape[1]}", ids, mask))
    return batches


def scaled_error(
    onnx_value: np.ndarray | torch.Tensor, torch_value: torch.Tensor,
    allowance: torch.Tensor | None = None,
) -> float:  # fmt: skip
    """``max|onnx − torch| / max(1, max|torch|)``; with ``allowance``, each element's difference
    is first reduced by its allowance (down to 0)."""
    a = torch.as_tensor(onnx_value).double()
    b = torch_value.detach().double()
    if a.shape != b.shape:
        return float("inf")
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return float("inf")  # NaN would pass every "error <= tolerance" test
    diff = (a - b).abs()
    if allowance is not None:
        diff = (diff - allowance.double()).clamp_min(0.0)
    return float(diff.max() / max(1.0, float(b.abs().max())))


# |GELU(y) − β| below which a BinaryFeedForward intermediate bit may take either sign: float32
# GELUs (ONNX Runtime's in the function backend) err by ~1e-7 absolute near 0 and ~1e-7 relative
# elsewhere; ten times that, relative to max(1, |β|).
AMBIGUOUS_GELU = 1e-6


def half_precision_ties(m: PackedBinaryLinear, x: torch.Tensor) -> torch.Tensor | None:
    """For a float16 input: each output's allowance for the input values within a float16
    rounding of β, whose sign bit may go either way (None for other inputs: ties are exact there).

    ONNX Runtime computes float16 graphs partly in float32 (a GELU between casts, which its
    optimizer may drop), so the value a node binarizes can be its input before the rounding that
    the tapped input shows; a value that close to β then takes the other sign. One flip moves an
    output by 2·s·|w_scale| (1·s for {0, 1} inputs), s the activation scale (per-row mean
    |x − β| where act_scale is 0)."""
    if x.dtype != torch.float16:
        return None
    xf = x.float() - float(torch.tensor(m.act_threshold, dtype=torch.float32))
    ulp = torch.finfo(torch.float16).eps  # a float16's spacing, relative: two roundings' worth
    ties = xf.abs() <= ulp * torch.maximum(x.float().abs(), torch.tensor(abs(m.act_threshold)))
    scale = m.act_scale if m.act_scale > 0 else xf.abs().mean(-1, keepdim=True)
    return flip_allowance(ties, m, scale)


def flip_allowance(
    ambiguous: torch.Tensor, m: PackedBinaryLinear, scale: float | torch.Tensor
) -> torch.Tensor:
    """What the outputs of layer ``m`` may move by when its ``ambiguous`` input bits ([..., K])
    take the other sign: per row, their count times 2·scale·|w_scale| (1·scale for {0, 1}
    inputs), ``scale`` the activation scale (a float, or per row)."""
    per_flip = (1.0 if m.act_unsigned else 2.0) * torch.as_tensor(scale).double()
    return ambiguous.sum(-1, keepdim=True).double() * per_flip * m.w_scale.double().abs()


class FeedForward:
    """A ``bitmaps::BinaryFeedForward`` node's two PyTorch layers, as the node check sees them.

    ``reference(x)``: the second layer applied to the first layer's output binarized as the op
    defines it (csrc/kernels/cpu_binary_linear.h, ``ffn_bit_table``): bit = exact GELU(y) − β < 0
    (> 0 for {0, 1} activations), GELU in float64 as 0.5·y·erfc(−y/√2), y the first layer's
    float32 output; and the allowance of each output for the bits within a float32 rounding of β.
    """

    def __init__(self, first: PackedBinaryLinear, second: PackedBinaryLinear, gelu: bool) -> None:
        self.first, self.second, self.gelu = first, second, gelu
        self.act_threshold = first.act_threshold  # of the node's input X (_first_flip)

    def reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        second = self.second
        with torch.no_grad():
            y = self.first(x)
            bits, margin = ffn_bits(y, int(self.gelu), second.act_threshold, second.act_unsigned)
            beta = float(torch.tensor(second.act_threshold, dtype=torch.float32))
            # an input whose bit is set / clear after subtracting beta (exact in float32: 1 apart)
            on, off = (beta + 1.0, beta - 1.0) if second.act_unsigned else (beta - 1.0, beta + 1.0)
            inputs = torch.where(bits, torch.tensor(on), torch.tensor(off)).float()
            out = second(inputs)
            ambiguous = margin.abs() <= AMBIGUOUS_GELU * max(1.0, abs(beta))
            allowance = flip_allowance(ambiguous, second, second.act_scale)
        return out, allowance


@dataclasses.dataclass
class Drift:
    where: str  # "input of <node>", "output of <node>", "model output"
    error: float


@dataclasses.dataclass
class BatchResult:
    backend: str
    batch: str
    node_error: float  # worst node check
    input_error: float  # worst segment check at a node input
    output_error: float  # segment check of the model output
    drift: Drift | None  # first check over tolerance, in graph order
    sequences_within: int  # end to end, plain PyTorch vs ONNX Runtime
    sequences: int
    diverged_without_flip: int  # of the others: no binary activation took another sign
    first_flip: str | None  # earliest node where a diverged sequence's sign bits differ


@dataclasses.dataclass
class VerificationReport:
    tolerance: float
    results: list[BatchResult]

    @property
    def ok(self) -> bool:
        return all(r.drift is None for r in self.results)

    def failure(self) -> str | None:
        for r in self.results:
            if r.drift is not None:
                return (
                    f"{r.backend} backend, {r.batch}: {r.drift.where} differs from PyTorch by "
                    f"{r.drift.error:.3g} (tolerance {self.tolerance:g})"
                )
        return None

    def worst(self) -> float:
        return max(max(r.node_error, r.input_error, r.output_error) for r in self.results)

    def summary(self) -> str:
        backends = sorted({r.backend for r in self.results})
        within = sum(r.sequences_within for r in self.results)
        total = sum(r.sequences for r in self.results)
        text = (
            f"verified with {', '.join(backends)} on {len(self.results) // len(backends)} batches: "
            f"worst layer-wise error {self.worst():.2g} (tolerance {self.tolerance:g}); end to end "
            f"{within}/{total} sequences within tolerance"
        )
        if within == total:
            return text
        unexplained = sum(r.diverged_without_flip for r in self.results)
        flips = [r.first_flip for r in self.results if r.first_flip]
        if flips:
            text += (
                f"; {total - within - unexplained} diverge after a rounding-level sign flip of a "
                f"binary activation (e.g. first at {flips[0]})"
            )
        if unexplained:
            text += f"; {unexplained} diverge with no sign flip (float drift)"
        return text


def _binary_modules(wrapper: ExportWrapper, taps: list[Tap], gelu: dict[str, bool]) -> dict:
    """Tap name → its PackedBinaryLinear, or a :class:`FeedForward` for a BinaryFeedForward node
    (``gelu``: node name → whether its first layer has GELU)."""

    def layer(name: str) -> PackedBinaryLinear:
        try:
            mod = wrapper.model.get_submodule(name)
        except AttributeError:
            mod = None
        if not isinstance(mod, PackedBinaryLinear):
            raise ValueError(f"ONNX node {name} has no PackedBinaryLinear module of that name")
        return mod

    modules = {}
    for name, *_ in taps:
        if name in gelu:
            first, second = name.split(FEEDS)
            modules[name] = FeedForward(layer(first), layer(second), gelu[name])
        else:
            modules[name] = layer(name)
    return modules


def _ffn_gelu(model: onnx.ModelProto) -> dict[str, bool]:
    """BinaryFeedForward node name → whether its first layer applies GELU (``activation = 1``)."""
    return {
        n.name: any(a.name == "activation" and a.i == 1 for a in n.attribute)
        for n in binary_ffn_nodes(model)
    }


TorchRun = tuple[torch.Tensor, dict[str, torch.Tensor]]  # output, input of each binary layer


def _fused_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the BinaryLinear nodes with a fused activation (``activation = 1``: GELU)."""
    return {
        n.name
        for n in binary_linear_nodes(model)
        if any(a.name == "activation" and a.i == 1 for a in n.attribute)
    }


def _activation_modules(wrapper: ExportWrapper, batch: Batch, modules: dict, fused: set[str]):  # noqa: ANN202
    """For each fused node, the module PyTorch applies to that layer's output (BERT's
    ``intermediate_act_fn``): found by running once and watching which module takes the layer's
    output tensor as its input."""
    if not fused:
        return {}
    outputs: dict[int, str] = {}
    found: dict[str, torch.nn.Module] = {}

    def record(name: str):  # noqa: ANN202
        def hook(module, args, output):  # noqa: ANN001, ANN202
            outputs[id(output)] = name

        return hook

    def watch(module, args):  # noqa: ANN001, ANN202
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
            found.setdefault(outputs[id(args[0])], module)

    handles = [modules[n].register_forward_hook(record(n)) for n in fused]
    handles.append(torch.nn.modules.module.register_module_forward_pre_hook(watch))
    try:
        with torch.no_grad():
            wrapper(batch.input_ids, batch.attention_mask)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(fused - found.keys())
    if missing:
        raise ValueError(f"ONNX node {missing[0]} has a fused activation but PyTorch applies no "
                         "module to its output")  # fmt: skip
    if len({id(m) for m in found.values()}) < len(found):
        raise ValueError("fused BinaryLinear nodes share one PyTorch activation module")
    return found


def _torch_run(
    wrapper: ExportWrapper, batch: Batch, modules: dict, replace: dict[str, np.ndarray] | None,
    activations: dict | None = None,
) -> TorchRun:  # fmt: skip
    """PyTorch, capturing each binary layer's input; with ``replace``, each layer's output is
    replaced by that value (ONNX Runtime's) so later layers see what ONNX Runtime saw. A node with
    a fused activation (``activations``: node → the activation module) replaces the activation's
    output instead."""
    seen: dict[str, torch.Tensor] = {}
    activations = activations or {}

    def replaced(name: str, output: torch.Tensor) -> torch.Tensor | None:
        if replace is None:
            return None
        return torch.from_numpy(replace[name]).to(output.dtype).reshape(output.shape)

    def linear_hook(name: str):  # noqa: ANN202
        def hook(module, args, output):  # noqa: ANN001, ANN202
            seen[name] = args[0].detach().clone()
            return None if name in activations else replaced(name, output)

        return hook

    def activation_hook(name: str):  # noqa: ANN202
        def hook(module, args, output):  # noqa: ANN001, ANN202
            return replaced(name, output)

        return hook

    def input_hook(name: str):  # noqa: ANN202
        def hook(module, args, output):  # noqa: ANN001, ANN202
            seen[name] = args[0].detach().clone()

        return hook

    handles = []
    for n, m in modules.items():
        if isinstance(m, FeedForward):  # input at the first layer, output at the second
            handles.append(m.first.register_forward_hook(input_hook(n)))
            handles.append(m.second.register_forward_hook(activation_hook(n)))
        else:
            handles.append(m.register_forward_hook(linear_hook(n)))
    handles += [m.register_forward_hook(activation_hook(n)) for n, m in activations.items()]
    try:
        with torch.no_grad():
            out = wrapper(batch.input_ids, batch.attention_mask)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _first_flip(
    seq: int, taps: list, values: dict, plain_x: dict[str, torch.Tensor], modules: dict
) -> str | None:
    """The first node whose binary activations differ between the two runs, for one sequence."""
    for node, x_name, *_ in taps:
        beta = modules[node].act_threshold
        onnx_bits = (torch.from_numpy(values[x_name][seq]).float() - beta) < 0
        torch_bits = (plain_x[node][seq].float() - beta) < 0
        if not torch.equal(onnx_bits, torch_bits):
            return node
    return None


def _part(y: np.ndarray, i: int, parts: int) -> np.ndarray:
    """Slice ``i`` of ``parts`` equal slices of ``y``'s last axis (a stacked node's layer)."""
    width = y.shape[-1] // parts
    return np.ascontiguousarray(y[..., i * width : (i + 1) * width])


def _check_batch(
    session, backend: str, wrapper: ExportWrapper, batch: Batch, plain: TorchRun, taps: list,
    modules: dict, tolerance: float, activations: dict,
) -> BatchResult:  # fmt: skip
    feed = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feed), strict=True))
    onnx_out = values[names[0]]
    onnx_y = {node: _part(values[y], i, parts) for node, _, y, i, parts in taps}
    forced_out, torch_x = _torch_run(wrapper, batch, modules, onnx_y, activations)
    drift = None
    worst_node = worst_input = 0.0
    for node, x_name, *_ in taps:
        x = torch.from_numpy(values[x_name])
        input_error = scaled_error(x, torch_x[node])
        allowance = None
        with torch.no_grad():
            if isinstance(modules[node], FeedForward):
                ref, allowance = modules[node].reference(x)
            else:
                ref = modules[node](x)
                allowance = half_precision_ties(modules[node], x)
            if node in activations:  # the node's fused GELU
                ref = activations[node](ref)
        node_error = scaled_error(onnx_y[node], ref, allowance)
        worst_input, worst_node = max(worst_input, input_error), max(worst_node, node_error)
        if drift is None and input_error > tolerance:
            drift = Drift(f"the input of {node}", input_error)
        if drift is None and node_error > tolerance:
            drift = Drift(f"the output of {node} (given the same input)", node_error)
    output_error = scaled_error(onnx_out, forced_out)
    if drift is None and output_error > tolerance:
        drift = Drift("the model output (after the last binary layer)", output_error)
    plain_out, plain_x = plain
    diverged = [i for i in range(plain_out.shape[0])
                if scaled_error(onnx_out[i], plain_out[i]) > tolerance]  # fmt: skip
    flips = [_first_flip(i, taps, values, plain_x, modules) for i in diverged]
    order = [node for node, *_ in taps]
    first = min((f for f in flips if f), key=order.index, default=None)
    return BatchResult(backend, batch.label, worst_node, worst_input, output_error, drift,
                       plain_out.shape[0] - len(diverged), plain_out.shape[0],
                       flips.count(None), first)  # fmt: skip


def verify_onnx(
    model: onnx.ModelProto,
    wrapper: ExportWrapper,
    batches: list[Batch],
    tolerance: float,
    backends: tuple[str, ...] = ("function", "kernel"),
    threads: int | None = None,
) -> VerificationReport:
    """Run ``model`` in ONNX Runtime with each backend on each batch and check it (see above).

    ``kernel`` (the native op) is left out when libbitmaps_ort.so was not built: the report's
    summary names the backends that ran.
    """
    if library_missing() is not None:
        backends = tuple(b for b in backends if b != "kernel") or ("function",)

    tapped, taps = tap_binary_linears(model)
    modules = _binary_modules(wrapper, taps, _ffn_gelu(model))
    activations = _activation_modules(wrapper, batches[0], modules, _fused_nodes(model))
    plain = [_torch_run(wrapper, b, modules, None) for b in batches]
    results = []
    for backend in backends:
        session = open_session(tapped, backend, threads)
        for batch, expected in zip(batches, plain, strict=True):
            results.append(
                _check_batch(
                    session,
                    backend,
                    wrapper,
                    batch,
                    expected,
                    taps,
                    modules,
                    tolerance,
                    activations,
                )  # fmt: skip
            )
    return VerificationReport(tolerance, results)

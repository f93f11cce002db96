"""The packed inference modules that export and every runtime share.

:class:`BinaryLinearSpec` is what the ``bitmaps::BinaryLinear`` op (ONNX node, TensorRT plugin,
torch op) needs for one layer: packed int32 weight signs, the per-channel weight scale, the bias and
the attributes. :class:`PackedBinaryLinear` holds only those (1/32 of the FP32 weight bytes) and calls
the torch op. The training module that produces a spec lives in :mod:`bitmaps.train.binary_linear`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bitmaps.core import ops
from bitmaps.core.errors import BitmapsError
from bitmaps.core.packing import packed_width


@dataclasses.dataclass(frozen=True, eq=False)
class BinaryLinearSpec:
    """What the ``bitmaps::BinaryLinear`` ONNX op / TensorRT plugin needs for one layer."""

    packed_weight: torch.Tensor  # int32 [N, ceil(K/32)], bit 1 = −1 (DESIGN.md layout)
    w_scale: torch.Tensor  # float32 [N]
    bias: torch.Tensor  # float32 [N], zeros when the layer has none
    in_features: int
    out_features: int
    act_threshold: float  # β
    act_scale: float  # α > 0, or 0.0: per-row mean |x − β|
    act_unsigned: int = 0  # 1: activations to {0, 1} (two-set binarization), 0: to ±1


class PackedBinaryLinear(nn.Module):
    """Inference form of a W1A1 BinaryLinear: buffers only, forward = ``bitmaps.core.ops.binary_linear``.

    Input ``[..., K]`` float16/float32 → output ``[..., N]`` of the same dtype. ``w_scale`` and
    ``bias`` stay float32 under ``.half()`` (the op's contract), packed weights stay int32.

    On CPU the weights are also held laid out for the GEMM (``panels``, ``bitmaps::prepack_weights``):
    a non-persistent buffer rebuilt whenever ``packed_weight`` is set (construction,
    ``load_state_dict``, a move back to the CPU), so eager calls run
    ``bitmaps::binary_linear_prepacked`` and never lay the weights out again. The state dict, the
    checkpoint format and what torch.export / ONNX export trace (``bitmaps::binary_linear`` on
    ``packed_weight``) are unchanged. Off the CPU ``panels`` is None.
    """

    def __init__(self, spec: BinaryLinearSpec) -> None:
        super().__init__()
        n, k = spec.out_features, spec.in_features
        if tuple(spec.packed_weight.shape) != (n, packed_width(k)):
            raise BitmapsError(
                f"packed weight shape {tuple(spec.packed_weight.shape)} != "
                f"({n}, {packed_width(k)}) for in_features={k}, out_features={n}"
            )
        self.in_features = k
        self.out_features = n
        self.act_threshold = float(spec.act_threshold)
        self.act_scale = float(spec.act_scale)
        if spec.act_unsigned not in (0, 1):
            raise BitmapsError(f"act_unsigned must be 0 or 1, got {spec.act_unsigned}")
        self.act_unsigned = int(spec.act_unsigned)
        # 1: GELU (erf form) applied to the output, fused into the CPU kernel's epilogue when the
        # panels path runs; set by bitmaps.runtime.fusion.fuse_gelu_ (inference only), not part
        # of the state dict
        self.activation = 0
        self.register_buffer("packed_weight", spec.packed_weight.to(torch.int32).contiguous())
        self.register_buffer("w_scale", spec.w_scale.float().contiguous())
        self.register_buffer("bias", spec.bias.float().contiguous())
        self.register_buffer("panels", None, persistent=False)
        self._refresh_panels()
        self.register_load_state_dict_post_hook(lambda module, _: module._refresh_panels())

    def _refresh_panels(self) -> None:
        w = self.packed_weight
        self.panels = ops.prepack_weights(w, self.in_features) if w.device.type == "cpu" else None

    @classmethod
    def from_spec(cls, spec: BinaryLinearSpec) -> PackedBinaryLinear:
        return cls(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.export (and so ONNX export) must see bitmaps::binary_linear on packed_weight;
        # eager calls and torch.compile use the panels (both ops have fake kernels).
        if self.panels is not None and x.device.type == "cpu" and not torch.compiler.is_exporting():
            return run_prepacked(self, x.contiguous())
        args = (
            x.contiguous(),
            self.packed_weight,
            self.w_scale,
            self.bias,
            self.in_features,
            self.act_threshold,
            self.act_scale,
        )
        # act_unsigned travels only when set, so a traced signed layer has the op's 7-argument
        # form that every exporter and runtime already reads
        y = (
            ops.binary_linear(*args, self.act_unsigned)
            if self.act_unsigned
            else ops.binary_linear(*args)
        )
        return torch.nn.functional.gelu(y) if self.activation else y

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        kept = {name: self._buffers[name] for name in ("w_scale", "bias")}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:  # .half() / .to(dtype): restore full-precision scales
                self._buffers[name] = old.to(device=new.device)
        panels, w = self.panels, self.packed_weight
        # laid out again where the weights moved (or the panels are missing); kept otherwise,
        # so a view into stacked panels (bitmaps.runtime.fusion.fuse_qkv_) stays one
        if panels is None or panels.device != w.device or panels.shape[1] != w.shape[1]:
            self._refresh_panels()
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"act_threshold={self.act_threshold:.4g}, act_scale={self.act_scale:.4g}"
            + (", act_unsigned=1" if self.act_unsigned else "")
            + (", activation=gelu" if self.activation else "")
        )


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``module``."""
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def run_prepacked(m: PackedBinaryLinear, x: torch.Tensor) -> torch.Tensor:
    """``m`` on contiguous CPU ``x`` through its panels (its fused GELU included)."""
    return ops.binary_linear_prepacked(x, m.panels, m.w_scale, m.bias, m.in_features,
                                       m.act_threshold, m.act_scale, m.act_unsigned,
                                       m.activation)  # fmt: skip

"""TensorRT backend: build an engine from a bitmaps ONNX model with the BinaryLinear plugin, run it.

:func:`build_engine` loads ``libbitmaps_trt_plugin.so`` into TensorRT's plugin registry (so that the
ONNX parser maps every ``bitmaps::BinaryLinear`` node onto the plugin), parses the model, sets FP16
the way the installed
TensorRT wants it — ``BuilderFlag.FP16`` on TensorRT 10's weakly typed networks; on TensorRT 11,
whose networks are always strongly typed, the ONNX model itself must be FP16
(``bitmaps export --dtype fp16``) — adds one optimization profile over (batch, sequence), and
writes the serialized engine atomically. :class:`TensorRTEngine` runs an engine on CUDA memory
owned by torch and :func:`compare_outputs` checks it against PyTorch.

The model-local function of the same name is no TensorRT fallback in a portable export: it
unpacks the weights with ``BitwiseAnd``, which the ONNX-TensorRT parser does not support
(onnx-tensorrt docs/operators.md). Which one the parser tries first depends on its version:
TensorRT 10.0-10.6 import a model-local function before looking for a plugin
(onnx-tensorrt 10.1 ``ModelImporter.cpp``), so a portable export fails to parse there even with
the plugin loaded; TensorRT 10.7 and later use a registered plugin first (TensorRT CHANGELOG,
10.7.0 GA) and reach the function, and fail on it, only when the plugin is not loaded. Export
with ``--target tensorrt`` for TensorRT: only parser-supported ops, the function's weights unpacked
with integer Div/Mod.

Everything the user can get wrong (no TensorRT, no plugin library, an unsupported node, a bad
shape) is a :class:`~bitmaps.core.errors.BitmapsError` with one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx
import torch

from bitmaps.core.atomic import atomic_output, check_writable
from bitmaps.core.config import EngineBuildConfig, parse_batch_seq
from bitmaps.core.errors import BitmapsError
from bitmaps.export.onnx_export import model_metadata

PLUGIN_LIBRARY = "libbitmaps_trt_plugin.so"
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "BinaryLinear", "1", "bitmaps"
PLUGIN_ENV = "BITMAPS_TRT_PLUGIN"
_REPO_ROOT = Path(__file__).resolve().parents[2]

_loaded_plugins: dict[str, Any] = {}  # path -> registry handle (a library registers once)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a BitmapsError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BitmapsError(
            f"TensorRT is not installed: {exc}. Install TensorRT 10 or 11 with its Python "
            "bindings (pip install tensorrt, or use the NGC TensorRT container; see Dockerfile)"
        ) from None
    return trt


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def plugin_search_paths(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Where the plugin library is looked for, in order."""
    if explicit:
        return [Path(explicit)]
    paths = [Path(os.environ[PLUGIN_ENV])] if os.environ.get(PLUGIN_ENV) else []
    paths += [
        _REPO_ROOT / "build" / "plugin" / PLUGIN_LIBRARY,  # `make plugin`
        Path(__file__).resolve().parent / PLUGIN_LIBRARY,  # installed next to this module
        Path("/usr/local/lib") / PLUGIN_LIBRARY,  # the Dockerfile's install location
    ]
    return paths


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path:
    """The first existing plugin library, or a BitmapsError naming every place looked at. A
    library the environment names must be there: it is not passed over for a default one (an
    ``explicit`` path is the only place looked at anyway)."""
    named = os.environ.get(PLUGIN_ENV)
    if not explicit and named and not Path(named).is_file():
        raise BitmapsError(
            f"{PLUGIN_ENV}={named}: no such plugin library file; give the path of "
            f"{PLUGIN_LIBRARY} (built by `make plugin`), or unset it"
        )
    paths = plugin_search_paths(explicit)
    for path in paths:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in paths)
    raise BitmapsError(
        f"TensorRT plugin library {PLUGIN_LIBRARY} not found (looked in: {where}); build it with "
        f"`make plugin` (TensorRT_ROOT=<TensorRT dir>) or pass --plugin / set {PLUGIN_ENV}"
    )


def load_plugin(trt: Any, explicit: str | os.PathLike | None = None) -> Path:
    """Register the plugin library with TensorRT (once per process); return its path."""
    path = find_plugin_library(explicit).resolve()
    key = str(path)
    registry = trt.get_plugin_registry()
    if key not in _loaded_plugins:
        try:
            handle = registry.load_library(key)
        except Exception as exc:  # noqa: BLE001 - the bindings raise plain RuntimeErrors
            raise BitmapsError(
                f"TensorRT could not load the plugin library {path}: {exc}"
            ) from None
        if handle is None:
            raise BitmapsError(
                f"TensorRT could not load the plugin library {path} (built against another "
                "TensorRT or CUDA version? rebuild it with `make plugin`)"
            )
        _loaded_plugins[key] = handle
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise BitmapsError(
            f"{path} loaded but TensorRT has no creator {PLUGIN_NAMESPACE}::{PLUGIN_NAME} "
            f"v{PLUGIN_VERSION}; is it a bitmaps plugin build?"
        )
    return path


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _read_model(model_path: Path) -> onnx.ModelProto:
    """The ONNX model at ``model_path`` (its graph; external data is not read), read once for
    every check of a build."""
    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises various DecodeErrors
        raise BitmapsError(f"{model_path} is not a readable ONNX model: {exc}") from None


def check_tensorrt_target(model: onnx.ModelProto, model_path: Path) -> None:
    """Refuse a binary export not made with ``--target tensorrt`` (``bitmaps.target`` in its
    metadata_props; files from before targets existed are portable), before TensorRT is loaded."""
    meta = {p.key: p.value for p in model.metadata_props}
    binary = meta.get("bitmaps.kind") == "binary" or any(
        n.domain == PLUGIN_NAMESPACE and n.op_type == PLUGIN_NAME for n in model.graph.node
    )
    target = meta.get("bitmaps.target", "portable")
    if binary and target != "tensorrt":
        raise BitmapsError(
            f"{model_path} is a {target} export; TensorRT needs one made with "
            "`bitmaps export CKPT OUT.onnx --target tensorrt`"
        )


# The BinaryLinear attributes the plugin reads besides in_features / out_features (DESIGN.md's op):
# name -> (ONNX attribute type, the check of its value, what it must be); each is optional
_PLUGIN_ATTRIBUTES = {
    "act_threshold": (onnx.AttributeProto.FLOAT, math.isfinite, "a finite float"),
    "act_scale": (
        onnx.AttributeProto.FLOAT, lambda v: math.isfinite(v) and v >= 0,
        "a finite float >= 0 (0: the per-row mean)",
    ),
    "act_unsigned": (onnx.AttributeProto.INT, lambda v: v in (0, 1), "0 or 1"),
    "activation": (onnx.AttributeProto.INT, lambda v: v == 0, "0 (the plugin has no GELU)"),
    "plugin_version": (onnx.AttributeProto.STRING, lambda v: v == b"1", '"1"'),
    "plugin_namespace": (
        onnx.AttributeProto.STRING, lambda v: v == PLUGIN_NAMESPACE.encode(),
        f'"{PLUGIN_NAMESPACE}"',
    ),
}  # fmt: skip


def _check_plugin_attributes(
    model_path: Path, node: str, attrs: dict[str, onnx.AttributeProto]
) -> None:
    """A BinaryLinear node's attributes other than its sizes: types and values the plugin takes
    (a wrong one would fail inside TensorRT's parser, or build an engine that computes another
    layer), named in one line."""
    for name, (kind, valid, wanted) in _PLUGIN_ATTRIBUTES.items():
        attr = attrs.get(name)
        if attr is None:
            continue
        value = onnx.helper.get_attribute_value(attr) if attr.type == kind else None
        if value is None or not valid(value):
            shown = repr(value.decode(errors="replace") if isinstance(value, bytes) else value)
            kind_name = onnx.AttributeProto.AttributeType.Name(attr.type)
            got = shown if value is not None else f"of type {kind_name}"
            raise BitmapsError(
                f"{model_path}: BinaryLinear node {node!r} has {name} {got}; it must be {wanted}: "
                "re-export it with `bitmaps export --target tensorrt`"
            )


def _check_without_tensorrt(
    model: onnx.ModelProto, model_path: Path, cfg: EngineBuildConfig
) -> None:
    """What a build needs that can be checked before TensorRT is loaded (so that a machine
    without TensorRT reports these too): the model's graph and its BinaryLinear nodes'
    attributes, an explicit plugin file, the timing cache's folder."""
    if not model.graph.node:
        raise BitmapsError(f"{model_path} has an empty graph: not an exported model")
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.domain != PLUGIN_NAMESPACE or node.op_type != PLUGIN_NAME:
            continue
        attrs = {a.name: a for a in node.attribute}
        for name in ("in_features", "out_features"):
            attr = attrs.get(name)
            value = attr.i if attr is not None and attr.type == onnx.AttributeProto.INT else None
            if value is None or not 1 <= value < 2**31:
                raise BitmapsError(
                    f"{model_path}: BinaryLinear node {node.name!r} has {name} "
                    f"{value if value is not None else 'missing or not an integer'}; re-export it "
                    "with `bitmaps export --target tensorrt`"
                )
        if len(node.input) < 2 or not node.input[1]:
            raise BitmapsError(
                f"{model_path}: BinaryLinear node {node.name!r} has no packed weight input"
            )
        _check_plugin_attributes(model_path, node.name, attrs)
        packed = weights.get(node.input[1])  # DESIGN.md: [out_features, ceil(in_features / 32)]
        k, n = attrs["in_features"].i, attrs["out_features"].i
        if packed is not None and packed != [n, (k + 31) // 32]:
            raise BitmapsError(
                f"{model_path}: BinaryLinear node {node.name!r}: its packed weight is {packed}, "
                f"in_features {k} and out_features {n} need [{n}, {(k + 31) // 32}]; re-export it "
                "with `bitmaps export --target tensorrt`"
            )
    positions = model_metadata(model).get("max_sequence", "")
    longest = parse_batch_seq(cfg.max_shape)[1]
    # ASCII digits only: str.isdigit() is true of "²", which int() refuses
    if positions.isascii() and positions.isdigit() and longest > int(positions):
        raise BitmapsError(
            f"--max-shape {cfg.max_shape}: {model_path} takes at most {positions} tokens a sequence "
            f"(its position table); give --max-shape Bx{positions} or less"
        )
    if cfg.plugin or os.environ.get(PLUGIN_ENV):  # a plugin named: the search TensorRT would do
        path = find_plugin_library(cfg.plugin)
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                raise BitmapsError(f"{path} is not a shared library (build it with `make plugin`)")
    if cfg.timing_cache:
        cache = Path(cfg.timing_cache)
        if cache.is_dir() or not cache.parent.is_dir():
            raise BitmapsError(
                f"--timing-cache {cache}: give a file in an existing folder (it is read if it "
                "exists, then written)"
            )
        check_writable(cache)  # written after the engine: a failure then would leave half a result


def _model_facts(model: onnx.ModelProto) -> tuple[bool, int]:
    """(outputs are float16, number of BinaryLinear nodes)."""
    outputs = [o.type.tensor_type.elem_type for o in model.graph.output]
    fp16 = bool(outputs) and all(t == onnx.TensorProto.FLOAT16 for t in outputs)
    nodes = sum(1 for n in model.graph.node if n.op_type == PLUGIN_NAME)
    return fp16, nodes


def _parse_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = getattr(err, "node_name", lambda: "")() or f"#{err.node()}"
        op = getattr(err, "node_operator", lambda: "")()
        lines.append(f"{err.desc()} (node {node}{' ' + op if op else ''})")
    return "; ".join(lines) or "unknown parser error"


def _profile_shape(dims: tuple[int, ...], batch_seq: tuple[int, int], name: str) -> tuple:
    """Fill the dynamic axes of an input: axis 0 is batch, axis 1 is sequence."""
    shape = []
    for axis, d in enumerate(dims):
        if d >= 0:
            shape.append(d)
        elif axis < 2:
            shape.append(batch_seq[axis])
        else:
            raise BitmapsError(
                f"input {name} has a dynamic axis {axis}; only batch and sequence may be"
            )
    return tuple(shape)


def _progress_monitor(trt: Any, echo: Callable[[str], None]) -> Any | None:
    """A TensorRT progress monitor that prints each build phase once (None where unsupported)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.top: dict[str, float] = {}  # top-level phase -> start time

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.top[phase_name] = time.perf_counter()
                echo(f"  {phase_name} ...")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.top:
                echo(
                    f"  {phase_name} done in {time.perf_counter() - self.top.pop(phase_name):.1f} s"
                )

    return _Monitor()


@dataclasses.dataclass
class BuildReport:
    engine: Path
    tensorrt_version: str
    plugin: Path
    fp16: bool
    plugin_layers: int
    binary_linear_nodes: int
    seconds: float
    engine_mb: float


def build_engine(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    cfg: EngineBuildConfig,
    echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> BuildReport:
    """ONNX model → serialized TensorRT engine at ``output`` (atomic), with the bitmaps plugin."""
    model_path = Path(model_path)
    if model_path.is_dir():
        raise BitmapsError(f"ONNX model {model_path} is a folder: give the .onnx file")
    if not model_path.is_file():
        raise BitmapsError(f"ONNX model {model_path} not found")
    output = check_writable(output)
    model = _read_model(model_path)
    check_tensorrt_target(model, model_path)
    _check_without_tensorrt(model, model_path, cfg)
    model_fp16, n_binary = _model_facts(model)
    del model  # TensorRT's parser reads the file itself
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    plugin = load_plugin(trt, cfg.plugin)
    if cfg.fp16 and major >= 11 and not model_fp16:
        raise BitmapsError(
            "TensorRT 11 builds strongly typed networks, so --fp16 needs an FP16 model: export it "
            "with `bitmaps export ... --dtype fp16`"
        )
    t0 = time.perf_counter()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10: weakly typed (flags 0) so BuilderFlag.FP16 may pick FP16 kernels; an FP16 model
    # is built strongly typed, keeping its declared types. TensorRT 11: always strongly typed.
    flags = 0
    if major < 11 and model_fp16:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    echo(f"parsing {model_path} (TensorRT {trt.__version__}, plugin {plugin})")
    if not parser.parse_from_file(str(model_path)):
        raise BitmapsError(
            f"TensorRT cannot build {model_path}: unsupported node: {_parse_errors(parser)} "
            "(a portable export's BinaryLinear function uses BitwiseAnd, which TensorRT lacks: "
            "export with --target tensorrt)"
        )
    plugin_layers = sum(
        1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3
    )
    if n_binary and plugin_layers < n_binary:
        echo(
            f"  warning: only {plugin_layers} of {n_binary} BinaryLinear nodes use the plugin; the "
            "rest were imported as the model's local function (TensorRT 10.0-10.6 try it before "
            "a plugin): correct, but a float MatMul instead of the XNOR-popcount kernel"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if cfg.fp16 and major < 11 and not model_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = [parse_batch_seq(s) for s in (cfg.min_shape, cfg.opt_shape, cfg.max_shape)]
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        profile.set_shape(tensor.name, *(_profile_shape(dims, s, tensor.name) for s in shapes))
    config.add_optimization_profile(profile)
    cache = None
    if cfg.timing_cache:
        cache_path = Path(cfg.timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, echo)
    if monitor is not None:
        config.progress_monitor = monitor

    echo(
        f"building engine: fp16={cfg.fp16}, "
        f"shapes {cfg.min_shape} .. {cfg.opt_shape} .. {cfg.max_shape}"
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BitmapsError(
            f"TensorRT failed to build an engine from {model_path}; see its log above"
        )
    with atomic_output(output) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache is not None:
        with atomic_output(cfg.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return BuildReport(
        engine=output,
        tensorrt_version=str(trt.__version__),
        plugin=plugin,
        fp16=cfg.fp16,
        plugin_layers=plugin_layers,
        binary_linear_nodes=n_binary,
        seconds=time.perf_counter() - t0,
        engine_mb=output.stat().st_size / 2**20,
    )


class TensorRTEngine:
    """A deserialized engine with one execution context; tensors in and out are torch CUDA."""

    def __init__(self, engine_path: str | os.PathLike, plugin: str | os.PathLike | None = None):
        self._torch = torch
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BitmapsError("running a TensorRT engine needs a CUDA GPU visible to torch")
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise BitmapsError(
                f"engine {engine_path} not found; build it with `bitmaps build-engine`"
            )
        load_plugin(trt, plugin)
        self._runtime = trt.Runtime(_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BitmapsError(
                f"TensorRT could not deserialize {engine_path} (built by another TensorRT version "
                "or for another GPU? rebuild it with `bitmaps build-engine`)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self._dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """One inference on torch's current CUDA stream; returns the outputs as CUDA tensors."""
        torch = self._torch
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise BitmapsError(f"engine inputs missing: {', '.join(missing)}")
        keep = []
        for name in self.inputs:
            t = torch.as_tensor(feeds[name]).to("cuda", self._dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise BitmapsError(
                    f"input {name} shape {tuple(t.shape)} is outside the engine's profile"
                )
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        results = {}
        for name in self.outputs:
            out = torch.empty(
                tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda"
            )
            self.context.set_tensor_address(name, out.data_ptr())
            results[name] = out
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BitmapsError("TensorRT execution failed; see its log above")
        stream.synchronize()
        return results


def _torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for name, tdt in (("int64", torch.int64), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdt
    if dt not in table:
        raise BitmapsError(f"engine tensor type {dt} has no torch equivalent")
    return table[dt]


@dataclasses.dataclass
class ParityReport:
    max_abs_diff: float
    max_rel_diff: float
    ok: bool


def compare_outputs(actual: Any, expected: Any, atol: float, rtol: float) -> ParityReport:
    """Elementwise ``|a - e| <= atol + rtol * |e|`` in float32, with the worst differences."""
    a = actual.float().cpu()
    e = expected.float().cpu()
    if a.shape != e.shape:
        raise BitmapsError(f"engine output shape {tuple(a.shape)} != PyTorch {tuple(e.shape)}")
    diff = (a - e).abs()
    rel = diff / e.abs().clamp_min(1e-6)
    ok = bool((diff <= atol + rtol * e.abs()).all())
    return ParityReport(
        float(diff.max()) if diff.numel() else 0.0, float(rel.max()) if rel.numel() else 0.0, ok
    )

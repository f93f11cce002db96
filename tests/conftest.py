"""Shared test fixtures. Tests of a higher tier (gpu, tensorrt) skip with a reason naming what is missing."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def csrc_module(name: str):  # noqa: ANN201 - the module csrc/<name>.py
    """setup.py's rule modules (csrc/cuda_build.py, csrc/cxx_build.py), loaded as setup.py loads
    them: from their file, without importing torch or bitmaps."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "csrc" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_module(name: str, needs_cxx: bool = False):  # noqa: ANN201 - benchmarks/<name>.py
    """A script of benchmarks/, imported as it runs (its sibling modules importable); with
    ``needs_cxx`` the test skips where no C++ compiler (g++) can build its experiment."""
    import importlib
    import shutil
    import sys
    from pathlib import Path

    if needs_cxx and shutil.which("g++") is None:
        pytest.skip(f"needs a C++ compiler (g++) to build {name}'s experiment")
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2, exactly one ``error:`` line holding every needle, no traceback."""
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def train_args(data, out, *extra: str) -> list[str]:
    """``bitmaps train`` arguments: the bert-tiny teacher on ``data`` into ``out``, plus ``extra``."""
    return ["train", "--teacher", "bert-tiny", "--data", str(data), "-o", str(out), *extra]


# --- the compiled CPU kernels (bitmaps._C): every path forced in turn ---

K_VALUES = (1, 31, 32, 33, 100, 768, 3072)  # the awkward K of STYLE.md, plus BERT-base's
CPU_PATHS = ("avx512", "avx2", "scalar")
NEEDS_C = "needs bitmaps._C (build it: python setup.py build_ext --inplace)"


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request):
    """Forces one CPU kernel path for the test; skips where the build or the CPU lacks it."""
    from bitmaps.core import ops

    if not ops.native_available():
        pytest.skip(NEEDS_C)
    if request.param not in ops.cpu_paths_supported():
        pytest.skip(
            f"needs a CPU with the {request.param} path (this one: {ops.cpu_paths_supported()})"
        )
    with ops.forced_cpu_path(request.param):
        yield request.param


def native_calls(op: str, path: str) -> int:
    """How often the compiled kernel of ``op`` ran on ``path`` (proves which kernel served a call)."""
    from bitmaps import _C

    return _C.native_call_counts()[f"{op}/{path}"]


# --- offline assets (bitmaps/data/assets.py): tests that need them skip only when they are absent ---

NEEDS_ASSETS = "needs assets: run `bitmaps assets fetch`"
# The six shortest speeches (5-12 KB each): enough for two splits, fast to build.
SOTU_SMALL = (
    "1790_george_washington_n.txt",
    "1799_john_adams_f.txt",
    "1800_john_adams_f.txt",
    "1809_james_madison_dr.txt",
    "1932_herbert_hoover_r.txt",
    "1973_richard_nixon_r.txt",
)


def _asset_or_skip(name: str):
    from bitmaps.data.assets import assets_root

    path = assets_root() / name
    if not path.is_dir():
        pytest.skip(NEEDS_ASSETS)
    return path


@pytest.fixture(scope="session")
def assets_dir():
    """The asset cache folder, holding every asset of the pinned manifest."""
    from bitmaps.data.assets import assets_root, load_manifest

    for name in load_manifest():
        _asset_or_skip(name)
    return assets_root()


@pytest.fixture(scope="session")
def bert_tiny_dir():
    return _asset_or_skip("bert-tiny")


@pytest.fixture(scope="session")
def minilm_dir():
    return _asset_or_skip("minilm-l6")


@pytest.fixture(scope="session")
def sotu_dir():
    return _asset_or_skip("sotu")


@pytest.fixture(scope="session")
def bert_tiny_tokenizer(bert_tiny_dir):
    from bitmaps.data.corpus import load_tokenizer

    return load_tokenizer(bert_tiny_dir)


@pytest.fixture
def sotu_small(sotu_dir, tmp_path):
    """A fresh folder with six real speeches (SOTU_SMALL); tests may change it."""
    import shutil

    folder = tmp_path / "sotu_small"
    folder.mkdir()
    for name in SOTU_SMALL:
        shutil.copyfile(sotu_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def sotu_corpus(sotu_dir, bert_tiny_tokenizer, tmp_path_factory):
    """All of SOTU packed with BERT-tiny's tokenizer and DataConfig(), built once per session
    into a fresh cache folder (``corpus.cache_path``)."""
    from bitmaps.core.config import DataConfig
    from bitmaps.data.corpus import build_corpus

    cache = tmp_path_factory.mktemp("sotu-corpus-cache")
    tok = bert_tiny_tokenizer
    return build_corpus(sotu_dir, tok, DataConfig(), cache_dir=cache, log=lambda _m: None)


# --------------------------------------------------------------------------- CUDA kernels


def cuda_kernels_built() -> bool:
    from bitmaps.core import ops

    return (
        torch.cuda.is_available()
        and ops.native_available()
        and torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::xnor_gemm", "CUDA")
    )


NEEDS_CUDA_KERNELS = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_kernels_built(), reason="needs an NVIDIA GPU and bitmaps._C built with CUDA"
    ),
]
CUDA_GEMM_PATHS = ["popc", "mma", "wgmma"]


def cuda_path_supported(path: str) -> bool:
    """popc everywhere, mma.sync b1 on sm_80/sm_89-class GPUs, wgmma on sm_90a."""
    major, minor = torch.cuda.get_device_capability()
    if path == "mma":
        return major in (8, 9)
    if path == "wgmma":
        return (major, minor) == (9, 0)
    return True


@pytest.fixture(params=CUDA_GEMM_PATHS)
def gemm_path(request, monkeypatch) -> str:
    """Each CUDA GEMM path forced through BITMAPS_CUDA_GEMM_PATH (skipped where it cannot run)."""
    path = request.param
    if not cuda_path_supported(path):
        pytest.skip(
            f"GEMM path {path} needs another GPU (this is sm_{torch.cuda.get_device_capability()})"
        )
    monkeypatch.setenv("BITMAPS_CUDA_GEMM_PATH", path)
    return path


def packed_cuda(rows: int, k: int) -> torch.Tensor:
    """``rows`` random rows of K signs, packed on the GPU by the reference."""
    from bitmaps.core import ops

    return ops.reference_pack_signs(torch.randn(rows, k, device="cuda"))


@functools.cache
def amx_withhold_problem() -> str | None:
    """Why `--amx withhold` cannot run here (for a skip reason), or None: Linux on x86-64 and a
    kernel that lets a process install a seccomp filter (some sandboxes forbid it). Probed once."""
    from bitmaps.runtime import amx

    if not amx.supported():
        return "needs Linux on x86-64"
    code = "from bitmaps.runtime import amx; amx.withhold_amx()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return "needs a kernel that allows seccomp filters: " + proc.stderr.strip()[-200:]
    return None


# The files that take longest on 2 cores (CI's --durations), longest first. `make test` hands
# whole files to its two workers (--dist loadfile) in collection order (--no-loadscope-reorder):
# started first, a long file no longer runs alone at the end while the other worker idles.
LONGEST_FIRST = (
    "test_kernel_harness.py",
    "test_profile.py",
    # the longest file (AMD Zen 1, stop 38: 259 s); after the harness, whose aarch64 build it
    # reuses (build/ort/kernels-*), so the two workers do not compile those objects side by side
    "test_cxx_client.py",
    "test_export.py",
    "test_tensorrt_plugin.py",
    "test_export_cli.py",
    "test_train.py",
    "test_embeddings.py",
    "test_export_targets.py",
    "test_classify.py",
    "test_ort_native.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# --------------------------------------------------------------------------- shared traces

# The exporter's trace (torch.export + onnxscript, `bitmaps.export.onnx_export.to_onnx`) is about
# a third of the suite's time: 7-9 s for the small models here, and many tests export the very
# same model (tests/test_export.py's small_student at its defaults) only to check different
# passes, targets or runtimes after it. In one run (all its workers) a trace is made once per
# fingerprint of everything it reads (_trace_key), kept serialized in the run's temporary
# folder, and every export gets its own copy parsed from it, so no pass can change another
# test's. Models over TRACE_CACHE_MAX_BYTES of tensors are always traced afresh.
# BITMAPS_TEST_TRACE_CACHE=0 turns the sharing off; BITMAPS_TEST_TRACE_LOG=FILE appends each
# worker's hits and misses to FILE. tests/test_export.py checks that a shared trace gives the file
# a fresh one gives.
TRACE_CACHE_MAX_BYTES = 64 << 20
TRACE_CACHE_STATS = {"hits": 0, "misses": 0}
_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module) -> list[str]:
    out = []
    for k, v in sorted(vars(module).items()):
        if isinstance(v, _PLAIN + (enum.Enum,)) or (
            isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v)
        ):
            out.append(f"{k}={v!r}")
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.append(f"{k}={v!r}")
    return out


def _trace_key(wrapper, opset: int) -> str | None:
    """What the trace depends on: opset, output, the module tree (types, plain attributes), the
    model config, every parameter, buffer (persistent or not) and tensor attribute (names,
    dtypes, shapes, bytes); None for a model too large to keep."""
    tensors = [*wrapper.named_parameters(), *wrapper.named_buffers()]
    if sum(t.numel() * t.element_size() for _, t in tensors) > TRACE_CACHE_MAX_BYTES:
        return None
    h = hashlib.sha256()
    config = wrapper.model.config
    h.update(f"{opset}|{wrapper.output}|{torch.__version__}|{config.to_json_string()}".encode())
    h.update(repr(getattr(config, "_attn_implementation", None)).encode())
    for name, module in wrapper.named_modules():
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        h.update(f"\n{name}:{kind}:{_plain_attributes(module)}".encode())
        # tensors held as plain attributes (neither parameter nor buffer) are traced as constants
        tensors += [(f"{name}.{k}", v) for k, v in sorted(vars(module).items())
                    if isinstance(v, torch.Tensor)]  # fmt: skip
    for name, t in tensors:
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}:{t.stride()}".encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _trace_folder(tmp_path_factory) -> Path:
    """This run's folder of shared traces: one for all xdist workers of the run, never reused by
    another run (the code a trace comes from may have changed)."""
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = run / "shared-traces"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _shared_traces(tmp_path_factory):
    if os.environ.get("BITMAPS_TEST_TRACE_CACHE", "1") == "0":
        yield
        return
    import onnx
    import onnx_ir as ir

    from bitmaps.export import pipeline

    fresh = pipeline.to_onnx
    folder = _trace_folder(tmp_path_factory)

    def to_onnx(wrapper, opset):  # noqa: ANN202 - onnx_export.to_onnx's signature
        key = _trace_key(wrapper, opset)
        if key is None:
            return fresh(wrapper, opset)
        path = folder / f"{key}.onnx"
        if path.is_file():
            TRACE_CACHE_STATS["hits"] += 1
        else:  # written whole, then renamed: a worker never reads another's half-written file
            TRACE_CACHE_STATS["misses"] += 1
            part = path.with_suffix(f".{os.getpid()}.part")
            part.write_bytes(ir.to_proto(fresh(wrapper, opset)).SerializeToString())
            os.replace(part, path)
        return ir.from_proto(onnx.ModelProto.FromString(path.read_bytes()))

    pipeline.to_onnx = to_onnx
    try:
        yield
    finally:
        pipeline.to_onnx = fresh
        if os.environ.get("BITMAPS_TEST_TRACE_LOG"):
            with open(os.environ["BITMAPS_TEST_TRACE_LOG"], "a") as f:
                f.write(f"{os.getpid()} {TRACE_CACHE_STATS}\n")

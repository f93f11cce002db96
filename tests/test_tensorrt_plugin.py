"""The TensorRT plugin: its sources compile everywhere nvcc is; the rest where TensorRT is.

Tiers (each skips with what it needs):
- nvcc alone: every csrc/kernels/*.cu compiles for sm_80, sm_87 (Jetson Orin) and sm_90a, and the
  SASS holds the b1 tensor-core instructions of each path (with cuobjdump).
- TensorRT headers (TensorRT_ROOT or BITMAPS_TRT_INCLUDE): the plugin's .cpp files compile with g++;
  with libnvinfer too, the CMake project builds the library and a host program dlopens it and
  checks the creator, fields, serialization, formats and workspace (no GPU needed).
- marker tensorrt (TensorRT Python bindings, the built plugin, a GPU): plugin loads, creator found,
  a one-node network matches the reference op on dynamic shapes, and an exported BERT-tiny student
  becomes an FP16 engine whose logits match PyTorch.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted((ROOT / "csrc" / "kernels").glob("*.cu"))
PLUGIN_CPP = [
    ROOT / "plugins" / "binaryLinearPlugin" / "binaryLinearPlugin.cpp",
    ROOT / "plugins" / "bitmapsPluginLibrary.cpp",
]
NVCC = shutil.which("nvcc")
# sm_87 (Jetson Orin) SASS from the compute_80 PTX: one front-end (cicc) pass fewer per file,
# ptxas still compiles for sm_87. The same code as a compute_87 build while no kernel has code of
# its own for 8.x above 8.0 (test_no_kernel_code_is_only_for_a_later_sm_8x checks).
GENCODE = [
    *("-gencode", "arch=compute_80,code=[sm_80,sm_87]"),
    *("-gencode", "arch=compute_90a,code=sm_90a"),
]


def _trt_root() -> Path | None:
    for var in ("BITMAPS_TRT_INCLUDE", "TensorRT_ROOT"):
        value = os.environ.get(var)
        if not value:
            continue
        path = Path(value)
        if (path / "NvInferRuntime.h").is_file():
            return path.parent
        if (path / "include" / "NvInferRuntime.h").is_file():
            return path
    return None


def _cuda_include() -> Path:
    """The CUDA toolkit's include folder (nvcc may be a wrapper script outside the toolkit)."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME]
    candidates += [str(Path(NVCC).resolve().parent.parent) if NVCC else None, "/usr/local/cuda"]
    for home in filter(None, candidates):
        if (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    pytest.skip("needs the CUDA headers (cuda_runtime_api.h): set CUDA_HOME")


# --------------------------------------------------------------------------- nvcc, no TensorRT


@pytest.fixture(scope="module")
def compiled_kernels(tmp_path_factory) -> dict[str, Path]:
    if NVCC is None:
        pytest.skip("needs nvcc (the CUDA toolkit) on PATH")
    out = tmp_path_factory.mktemp("cuda")
    objects = {}
    for src in KERNELS:
        obj = out / f"{src.stem}.o"
        cmd = [NVCC, "-std=c++17", "-O3", f"-I{ROOT / 'csrc'}", *GENCODE, "-c", str(src)]
        proc = subprocess.run([*cmd, "-o", str(obj)], capture_output=True, text=True)
        assert proc.returncode == 0, f"nvcc failed on {src.name}:\n{proc.stderr[-3000:]}"
        objects[src.stem] = obj
    return objects


def test_no_kernel_code_is_only_for_a_later_sm_8x():
    """What lets GENCODE build sm_87 from compute_80: every ``__CUDA_ARCH__`` test of the CUDA
    sources asks for 8.0 or 9.0 and up, so a compute_87 front end would see the same code."""
    sources = [*KERNELS, *(ROOT / "csrc" / "kernels").glob("*.cuh")]
    tests = {
        (src.name, m.group(0))
        for src in sources
        for m in re.finditer(r"__CUDA_ARCH__\s*([<>=!]=?)\s*(\d+)", src.read_text())
    }
    assert tests, "the sources' __CUDA_ARCH__ tests were not found"
    assert all(re.search(r">=\s*(800|900)$", t) for _, t in tests), sorted(tests)


def test_every_kernel_compiles_with_nvcc_alone(compiled_kernels):
    assert {"binary_linear_cuda", "xnor_gemm_popc", "xnor_gemm_mma", "xnor_gemm_wgmma"} <= set(
        compiled_kernels
    )
    assert all(p.stat().st_size > 0 for p in compiled_kernels.values())


def _cuda_tool(name: str) -> Path | None:
    """A CUDA binary tool on PATH, else from its PyPI wheel (nvidia-cuda-<name>, in .[test])."""
    found = shutil.which(name)
    if found:
        return Path(found)
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        hits = sorted(Path(root).glob(f"cu*/bin/{name}"))
        if hits:
            return hits[-1]
    return None


def _sass(obj: Path, arch: str) -> str:
    tool, disasm = _cuda_tool("cuobjdump"), _cuda_tool("nvdisasm")
    if tool is None or disasm is None:
        pytest.skip(
            "needs cuobjdump and nvdisasm (CUDA toolkit, or pip install nvidia-cuda-cuobjdump "
            "nvidia-cuda-nvdisasm)"
        )
    proc = subprocess.run(
        [tool, "--dump-sass", "--gpu-architecture", arch, str(obj)],
        capture_output=True,
        text=True,
        env={**os.environ, "NVDISASM_PATH": str(disasm.parent)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    "stem,arch,instruction,absent",
    [
        ("xnor_gemm_mma", "sm_80", "BMMA.168256.XOR.POPC", "CALL.REL.NOINC `"),
        ("xnor_gemm_mma", "sm_87", "BMMA.168256.XOR.POPC", "CALL.REL.NOINC `"),
        # On Hopper the kernel switches to AND + row popcounts: no emulated XOR subroutine calls.
        ("xnor_gemm_mma", "sm_90a", "BMMA.168256.AND.POPC", "BMMA.168256.XOR"),
        ("xnor_gemm_wgmma", "sm_90a", "BGMMA.64x128x256.AND.POPC", "BMMA"),
        ("xnor_gemm_popc", "sm_80", "POPC", "BMMA"),
        # the mma path's two opt-in candidates (BITMAPS_CUDA_COPY=wide, BITMAPS_CUDA_FRAGMENTS=
        # ldmatrix): 16-byte cp.async copies that bypass L1, ldmatrix.x4 fragment loads
        ("xnor_gemm_mma", "sm_90a", "LDGSTS.E.BYPASS.128", "LDGSTS.E.128 "),
        ("xnor_gemm_mma", "sm_80", "LDSM.16.M88.4", "LDSM.16.MT88"),
    ],
)
def test_sass_holds_the_intended_instructions(compiled_kernels, stem, arch, instruction, absent):
    sass = _sass(compiled_kernels[stem], arch)
    assert instruction in sass
    assert absent not in sass


def test_wgmma_code_exists_only_for_sm90a(compiled_kernels):
    assert "GMMA" not in _sass(compiled_kernels["xnor_gemm_wgmma"], "sm_80")


# --------------------------------------------------------------------------- TensorRT headers


@pytest.mark.parametrize("src", PLUGIN_CPP, ids=lambda p: p.name)
def test_plugin_sources_compile_against_tensorrt_headers(src):
    root = _trt_root()
    if root is None:
        pytest.skip("needs TensorRT headers: set TensorRT_ROOT (or BITMAPS_TRT_INCLUDE)")
    if NVCC is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA headers (nvcc on PATH)")
    cmd = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]
    cmd += ["-isystem", str(root / "include"), "-isystem", str(_cuda_include())]
    cmd += [f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'plugins'}", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_plugin_library_builds_and_loads_on_the_host(tmp_path):
    root = _trt_root()
    if root is None or not any(any((root / d).glob("libnvinfer.so*")) for d in ("lib", "lib64")):
        pytest.skip("needs TensorRT headers and libnvinfer: set TensorRT_ROOT")
    if NVCC is None or shutil.which("cmake") is None:
        pytest.skip("needs cmake and nvcc")
    build = tmp_path / "build"
    env = {**os.environ, "CUDACXX": NVCC}
    for cmd in (
        ["cmake", "-S", str(ROOT / "plugins"), "-B", str(build), f"-DTensorRT_ROOT={root}"],
        ["cmake", "--build", str(build), "-j", "2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lib = build / "libbitmaps_trt_plugin.so"
    exports = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True
    )
    assert " T getCreators" in exports.stdout and " T setLoggerFinder" in exports.stdout
    smoke = tmp_path / "smoke"
    cmd = ["g++", "-std=c++17", "-isystem", str(root / "include"), "-isystem", str(_cuda_include())]
    # -rdynamic: the smoke test's operator new (which can be made to fail) serves the plugin too
    cmd += [str(ROOT / "plugins" / "tests" / "plugin_host_smoke.cpp"), "-rdynamic", "-ldl"]
    cmd += ["-o", str(smoke)]
    subprocess.run(cmd, check=True)
    proc = subprocess.run([str(smoke), str(lib)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("0 failed")


def test_make_plugin_without_tensorrt_is_one_line_and_exit_2():
    if _trt_root() is not None or Path("/usr/include/x86_64-linux-gnu/NvInferRuntime.h").exists():
        pytest.skip("TensorRT is installed here")
    if NVCC is None or shutil.which("cmake") is None or shutil.which("make") is None:
        pytest.skip("needs make, cmake and nvcc (CMake must find a CUDA compiler first)")
    env = {k: v for k, v in os.environ.items() if k != "TensorRT_ROOT"}
    proc = subprocess.run(
        ["make", "-s", "plugin"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    line = proc.stdout.strip()
    assert line.count("\n") == 0 and line.startswith("plugin: bitmaps: TensorRT not found")
    assert "TensorRT_ROOT" in line


# --------------------------------------------------------------------------- TensorRT itself

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def trt_with_plugin():
    from bitmaps.core.errors import BitmapsError
    from bitmaps.runtime import tensorrt as rt

    trt = rt.import_tensorrt()
    try:
        rt.load_plugin(trt)
    except BitmapsError as exc:
        pytest.skip(f"needs the plugin library built (make plugin): {exc}")
    return trt


def _one_node_engine(
    trt,
    k: int,
    n: int,
    dtype,
    act_threshold: float,
    act_scale: float,
    w,
    w_scale,
    bias,
    act_unsigned: int = 0,
):
    import numpy as np

    from bitmaps.runtime import tensorrt as rt

    creator = trt.get_plugin_registry().get_creator(
        rt.PLUGIN_NAME, rt.PLUGIN_VERSION, rt.PLUGIN_NAMESPACE
    )
    fields = trt.PluginFieldCollection(
        [
            trt.PluginField("in_features", np.array([k], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("out_features", np.array([n], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField(
                "act_threshold", np.array([act_threshold], np.float32), trt.PluginFieldType.FLOAT32
            ),
            trt.PluginField(
                "act_scale", np.array([act_scale], np.float32), trt.PluginFieldType.FLOAT32
            ),
            trt.PluginField(
                "act_unsigned", np.array([act_unsigned], np.int32), trt.PluginFieldType.INT32
            ),
        ]
    )
    plugin = creator.create_plugin("binary_linear", fields, trt.TensorRTPhase.BUILD)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = (
        0
        if rt.tensorrt_major(trt) >= 11
        else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    )
    network = builder.create_network(flags)
    trt_dtype = trt.float16 if dtype == torch.float16 else trt.float32
    x = network.add_input("x", trt_dtype, (-1, -1, k))
    consts = [
        network.add_constant(tuple(t.shape), trt.Weights(t.cpu().numpy())).get_output(0)
        for t in (w, w_scale, bias)
    ]
    layer = network.add_plugin_v3([x, *consts], [], plugin)
    layer.get_output(0).name = "y"
    network.mark_output(layer.get_output(0))
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 1, k), (4, 16, k), (8, 64, k))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    assert blob is not None
    return trt.Runtime(logger).deserialize_cuda_engine(bytes(blob))


@pytest.mark.tensorrt
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs TensorRT on an NVIDIA GPU")
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT (python bindings)")
def test_plugin_creator_found_by_name_version_namespace(trt_with_plugin):
    creator = trt_with_plugin.get_plugin_registry().get_creator("BinaryLinear", "1", "bitmaps")
    assert creator is not None
    assert [f.name for f in creator.field_names] == [
        "in_features",
        "out_features",
        "act_threshold",
        "act_scale",
        "act_unsigned",
    ]


@pytest.mark.tensorrt
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs TensorRT on an NVIDIA GPU")
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT (python bindings)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act_scale", [0.0, 0.5])
@pytest.mark.parametrize("act_unsigned", [0, 1])
def test_one_node_network_matches_reference_on_dynamic_shapes(
    trt_with_plugin, dtype, act_scale, act_unsigned
):
    from bitmaps.core import ops

    k, n = 100, 33
    w = ops.reference_pack_signs(torch.randn(n, k))
    w_scale = torch.rand(n) + 0.1
    bias = torch.randn(n)
    engine = _one_node_engine(
        trt_with_plugin, k, n, dtype, 0.1, act_scale, w, w_scale, bias, act_unsigned
    )
    context = engine.create_execution_context()
    for shape in [(1, 1, k), (3, 17, k), (8, 64, k)]:
        x = torch.randn(*shape, device="cuda").to(dtype)
        y = torch.empty(*shape[:-1], n, device="cuda", dtype=dtype)
        context.set_input_shape("x", shape)
        context.set_tensor_address("x", x.data_ptr())
        context.set_tensor_address("y", y.data_ptr())
        assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        want = ops.reference_binary_linear(
            x.cpu(), w, w_scale, bias, k, 0.1, act_scale, act_unsigned
        )
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        atol = 1e-3 * float(want.float().abs().max())
        torch.testing.assert_close(y.cpu().float(), want.float(), rtol=tol, atol=atol)


def _write_training_text(folder: Path) -> Path:
    """Six small documents: the held-out split is by document and needs at least two."""
    folder.mkdir()
    words = "the state of the union is strong and the people of this nation work hard".split()
    rng = torch.Generator().manual_seed(0)
    for doc in range(6):
        lines = [
            " ".join(words[i] for i in torch.randint(len(words), (40,), generator=rng)) + "."
            for _ in range(50)
        ]
        (folder / f"doc{doc}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_end_to_end_training_text_is_accepted_by_the_data_pipeline(tmp_path, bert_tiny_dir):
    """The text the TensorRT end-to-end test trains on passes the data pipeline (runs anywhere)."""
    from bitmaps.cli import main

    text = _write_training_text(tmp_path / "text")
    assert main(["data-stats", str(text), "--tokenizer", str(bert_tiny_dir), "--no-cache"]) == 0


@pytest.mark.tensorrt
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs TensorRT on an NVIDIA GPU")
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT (python bindings)")
def test_exported_bert_tiny_student_fp16_engine_matches_pytorch(trt_with_plugin, tmp_path):
    """CLI end to end: train (2 steps) → export --dtype fp16 → build-engine --fp16 → run.

    Tolerance: the engine and PyTorch (both FP16 on the GPU) may binarize an activation that sits
    within rounding of the threshold differently, so logits are compared by their error scaled to
    the logits' range (<= 0.05) and by top-1 agreement (>= 0.95), not elementwise.
    """
    from bitmaps.cli import main
    from bitmaps.runtime.tensorrt import TensorRTEngine
    from bitmaps.train.models import load_model_from_checkpoint

    text = _write_training_text(tmp_path / "text")
    common = [
        "--data",
        str(text),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--save-every",
        "0",
    ]
    assert (
        main(["train", "--teacher", "bert-tiny", "-o", str(tmp_path / "teacher.pt"), *common]) == 0
    )
    student = tmp_path / "student.pt"
    assert (
        main(
            [
                "train",
                "--stage",
                "student",
                "--teacher",
                str(tmp_path / "teacher.pt"),
                "-o",
                str(student),
                *common,
            ]
        )
        == 0
    )
    onnx_path = tmp_path / "student.onnx"
    assert main(["export", str(student), str(onnx_path), "--dtype", "fp16"]) == 0
    engine_path = tmp_path / "student.engine"
    assert (
        main(
            [
                "build-engine",
                str(onnx_path),
                "-o",
                str(engine_path),
                "--fp16",
                "--max-shape",
                "8x128",
            ]
        )
        == 0
    )

    engine = TensorRTEngine(engine_path)
    loaded = load_model_from_checkpoint(student)
    model = loaded.model.cuda().half().eval()
    ids = torch.randint(1000, 2000, (2, 64), device="cuda")
    mask = torch.ones_like(ids)
    out = engine.run({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.float()
    got = out[engine.outputs[0]].float()
    scaled = float((got - want).abs().max() / want.abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert scaled <= 0.05, scaled
    assert agree >= 0.95, agree

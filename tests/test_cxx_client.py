"""The C++ client (csrc/onnxruntime/example/run_model.cpp): an exported student run through ONNX
Runtime's C++ API, with libbitmaps_ort.so and without it (the model-local functions), against
bitmaps' PyTorch output. Three runtimes:

- this machine's onnxruntime wheel (its ``libonnxruntime.so``);
- onnxruntime 1.19.2 and 1.21.1 from PyPI (x86-64): runtimes older than 1.22, which refused every
  op of the library until stop 36 (an output of "any type" with several inputs of any type;
  ort_common.h);
- under qemu-aarch64, the client and the library cross-built (the Arm deployment): Debian's ONNX
  Runtime 1.21 for arm64 (-cpu max: the NEON path with UDOT and the SDOT int8 attention kernel)
  and the onnxruntime wheel for aarch64 of this machine's version (cortex-a53, an Armv8.0 core:
  the CNT path; and -cpu max), in Debian's arm64 sysroot.

The older runtimes come from PyPI and Debian's archive into the bitmaps cache on first use
(csrc/onnxruntime/build.py --runtime); a test whose runtime cannot be fetched skips saying so.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import csrc_module
from test_export import small_student
from test_ort_native import CLIENT

import bitmaps
from bitmaps.core.config import ExportConfig
from bitmaps.export.pipeline import export_verified, oldest_ir_version, write_onnx
from bitmaps.train.attention import attention_precision

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "onnxruntime" / "example" / "run_model.cpp"
AARCH64_CXX = "aarch64-linux-gnu-g++"
build = csrc_module("onnxruntime/build")

# name -> export settings. fp32 embeddings or int8 ones: the int4 lookups of the onnxruntime
# target are com.microsoft.GatherBlockQuantized on uint8, which ONNX Runtime runs from 1.22 on.
MODELS = {
    "portable": ExportConfig(),
    "portable-fp16": ExportConfig(dtype="fp16"),
    "onnxruntime-int8": ExportConfig(target="onnxruntime", attention="int8", embeddings="int8"),
    "onnxruntime-int4": ExportConfig(target="onnxruntime", embeddings="int4"),
}
BATCH, SEQ = 2, 11


@pytest.fixture(scope="module")
def headers() -> Path:
    try:
        return build.find_headers(fetch=False)
    except build.BuildError as exc:
        pytest.skip(f"needs ONNX Runtime's C/C++ headers (make setup fetches them): {exc}")


def compile_client(cxx: str, headers: Path, out: Path) -> Path:
    if shutil.which(cxx) is None:
        pytest.skip(f"needs {cxx} to build the C++ client")
    proc = subprocess.run(
        [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{headers}", str(SOURCE),
         "-ldl", "-o", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def client(headers, tmp_path_factory) -> Path:
    return compile_client("g++", headers, tmp_path_factory.mktemp("client") / "run_model")


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """name -> (file, ids, PyTorch's logits for them)."""
    folder = tmp_path_factory.mktemp("students")
    ids = torch.randint(0, 300, (BATCH, SEQ), generator=torch.Generator().manual_seed(5))
    out = {}
    for name, cfg in MODELS.items():
        result = export_verified(small_student(), cfg, binary=True)
        path = folder / f"{name}.onnx"
        write_onnx(result.model, path)
        with torch.no_grad(), attention_precision(cfg.attention):
            expected = result.wrapper(ids, torch.ones_like(ids)).float().numpy()
        out[name] = (path, ids.numpy().astype(np.int64), expected)
    return out


def run_client(
    command: list[str], model: Path, ids: np.ndarray, out: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    ids_file = out.with_suffix(".ids")
    ids.tofile(ids_file)
    return subprocess.run(
        [*command, "--model", str(model), "--ids", str(ids_file), "--batch", str(BATCH),
         "--seq", str(SEQ), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def assert_close(y: np.ndarray, expected: np.ndarray, name: str, what: str) -> None:
    """Within the export's own tolerance (ExportConfig.DEFAULT_TOLERANCE of the file's dtype),
    relative to the logits' scale."""
    tolerance = ExportConfig.DEFAULT_TOLERANCE[MODELS[name].dtype]
    assert np.abs(y - expected).max() <= tolerance * np.abs(expected).max(), what


def check_run(
    proc: subprocess.CompletedProcess, out: Path, expected: np.ndarray, name: str, what: str
) -> None:
    assert proc.returncode == 0, f"{what}: {proc.stderr[-2000:]}"
    assert '"shape": [2, 11, 300]' in proc.stdout, proc.stdout
    assert_close(np.fromfile(out, dtype=np.float32).reshape(expected.shape), expected, name, what)


def wheel_runtime() -> Path:
    capi = Path(ort.__file__).parent / "capi"
    found = sorted(capi.glob("libonnxruntime.so*"))
    if not found:
        pytest.skip(f"needs an onnxruntime wheel that ships libonnxruntime.so ({capi})")
    return found[0]


def test_client_with_this_machines_onnxruntime(client, students, tmp_path):
    runtime = wheel_runtime()
    for name, (model, ids, expected) in students.items():
        for lib in ([], ["--ops", bitmaps.get_library_path()]):
            out = tmp_path / f"{name}-{len(lib)}.bin"
            proc = run_client([str(client), "--ort", str(runtime), *lib], model, ids, out)
            check_run(proc, out, expected, name, f"{name}, library={bool(lib)}, {ort.__version__}")


# Older runtimes from PyPI: the oldest wheel that ships libonnxruntime.so, and the last release
# before 1.22 dropped the "one dynamic typed input" rule.
OLD_RUNTIMES = ("1.19.2", "1.21.1")


@pytest.mark.parametrize("version", OLD_RUNTIMES)
def test_client_with_an_older_onnxruntime(client, students, tmp_path, version):
    if platform.machine() != "x86_64":
        pytest.skip(f"the onnxruntime {version} wheel is fetched for x86-64 hosts")
    try:
        runtime = build.pypi_runtime(version)
    except build.BuildError as exc:
        pytest.skip(f"needs onnxruntime {version} from PyPI: {exc}")
    for name, (model, ids, expected) in students.items():
        if name == "onnxruntime-int4":
            continue  # GatherBlockQuantized on uint8: ONNX Runtime 1.22 and later
        for lib in ([], ["--ops", bitmaps.get_library_path()]):
            out = tmp_path / f"{name}-{len(lib)}.bin"
            proc = run_client([str(client), "--ort", str(runtime), *lib], model, ids, out)
            check_run(proc, out, expected, name, f"{name}, library={bool(lib)}, {version}")


def test_client_errors_are_one_line_and_exit_2(client, students, tmp_path):
    runtime = str(wheel_runtime())
    model, ids, _ = students["portable"]
    cases = [
        ([str(client), "--ort", str(tmp_path / "missing.so")], model, "cannot load ONNX Runtime"),
        ([str(client), "--ort", bitmaps.get_library_path()], model, "is not ONNX Runtime"),
        ([str(client), "--ort", runtime], tmp_path / "missing.onnx", "missing.onnx"),
        ([str(client), "--ort", runtime, "--ops", str(tmp_path / "no.so")], model, "no.so"),
    ]
    for command, path, needle in cases:
        out = tmp_path / "y.bin"
        proc = run_client(command, path, ids, out)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert not out.exists() and not out.with_name("y.bin.partial").exists()
    proc = subprocess.run([str(client), "--ort", runtime, "--batch", "0"], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2 and "--batch must be a positive integer" in proc.stderr


@pytest.fixture(scope="module")
def aarch64(headers, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(Debian's arm64 sysroot, the client, libbitmaps_ort.so), both cross-built for aarch64."""
    for tool in (AARCH64_CXX, "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (make arm-tools installs it)")
    try:
        runtime = build.debian_runtime("arm64")
    except build.BuildError as exc:
        pytest.skip(f"needs Debian's ONNX Runtime for arm64: {exc}")
    folder = tmp_path_factory.mktemp("aarch64")
    client = compile_client(AARCH64_CXX, headers, folder / "run_model")
    library = folder / "libbitmaps_ort.so"
    proc = subprocess.run(
        [shutil.which("python3") or "python3", str(ROOT / "csrc" / "onnxruntime" / "build.py"),
         "--out", str(library)],
        capture_output=True, text=True, env={**os.environ, "CXX": AARCH64_CXX},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return runtime.parents[3], client, library


def run_aarch64(aarch64, students, tmp_path, runtime: Path, runs) -> None:
    """Each (cpu, model, library?, environment) of `runs` under qemu-aarch64 in the sysroot."""
    sysroot, client, library = aarch64
    for cpu, name, with_library, env in runs:
        model, ids, expected = students[name]
        qemu = ["qemu-aarch64", "-cpu", cpu, "-L", str(sysroot), str(client), "--ort", str(runtime)]
        lib = ["--ops", str(library)] if with_library else []
        out = tmp_path / f"{name}-{cpu}-{len(lib)}-{len(env)}.bin"
        proc = run_client([*qemu, *lib], model, ids, out, env={**os.environ, **env})
        what = f"{name}, {cpu}, library={with_library}, {env or ''}, aarch64 ({runtime.name})"
        check_run(proc, out, expected, name, what)


@pytest.mark.slow
def test_client_on_aarch64_with_debian_onnxruntime(aarch64, students, tmp_path):
    """Debian's ONNX Runtime 1.21 (its own build needs Armv8.2: it dies with SIGILL on
    cortex-a53 and cortex-a72 with or without the library), on `-cpu max`. Two runs: under qemu
    on a Zen 1 EPYC each of Debian's runs took 9-19 s, about twice the wheel's on the same model
    (5-9 s), so the other aarch64 runs (the scalar path, no library) are the wheel's."""
    sysroot = aarch64[0]
    runtime = sysroot / "usr" / "lib" / "aarch64-linux-gnu" / "libonnxruntime.so.1.21"
    run_aarch64(aarch64, students, tmp_path, runtime, [
        ("max", "onnxruntime-int8", True, {}),  # the NEON path: UDOT GEMM, SDOT int8 attention
        ("max", "portable-fp16", True, {}),  # float16 X and Y (the op's float16 copy on 1.21)
    ])  # fmt: skip


@pytest.mark.slow
def test_client_on_aarch64_with_the_onnxruntime_wheel(aarch64, students, tmp_path):
    """The onnxruntime wheel for aarch64 of this machine's version (int4 embeddings too), on an
    Armv8.0 core (cortex-a53: the CNT GEMM, the portable int8 attention) and on `-cpu max` (the
    UDOT GEMM; the scalar path forced; the model-local functions, no library)."""
    try:
        runtime = build.pypi_runtime(ort.__version__, "aarch64")
    except build.BuildError as exc:
        pytest.skip(f"needs the onnxruntime {ort.__version__} wheel for aarch64: {exc}")
    run_aarch64(aarch64, students, tmp_path, runtime, [
        ("cortex-a53", "onnxruntime-int4", True, {}),
        ("cortex-a53", "onnxruntime-int8", True, {}),
        ("cortex-a53", "portable-fp16", True, {}),
        ("max", "onnxruntime-int4", True, {}),
        ("max", "portable", True, {}),
        ("max", "onnxruntime-int8", True, {"BITMAPS_CPU_PATH": "scalar"}),
        ("max", "portable", False, {}),  # the model-local functions
    ])  # fmt: skip


def test_runtime_fetch_bad_input_is_one_line_and_exit_2(capsys):
    for argument in ("bogus", "debian-sparc", "pypi-"):
        assert build.main(["--runtime", argument]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bitmaps ort: "), err


def test_exports_use_the_oldest_ir_version_of_their_opset(students):
    for model, _, _ in students.values():
        assert onnx.load(str(model), load_external_data=False).ir_version == 9  # opset 20
    proto = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], []),
        opset_imports=[onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("bitmaps", 1)],
    )
    assert oldest_ir_version(proto) == 10


@pytest.mark.slow
def test_onnxruntime_1_17_from_python(students, tmp_path):
    """The oldest runtime the library asks for (C API 17): onnxruntime 1.17.3 in a fresh venv
    (its wheel ships no libonnxruntime.so for the C++ client), with the library and without."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "onnxruntime==1.17.3", "numpy<2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0:
        last = (pip.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"needs pip to install onnxruntime 1.17.3 into a fresh venv: {last}")
    version = subprocess.run(
        [python, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert version.stdout.strip() == "1.17.3", version.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A float16 file with the library needs 1.19 or later: 1.17 schemas an op by its first
    # registration (the float32 copy, ort_common.h) instead of merging the copies' types.
    runs = [("portable", True), ("portable", False), ("onnxruntime-int8", True),
            ("onnxruntime-int8", False), ("portable-fp16", False)]  # fmt: skip
    for name, with_library in runs:
        model, ids, expected = students[name]
        lib = [bitmaps.get_library_path()] if with_library else []
        out = tmp_path / f"{name}-{len(lib)}.npy"
        np.save(str(out) + ".ids.npy", ids)
        proc = subprocess.run(
            [python, "-c", CLIENT, str(model), str(out), *lib],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert_close(np.load(out).astype(np.float32), expected, name, f"{name}, {lib}, 1.17.3")

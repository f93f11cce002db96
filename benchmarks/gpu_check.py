"""`make gpu-check`: everything GPU-side of bitmaps in one command, with a report.

On a machine with an NVIDIA GPU and a CUDA build of torch (the python that runs this; no venv is
made and nothing is installed), in this order, each stage with a time limit:

  env        GPU, driver, torch, toolkit (CUDA_HOME found as setup.py finds it, wrappers included)
  build      bitmaps._C with CUDA for this GPU (setup.py, BITMAPS_REQUIRE_CUDA=1: a failed CUDA
             build fails loudly), then checked: CUDA kernels registered for every op
  pytest     pytest -m gpu on tests/test_cuda_ops.py and tests/test_cuda_cases.py; failures,
             errors and skips that this GPU does not explain all fail the stage
  sanitizer  compute-sanitizer memcheck, racecheck, synccheck on small launches of every path
  bench      benchmarks/bench_kernels.py --device cuda (auto path, then mma, mma with the
             one-at-a-time epilogue and popc forced): vs cuBLAS FP16, the memory-bound ceiling per shape, the
             kernel that ran; xnor_gemm 8192^3 binary TOPS per path; bench_cuda_parts.py (pack,
             GEMM, epilogue): as built, with the single epilogue, with the per-word pack, with
             each mma candidate (16-byte copies, ldmatrix fragments)
  peak       benchmarks/bench_cuda_peak.py: mma.sync b1 / s8 / f16 ceilings (register-only loops),
             cuBLAS FP16 and xnor_gemm at 8192^3 against them
  bert       benchmarks/bench_bert_cuda.py: binary BERT-base vs FP16, CUDA graphs, batch 1/8/32;
             the CUDA kernels' shares; then again with the forms the defaults replaced (A/B):
             BITMAPS_CUDA_EPILOGUE=single and BITMAPS_CUDA_PACK=word; and with the mma path's
             candidates on: BITMAPS_CUDA_COPY=wide and BITMAPS_CUDA_FRAGMENTS=ldmatrix (bert-feed)
  sass       b1 tensor-core instructions in the built bitmaps._C (cuobjdump)
  tensorrt   where `import tensorrt` works: make plugin, pytest -m tensorrt
  errors     bad input to the CPU and CUDA ops, one process per case: each must raise, never crash;
             a crash gets its native backtrace and the toolchain in errors.log, and where the
             build's compiler is not /usr/bin/g++, a rebuild with it and the cases again

Writes runs/gpu-check/report.md, summary.json, one log per stage and the benchmarks' .json (for
benchmarks/results/); with $GPU_CHECK_OUT set, copies report.md, summary.json and gpu-check.tgz
(everything else) there. Exit 0 when no stage failed, 1 otherwise, 2 (one line) when there is
no GPU to check. Optional helpers found in build/gpu-pydeps (``make gpu-check-deps`` puts pytest
and ninja there, for GPU machines without them or without network) are used when present.
Knobs: GPU_CHECK_BUDGET_S (420: optional stages stop once the run has used this long).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "gpu-check"
PYDEPS = ROOT / "build" / "gpu-pydeps"
START = time.monotonic()
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET_S", "420"))
PY = sys.executable
RESULTS: list[dict] = []


def elapsed() -> float:
    return time.monotonic() - START


def record(stage: str, status: str, note: str) -> None:
    RESULTS.append({"stage": stage, "status": status, "note": note, "t_s": round(elapsed())})
    print(f"== [{stage}] {status} {note} (t={elapsed():.0f} s)", flush=True)


def run(stage: str, cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run cmd, log to OUT/<stage>.log; (exit code, output). 124 on timeout."""
    log = OUT / f"{stage}.log"
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout
        )
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        rc, text = 124, (out.decode(errors="replace") if isinstance(out, bytes) else out)
        text += f"\n[timed out after {timeout:.0f} s]\n"
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{text}\n[exit {rc}]\n")
    return rc, text


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# --------------------------------------------------------------------------- env


def no_gpu(reason: str) -> None:
    print(f"gpu-check: no GPU to check: {reason}")
    sys.exit(2)


def check_env() -> dict:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        no_gpu("nvidia-smi not found (run this on a machine with an NVIDIA GPU and driver)")
    if subprocess.run([smi, "-L"], capture_output=True).returncode != 0:
        no_gpu("nvidia-smi -L fails (no NVIDIA GPU or driver)")
    probe = (
        "import json, torch\n"
        "ok = torch.cuda.is_available()\n"
        "p = torch.cuda.get_device_properties(0) if ok else None\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'ok': ok,"
        " 'name': p.name if ok else None, 'cc': [p.major, p.minor] if ok else None,"
        " 'sms': p.multi_processor_count if ok else None,"
        " 'mem_gib': round(p.total_memory / 2**30) if ok else None}))\n"
    )
    proc = subprocess.run([PY, "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        no_gpu(f"torch is not importable with {PY} ({tail(proc.stderr, 1)})")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["cuda"] is None:
        no_gpu(f"torch {info['torch']} ({PY}) is a CPU-only build; install a CUDA build of torch")
    if not info["ok"]:
        no_gpu(f"torch {info['torch']} with CUDA {info['cuda']} sees no GPU")
    sys.path.insert(0, str(ROOT / "csrc"))
    import cuda_build  # csrc/cuda_build.py: the toolkit as setup.py finds it

    info["cuda_home"] = cuda_build.find_cuda_home(os.environ)
    smi_q = "name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit"
    info["nvidia_smi"] = subprocess.run(
        [smi, f"--query-gpu={smi_q}", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout.strip()
    return info


# --------------------------------------------------------------------------- stages


def stage_build(info: dict) -> bool:
    for so in (ROOT / "bitmaps").glob("_C*.so"):
        so.unlink()  # a stale CPU-only build must not stand in for the CUDA one
    major, minor = info["cc"]
    arch = "9.0a" if (major, minor) == (9, 0) else f"{major}.{minor}"
    env = {**ENV, "BITMAPS_REQUIRE_CUDA": "1", "BITMAPS_SKIP_ORT": "1",
           "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count() or 8)}  # fmt: skip
    rc, text = run("build", [PY, "setup.py", "build_ext", "--inplace"], 400, env)
    if rc != 0:
        record("build", "FAIL", f"setup.py exit {rc}: {tail(text, 1)[:300]}")
        return False
    verify = (
        "import torch\nfrom bitmaps.core import ops\nfrom bitmaps import _C\n"
        "assert _C.with_cuda, 'bitmaps._C built without CUDA'\n"
        "for op in ('pack_signs', 'xnor_gemm', 'binary_linear'):\n"
        "    assert torch._C._dispatch_has_kernel_for_dispatch_key(f'bitmaps::{op}', 'CUDA'), op\n"
        "print(ops.native_status())\n"
    )
    rc, text = run("build", [PY, "-c", verify], 120)
    ok = rc == 0
    record("build", "PASS" if ok else "FAIL", f"arch {arch}: {tail(text, 1)[:200]}")
    return ok


def allowed_skips(info: dict) -> list[str]:
    """Skips this GPU explains: paths it lacks, and 'refused' tests for paths it has."""
    major, minor = info["cc"]
    allowed = ["test_unavailable_path_is_refused"]
    if (major, minor) != (9, 0):
        allowed.append("wgmma")
    if major not in (8, 9):
        allowed.append("mma")
    if info["mem_gib"] < 24:
        allowed.append("test_outputs_over_2_31_elements")
    return allowed


def last_started_test(text: str) -> str | None:
    """The node id of the last test that pytest -v started in ``text`` (the one a crash killed)."""
    started = re.findall(r"^(tests/\S+::\S+) ", text, re.M)
    return started[-1] if started else None


def stage_pytest(info: dict) -> None:
    xml = OUT / "pytest-gpu.xml"
    files = ["tests/test_cuda_ops.py", "tests/test_cuda_cases.py"]
    cmd = [PY, "-m", "pytest", "-m", "gpu", "-v", "-rs", "-p", "no:cacheprovider"]
    if subprocess.run([PY, "-c", "import pytest"], env=ENV, capture_output=True).returncode:
        record("pytest", "FAIL", f"pytest is not importable with {PY}: run `make gpu-check-deps` on "
               "a machine with network and bring build/gpu-pydeps along")  # fmt: skip
        return
    rc, text = run("pytest", [*cmd, f"--junitxml={xml}", *files], 330)
    if not xml.is_file():
        # a crash (segfault) takes the whole run down: name the test that was running, then run
        # the rest without it so that one crash does not hide every other result
        crashed = last_started_test(text)
        record("pytest", "FAIL", f"pytest died (exit {rc}) in {crashed}: {tail(text, 1)[:160]}")
        if crashed is None:
            return
        rc, text = run("pytest", [*cmd, f"--junitxml={xml}", "--deselect", crashed, *files], 330)
        if not xml.is_file():
            record("pytest", "FAIL", f"pytest died again (exit {rc}): {tail(text, 1)[:160]}")
            return
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    unexpected = []
    allowed = allowed_skips(info)
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        name = f"{case.get('classname')}::{case.get('name')}"
        kind = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        counts[{"failure": "failed"}.get(kind, kind)] += 1
        if kind == "skipped" and not any(a in name for a in allowed):
            unexpected.append(f"{name}: {case.find('skipped').get('message', '')[:120]}")
    note = " ".join(f"{k}={v}" for k, v in counts.items()) + f" unexpected_skips={len(unexpected)}"
    with (OUT / "pytest.log").open("a") as fh:
        fh.writelines(f"unexpected skip: {u}\n" for u in unexpected)
    bad = counts["failed"] or counts["error"] or unexpected or not counts["passed"]
    record("pytest", "FAIL" if bad else "PASS", note)


SANITIZE_CASE = """
import json, os, torch
from bitmaps.core import ops
torch.manual_seed(0)
def packed(r, k): return ops.reference_pack_signs(torch.randn(r, k, device="cuda"))
for path, new in [(p, n) for p in os.environ["GPU_CHECK_PATHS"].split(",") for n in (0, 1)]:
    os.environ["BITMAPS_CUDA_GEMM_PATH"] = path
    os.environ["BITMAPS_CUDA_EPILOGUE"] = "" if new else "single"  # the mma path's 1-wide stores
    os.environ["BITMAPS_CUDA_PACK"] = "" if new else "word"  # the pack's 2- or 4-byte loads
    for key, value in json.loads(os.environ["GPU_CHECK_FEED"]).items():  # the mma candidates
        os.environ[key] = value if new else ""
    for m, n, k in ((65, 129, 300), (1, 1, 1), (130, 77, 33), (200, 136, 1000), (33, 40, 480)):
        ops.xnor_gemm(packed(m, k), packed(n, k), k)
    w, s, b = packed(77, 300), torch.rand(77, device="cuda"), torch.randn(77, device="cuda")
    x = torch.randn(2, 33, 300, device="cuda")
    for u in (0, 1):
        ops.binary_linear(x.half(), w, s, b, 300, 0.1, 0.0, u)
        ops.binary_linear(x, w, s, None, 300, 0.0, 0.5, u)
    torch.cuda.synchronize()
ops.pack_signs(torch.randn(3, 1001, device="cuda", dtype=torch.bfloat16))
torch.cuda.synchronize()
print("sanitize case done")
"""


def stage_sanitizer(info: dict, paths: str) -> None:
    home = info.get("cuda_home") or ""
    san = shutil.which("compute-sanitizer") or next(
        (str(p) for p in (Path(home) / "bin" / "compute-sanitizer",) if p.is_file()), None
    )
    if san is None:
        record("sanitizer", "SKIP", "compute-sanitizer not found (CUDA toolkit component)")
        return
    failed, skipped = [], []
    env = {**ENV, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "GPU_CHECK_PATHS": paths}
    for tool in ("memcheck", "racecheck", "synccheck"):
        if elapsed() > BUDGET:
            skipped.append(tool)
            continue
        cmd = [san, "--tool", tool, "--error-exitcode", "99", PY, "-c", SANITIZE_CASE]
        rc, text = run("sanitizer", cmd, 150, env)
        if rc != 0 or "sanitize case done" not in text:
            failed.append(f"{tool}(exit {rc})")
    note = "clean on " + paths if not failed else "failed: " + " ".join(failed)
    record(
        "sanitizer",
        "FAIL" if failed else "PASS",
        note + (f"; not run: {skipped}" if skipped else ""),
    )


def available_paths() -> str:
    code = (
        "import os, torch\nfrom bitmaps.core import ops\nok = []\n"
        "a = ops.reference_pack_signs(torch.randn(64, 1000, device='cuda'))\n"
        "for p in ('popc', 'mma', 'wgmma'):\n"
        "    os.environ['BITMAPS_CUDA_GEMM_PATH'] = p\n"
        "    try: ops.xnor_gemm(a, a, 1000); ok.append(p)\n"
        "    except RuntimeError: pass\n"
        "print(','.join(ok))\n"
    )
    rc, text = run("paths", [PY, "-c", code], 120)
    return text.strip().splitlines()[-1] if rc == 0 else "popc"


TOPS_CASE = """
import json, os, torch
from bitmaps.core import ops
n = 8192
a = ops.reference_pack_signs(torch.randn(n, n, device="cuda"))
runs = [(p, p, {}) for p in os.environ["GPU_CHECK_PATHS"].split(",")]
feed = json.loads(os.environ["GPU_CHECK_FEED"])
if "mma" in os.environ["GPU_CHECK_PATHS"].split(","):  # the mma path's candidates, both on
    runs.append(("+".join(["mma", *feed.values()]), "mma", feed))
for label, path, extra in runs:
    os.environ["BITMAPS_CUDA_GEMM_PATH"] = path
    os.environ.update(extra)
    for _ in range(2): ops.xnor_gemm(a, a, n)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 5 if path != "popc" else 2
    start.record()
    for _ in range(reps): ops.xnor_gemm(a, a, n)
    end.record(); end.synchronize()
    s = start.elapsed_time(end) / 1e3 / reps
    print(f"xnor_gemm 8192^3 {label}: {s * 1e3:.2f} ms, {2 * n**3 / s / 1e12:.0f} binary TOPS")
    for key in extra: os.environ.pop(key)
"""


SINGLE = {"BITMAPS_CUDA_EPILOGUE": "single"}
WORD = {"BITMAPS_CUDA_PACK": "word"}
# the mma path's opt-in candidates (each the default only once this measures it faster)
FEED = {"BITMAPS_CUDA_COPY": "wide", "BITMAPS_CUDA_FRAGMENTS": "ldmatrix"}
PATH_RUNS = (("mma", "mma", {}), ("mma-single", "mma", SINGLE), ("popc", "popc", {}))


def stage_bench(paths: str) -> None:
    bench = [PY, "benchmarks/bench_kernels.py", "--device", "cuda", "--repeats", "7"]
    md, csv = OUT / "bench-auto.md", OUT / "bench-auto.csv"
    outs = ["--out", str(md), "--out", str(csv), "--out", str(OUT / "bench-auto.json")]
    rc, text = run("bench", [*bench, "--sample-ms", "10", *outs], 200)
    if rc != 0:
        record("bench", "FAIL", f"bench_kernels.py exit {rc}: {tail(text, 1)[:200]}")
        return
    met = [line for line in md.read_text().splitlines() if "| NO |" in line or "| yes |" in line]
    misses = sum("| NO |" in line for line in met)
    record(
        "bench",
        "PASS",
        f"auto path: {len(met) - misses}/{len(met)} speed-up targets met (bench-auto.md)",
    )
    # each path forced, and the mma path's two-at-a-time epilogue (an A/B: not the default until
    # this measures it faster)
    for name, path, extra in PATH_RUNS:
        if path not in paths.split(",") or elapsed() > BUDGET:
            continue
        env = {**ENV, "BITMAPS_CUDA_GEMM_PATH": path, **extra}
        out = OUT / f"bench-{name}.md"
        cmd = [*bench, "--sample-ms", "5", "--gpu-m", "128,8192", "--out", str(out)]
        rc, _ = run("bench", cmd, 120, env)
        record(f"bench-{name}", "PASS" if rc == 0 else "FAIL", out.name)
    parts = (
        ("parts", {}),
        ("parts-single", SINGLE),
        ("parts-word", WORD),
        *((f"parts-{value}", {key: value}) for key, value in FEED.items()),
    )
    for name, extra in parts:
        outs = ["--out", str(OUT / f"{name}.md"), "--out", str(OUT / f"{name}.json")]
        rc, _ = run("bench", [PY, "benchmarks/bench_cuda_parts.py", *outs], 120, {**ENV, **extra})
        record(name, "PASS" if rc == 0 else "FAIL", f"binary_linear's parts: {name}.md")
    rc, text = run("bench", [PY, "-c", TOPS_CASE], 120, {**ENV, "GPU_CHECK_PATHS": paths})
    tops = [line for line in text.splitlines() if line.startswith("xnor_gemm 8192^3")]
    (OUT / "tops.txt").write_text("\n".join(tops) + "\n")
    record("tops", "PASS" if rc == 0 else "FAIL", "; ".join(t.split(": ", 1)[1] for t in tops))


def stage_peak() -> None:
    outs = ["--out", str(OUT / "peak.md"), "--out", str(OUT / "peak.json")]
    rc, text = run("peak", [PY, "benchmarks/bench_cuda_peak.py", *outs], 180)
    rates = re.findall(r"^\| (?:mma.sync peak|GEMM 8192\^3) \| (\w+) \| (\d+) \|", text, re.M)
    note = ", ".join(f"{kind} {tops}" for kind, tops in rates) + " TOPS (peak.md)"
    record("peak", "PASS" if rc == 0 else "FAIL", note if rc == 0 else tail(text, 1)[:200])


def stage_bert() -> None:
    outs = ["--out", str(OUT / "bert.md"), "--out", str(OUT / "bert.json")]
    cmd = [PY, "benchmarks/bench_bert_cuda.py", *outs, "--kernels", str(OUT / "bert-kernels.md")]
    rc, text = run("bert", cmd, 240)
    record("bert", "PASS" if rc == 0 else "FAIL", bert_note(rc, text))
    if elapsed() < BUDGET:
        outs = [
            "--out",
            str(OUT / "bert-single-word.md"),
            "--out",
            str(OUT / "bert-single-word.json"),
        ]
        cmd = [PY, "benchmarks/bench_bert_cuda.py", *outs]
        rc, text = run("bert", cmd, 240, {**ENV, **SINGLE, **WORD})
        record("bert-single-word", "PASS" if rc == 0 else "FAIL", bert_note(rc, text))
    if elapsed() < BUDGET:
        outs = ["--out", str(OUT / "bert-feed.md"), "--out", str(OUT / "bert-feed.json")]
        rc, text = run("bert", [PY, "benchmarks/bench_bert_cuda.py", *outs], 240, {**ENV, **FEED})
        record("bert-feed", "PASS" if rc == 0 else "FAIL", bert_note(rc, text))


def bert_note(rc: int, text: str) -> str:
    if rc != 0:
        return tail(text, 1)[:200]
    found = re.findall(r"\| encoder \| (\d+) x \d+ \|[^|]*\|[^|]*\| ([\d.]+x)", text)
    return "encoder batch/speed-up: " + " / ".join(
        f"b{batch} {speedup}" for batch, speedup in found
    )


ERROR_CASE = """
import sys, torch
from bitmaps.core import ops
case = sys.argv[1]
dev = "cpu" if case.startswith("cpu") else "cuda"
x = torch.randn(4, 100, device=dev)
w = ops.reference_pack_signs(torch.randn(33, 100, device=dev))
s, b = torch.rand(33, device=dev), torch.randn(33, device=dev)
calls = {
    "in_features": lambda: ops.binary_linear(x, w, s, b, 64, 0.0, 0.0),
    "dtype": lambda: ops.binary_linear(x.double(), w, s, b, 100, 0.0, 0.0),
    "pack_int": lambda: ops.pack_signs(torch.ones(3, 4, dtype=torch.int32, device=dev)),
    "gemm_words": lambda: ops.xnor_gemm(w, w, 200),
    "torch_view": lambda: torch.empty(3, device=dev).view(5),
}
try:
    calls[case.split("_", 1)[1]]()
    print("NO ERROR")
except RuntimeError as exc:
    print("raised:", str(exc).splitlines()[0][:160])
"""
ERROR_CASES = [f"{d}_{c}" for d in ("cpu", "cuda")
               for c in ("in_features", "dtype", "pack_int", "gemm_words", "torch_view")]  # fmt: skip

# On SIGSEGV: every native frame to stderr (Python's faulthandler shows only the Python ones).
SEGV_C = r"""
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>
static void on_segv(int sig) { void *f[128]; int n = backtrace(f, 128);
  backtrace_symbols_fd(f, n, 2); _exit(128 + sig); }
__attribute__((constructor)) static void install(void) { signal(SIGSEGV, on_segv); }
"""


def run_error_cases(tag: str) -> list[str]:
    """Each bad-input case in its own process; returns the cases that crashed instead of raising."""
    env = dict(ENV)
    so = OUT / "segv.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc and not so.is_file():  # built once per check (the cases may run twice)
        (OUT / "segv.c").write_text(SEGV_C)
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(OUT / "segv.c")])
    if so.is_file():
        env["LD_PRELOAD"] = str(so)
    crashed = []
    for case in ERROR_CASES:
        rc, text = run("errors", [PY, "-c", ERROR_CASE, case], 60, env)
        if rc != 0 or "raised:" not in text:
            crashed.append(f"{case}(exit {rc})")
    with (OUT / "errors.log").open("a") as fh:
        fh.write(f"[{tag}] crashed or did not raise: {crashed or 'none'}\n")
    return crashed


def toolchain_report() -> None:
    """What built bitmaps._C and what it loads, into errors.log (a crash's first suspects)."""
    build_log = (OUT / "build.log").read_text() if (OUT / "build.log").is_file() else ""
    cxx = re.search(r"^\[\d+/\d+\] (\S+g\+\+|\S+c\+\+) ", build_log, re.M)
    libs = [str(so) for so in (ROOT / "bitmaps").glob("_C*.so")]
    probes = [[cxx.group(1) if cxx else "c++", "--version"], ["ldd", *libs],
              [PY, "-c", "import torch; print(torch.__config__.show())"]]  # fmt: skip
    for cmd in probes:
        run("errors", cmd, 60)


def stage_errors(info: dict) -> None:
    """Bad input must raise, never crash: the CPU and CUDA ops' checks, one process per case.
    A crash gets the native backtrace and the toolchain in errors.log; where the build's C++
    compiler is not the system one, the extension is rebuilt with /usr/bin/g++ and the cases run
    again (errors-system-cxx), so that one report says whether the compiler is the cause."""
    crashed = run_error_cases("build as made")
    record("errors", "FAIL" if crashed else "PASS", f"crashed: {crashed}" if crashed else
           f"{len(ERROR_CASES)} bad-input cases raised RuntimeError")  # fmt: skip
    if not crashed:
        return
    toolchain_report()
    build_log = (OUT / "build.log").read_text()
    if "/usr/bin/g++" in build_log or not Path("/usr/bin/g++").is_file() or elapsed() > BUDGET:
        return
    for temp in (ROOT / "build").glob("temp.*"):
        shutil.rmtree(temp, ignore_errors=True)
    major, minor = info["cc"]
    env = {**ENV, "CC": "/usr/bin/gcc", "CXX": "/usr/bin/g++", "BITMAPS_REQUIRE_CUDA": "1",
           "BITMAPS_SKIP_ORT": "1", "TORCH_CUDA_ARCH_LIST": "9.0a" if (major, minor) == (9, 0)
           else f"{major}.{minor}", "MAX_JOBS": str(os.cpu_count() or 8)}  # fmt: skip
    rc, text = run("errors", [PY, "setup.py", "build_ext", "--inplace"], 300, env)
    if rc != 0:
        record(
            "errors-system-cxx", "FAIL", f"rebuild with /usr/bin/g++ failed: {tail(text, 1)[:160]}"
        )
        return
    again = run_error_cases("rebuilt with /usr/bin/g++")
    record("errors-system-cxx", "FAIL" if again else "PASS",
           f"crashed: {again}" if again else "no crash once built with /usr/bin/g++")  # fmt: skip


def stage_sass(info: dict) -> None:
    home = info.get("cuda_home") or ""
    tool = shutil.which("cuobjdump") or (str(Path(home) / "bin" / "cuobjdump") if home else None)
    sos = list((ROOT / "bitmaps").glob("_C*.so"))
    if not tool or not Path(tool).is_file() or not sos:
        record("sass", "SKIP", "cuobjdump or the built bitmaps._C not found")
        return
    rc, text = run("sass", [tool, "--dump-sass", str(sos[0])], 120)
    counts = {i: text.count(i) for i in ("BGMMA.64x128x256.AND.POPC", "BMMA.168256.AND.POPC",
                                         "BMMA.168256.XOR.POPC", "WARPGROUP.ARRIVE")}  # fmt: skip
    major, minor = info["cc"]
    want = {(9, 0): ["BGMMA.64x128x256.AND.POPC", "BMMA.168256.AND.POPC"]}.get((major, minor))
    want = want or (["BMMA.168256.XOR.POPC"] if major == 8 else [])
    ok = rc == 0 and all(counts[i] for i in want)
    record("sass", "PASS" if ok else "FAIL", ", ".join(f"{k} x{v}" for k, v in counts.items()))
    if shutil.which("make") and elapsed() < BUDGET:
        rc, text = run("sass", ["make", "-s", "cuda-check"], 240)
        record("cuda-check", "PASS" if rc == 0 else "FAIL", tail(text, 1)[:200])


def stage_tensorrt() -> None:
    rc, _ = run("tensorrt", [PY, "-c", "import tensorrt"], 60)
    if rc != 0:
        record("tensorrt", "SKIP", "TensorRT python bindings not installed here")
        return
    rc, text = run("tensorrt", ["make", "-s", "plugin"], 300)
    if rc != 0:
        record("tensorrt", "FAIL", f"make plugin: {tail(text, 1)[:200]}")
        return
    cmd = [PY, "-m", "pytest", "-m", "tensorrt", "-q", "-rs", "tests/test_tensorrt_plugin.py"]
    rc, text = run("tensorrt", cmd, 400)
    record("tensorrt", "PASS" if rc == 0 else "FAIL", tail(text, 1)[:200])


# --------------------------------------------------------------------------- report


def write_report(info: dict) -> None:
    lines = [
        f"# gpu-check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed():.0f} s)",
        "",
    ]
    lines += [f"- GPU: {info['nvidia_smi']}", f"- torch {info['torch']}, CUDA {info['cuda']}, "
              f"toolkit {info.get('cuda_home')}", f"- commit: {git_head()}", ""]  # fmt: skip
    lines += ["| stage | status | note |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['note']} |" for r in RESULTS]
    for name in (
        "bench-auto.md",
        "bench-mma.md",
        "bench-mma-single.md",
        "bench-popc.md",
        "parts.md",
        "parts-single.md",
        "parts-word.md",
        "parts-wide.md",
        "parts-ldmatrix.md",
        "tops.txt",
        "peak.md",
        "bert.md",
        "bert-single-word.md",
        "bert-feed.md",
        "bert-kernels.md",
    ):
        if (OUT / name).is_file():
            lines += ["", f"## {name}", "", (OUT / name).read_text().strip()]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")
    (OUT / "summary.json").write_text(json.dumps({"env": info, "stages": RESULTS}, indent=2))
    dest = os.environ.get("GPU_CHECK_OUT")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "summary.json"):
            shutil.copy2(OUT / name, Path(dest) / name)
        # everything else in one archive (sass.log is a full SASS dump: its counts are in the report)
        with tarfile.open(Path(dest) / "gpu-check.tgz", "w:gz") as tar:
            for f in sorted(OUT.iterdir()):
                if f.is_file() and f.name not in ("sass.log", "segv.so"):
                    tar.add(f, arcname=f.name)
    print(f"report: {OUT / 'report.md'}" + (f" (and {dest})" if dest else ""))


def git_head() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "?"


def guarded(stage: str, fn, *args) -> None:
    """A bug in one stage's bookkeeping is that stage's FAIL, not the end of the check."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported, and the next stage runs
        record(stage, "FAIL", f"gpu_check.py raised {type(exc).__name__}: {str(exc)[:160]}")


def main() -> int:
    info = check_env()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()
    record("env", "PASS", f"{info['name']} cc {info['cc'][0]}.{info['cc'][1]}, torch {info['torch']}, "
           f"CUDA {info['cuda']}, toolkit {info['cuda_home']}")  # fmt: skip
    try:
        if stage_build(info):
            paths = available_paths()
            record("paths", "PASS", paths)
            guarded("pytest", stage_pytest, info)
            guarded("sanitizer", stage_sanitizer, info, paths)
            if elapsed() < BUDGET:
                guarded("bench", stage_bench, paths)
            if elapsed() < BUDGET:
                guarded("peak", stage_peak)
            if elapsed() < BUDGET:
                guarded("bert", stage_bert)
            guarded("sass", stage_sass, info)
            if elapsed() < BUDGET:
                guarded("tensorrt", stage_tensorrt)
            guarded("errors", stage_errors, info)  # last: it may rebuild the extension
    finally:
        write_report(info)  # the report and the logs leave the machine whatever broke above
    failed = [r["stage"] for r in RESULTS if r["status"] == "FAIL"]
    print("RESULT:", "FAIL " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
ENV["GPU_CHECK_FEED"] = json.dumps(FEED)  # the mma candidates, for the python -c cases above
for var in ("BITMAPS_CUDA_GEMM_PATH", "BITMAPS_SKIP_CUDA", "BITMAPS_NO_EXT"):
    ENV.pop(var, None)
if PYDEPS.is_dir():  # pytest / ninja for GPU machines without them (make gpu-check-deps)
    ENV["PYTHONPATH"] += os.pathsep + str(PYDEPS)
    ENV["PATH"] = f"{ENV.get('PATH', '')}{os.pathsep}{PYDEPS / 'bin'}"

if __name__ == "__main__":
    sys.exit(main())

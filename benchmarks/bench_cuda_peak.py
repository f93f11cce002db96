"""The tensor-core ceilings of this GPU, beside the GEMMs measured against them in the same run.

Builds benchmarks/cuda_peak.cu with nvcc for this GPU (register-only mma.sync loops: b1 AND+popc,
b1 XOR+popc where native, s8, f16 with f32 accumulators), runs it, then times in the same process
cuBLAS FP16 (``torch.matmul``) and bitmaps' ``xnor_gemm`` on each CUDA GEMM path at 8192^3. The
table gives each rate in TOPS (2 ops per multiply-accumulate; a binary multiply-accumulate counts
as one), and the GEMMs as a fraction of the mma.sync peak of their own instruction kind: how far
the kernel is from its ceiling, and (cuBLAS FP16 against f16 mma.sync) whether Hopper's wgmma
reaches further than mma.sync at all.

    python benchmarks/bench_cuda_peak.py [--iters N] [--out FILE.json|.md|.csv ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs

from bitmaps.runtime.timing_cuda import cuda_event_timer

HERE = Path(__file__).resolve().parent
GEMM_N = 8192
KIND_OF = {"cublas_fp16": "f16", "popc": "b1_and", "mma": "b1_and", "wgmma": "b1_and"}


def nvcc() -> str | None:
    """nvcc of the CUDA toolkit as setup.py finds it (csrc/cuda_build.py), or None."""
    sys.path.insert(0, str(HERE.parent / "csrc"))
    import cuda_build

    home = cuda_build.find_cuda_home(os.environ)
    return str(Path(home) / "bin" / "nvcc") if home else None


def peaks(iters: int) -> tuple[dict, list[dict]]:
    """Build and run cuda_peak.cu for GPU 0; (its device line, one row per instruction kind)."""
    major, minor = torch.cuda.get_device_capability()
    arch = "90a" if (major, minor) == (9, 0) else f"{major}{minor}"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "cuda_peak"
        build = [nvcc(), "-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        subprocess.run([*build, "-o", str(exe), str(HERE / "cuda_peak.cu")], check=True)
        out = subprocess.run([str(exe), str(iters)], check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return lines[0], [{"what": "mma.sync peak", **line} for line in lines[1:]]


def gemm_tops(fn, ops: float, reps: int = 5) -> float:  # noqa: ANN001 - a callable
    for _ in range(2):
        fn()
    return ops / (cuda_event_timer(lambda _i: fn(), reps)(0) / 1e3) / 1e12


def gemms() -> list[dict]:
    n = GEMM_N
    ops = 2.0 * n**3
    a = torch.randn(n, n, device="cuda", dtype=torch.half)
    rows = [{"what": "GEMM 8192^3", "kind": "cublas_fp16", "tops": gemm_tops(lambda: a @ a, ops)}]
    from bitmaps.core import ops as bops  # defines bitmaps::xnor_gemm (bitmaps._C adds kernels)

    if torch._C._dispatch_has_kernel_for_dispatch_key("bitmaps::xnor_gemm", "CUDA"):
        packed = bops.reference_pack_signs(a.float())
        for path in ("popc", "mma", "wgmma"):
            os.environ["BITMAPS_CUDA_GEMM_PATH"] = path
            try:
                tops = gemm_tops(lambda: bops.xnor_gemm(packed, packed, n), ops, 5)
            except RuntimeError:
                continue  # this path is not available on this GPU
            finally:
                os.environ.pop("BITMAPS_CUDA_GEMM_PATH", None)
            rows.append({"what": "GEMM 8192^3", "kind": path, "tops": tops})
    return rows


def table(rows: list[dict]) -> str:
    peak = {r["kind"]: r["tops"] for r in rows if r["what"] == "mma.sync peak"}
    cells = []
    for r in rows:
        base = peak.get(KIND_OF.get(r["kind"], r["kind"]))
        of_peak = f"{100 * r['tops'] / base:.0f} %" if base and r["what"] != "mma.sync peak" else ""
        vs_f16 = f"{r['tops'] / peak['f16']:.2f}x" if peak.get("f16") else ""
        cells.append([r["what"], r["kind"], f"{r['tops']:.0f}", vs_f16, of_peak])
    head = ("what", "kind", "TOPS", "vs f16 mma.sync peak", "of its kind's mma.sync peak")
    return markdown_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=20000, help="loop trips per thread (default 20000)")
    args = parse_with_outputs(p, argv)
    if not torch.cuda.is_available():
        print("bench_cuda_peak: needs a CUDA GPU visible to torch", file=sys.stderr)
        return 2
    if nvcc() is None:
        print(
            "bench_cuda_peak: needs nvcc (the CUDA toolkit) to build cuda_peak.cu", file=sys.stderr
        )
        return 2
    device, rows = peaks(args.iters)
    rows += gemms()
    text = table(rows)
    print(
        f"{device['device']} (cc {device['cc']}, {device['sms']} SMs), torch {torch.__version__}\n"
    )
    print(text)
    write_outputs(args.out, rows, run_meta(how=f"mma.sync loops, {args.iters} trips"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""setup.py's CUDA rules (csrc/cuda_build.py): when the CUDA kernels are built, where the toolkit is
(also behind an nvcc wrapper script), and that a CUDA build that was expected and failed fails the
install with one line instead of leaving a CPU-only bitmaps._C. Runs on any machine: the toolkits
here are fake folders, and the failing builds stop before any compiler runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import csrc_module

ROOT = Path(__file__).resolve().parents[1]


rules = csrc_module("cuda_build")


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _fake_toolkit(root: Path, nvcc_body: str | None = None) -> Path:
    """bin/nvcc + include/cuda_runtime_api.h; the default nvcc answers --dryrun like the real one."""
    home = root / "cuda-13.0"
    body = nvcc_body or (
        'case "$*" in *--dryrun*) echo "#$ _HERE_=$(dirname "$0")" >&2; '
        'echo "#$ TOP=$(dirname "$0")/.." >&2;; '
        '*--version*) echo "Cuda compilation tools, release 13.0, V13.0.88";; esac'
    )
    _script(home / "bin" / "nvcc", body)
    (home / "include").mkdir(parents=True)
    (home / "include" / "cuda_runtime_api.h").write_text("/* fake */\n")
    return home


# --------------------------------------------------------------------------- the plan


def test_plan_truth_table():
    home = "/opt/cuda"
    plan = rules.plan_cuda({}, None, None)
    assert (plan.build, plan.required) == (False, False) and "no CUDA" in plan.reason
    plan = rules.plan_cuda({}, "13.0", None)
    assert (plan.build, plan.required) == (False, False) and "CUDA_HOME" in plan.reason
    plan = rules.plan_cuda({}, "13.0", home)  # expected: a failure must be loud
    assert (plan.build, plan.required, plan.cuda_home) == (True, True, home)
    plan = rules.plan_cuda({"BITMAPS_SKIP_CUDA": "1"}, "13.0", home)
    assert (plan.build, plan.required) == (False, False)
    plan = rules.plan_cuda({"BITMAPS_REQUIRE_CUDA": "1"}, "13.0", home)
    assert (plan.build, plan.required) == (True, True) and "REQUIRE" in plan.reason


@pytest.mark.parametrize(
    "torch_cuda,home,missing",
    [(None, "/opt/cuda", "has no CUDA"), ("13.0", None, "no CUDA toolkit")],
)
def test_required_but_impossible_says_what_is_missing(torch_cuda, home, missing):
    with pytest.raises(rules.CudaBuildError, match=missing):
        rules.plan_cuda({"BITMAPS_REQUIRE_CUDA": "1"}, torch_cuda, home)


def test_default_arch_list_adds_orin_on_aarch64():
    assert rules.default_arch_list("x86_64") == "8.0;9.0a"
    assert "8.7" in rules.default_arch_list("aarch64").split(";")


# --------------------------------------------------------------------------- finding the toolkit


def test_cuda_home_through_a_wrapper_script(tmp_path):
    home = _fake_toolkit(tmp_path)
    wrapper = _script(tmp_path / "usr-local" / "bin" / "nvcc", f'exec "{home}/bin/nvcc" "$@"')
    found = rules.find_cuda_home({}, which=lambda _name: str(wrapper), default=str(tmp_path / "x"))
    assert found == os.path.realpath(home)
    # torch's own guess for this layout would be the wrapper's grandparent, which is no toolkit
    assert not rules.is_toolkit(str(wrapper.parent.parent))


def test_cuda_home_through_a_symlink(tmp_path):
    home = _fake_toolkit(tmp_path)
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(home / "bin" / "nvcc")
    found = rules.find_cuda_home({}, which=lambda _name: str(link), default=str(tmp_path / "x"))
    assert found == str(home)


def test_cuda_home_variable_wins_and_a_bad_one_is_ignored(tmp_path):
    home = _fake_toolkit(tmp_path)
    assert rules.find_cuda_home({"CUDA_HOME": str(home)}, which=lambda _n: None) == str(home)
    bad = {"CUDA_HOME": str(tmp_path / "nothing")}
    assert rules.find_cuda_home(bad, which=lambda _n: None, default=str(tmp_path / "x")) is None
    assert rules.find_cuda_home(bad, which=lambda _n: None, default=str(home)) == str(home)


def test_this_machines_nvcc_leads_to_a_toolkit():
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc on PATH")
    home = rules.find_cuda_home(os.environ)
    assert home is not None and rules.is_toolkit(home), home


# --------------------------------------------------------------------------- setup.py fails loudly


def _setup_py(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """setup.py build_ext into tmp_path (never into the checkout)."""
    cmd = [sys.executable, str(ROOT / "setup.py"), "-q", "build_ext"]
    cmd += ["--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BITMAPS_", "CUDA_"))}
    return subprocess.run(
        cmd, cwd=ROOT, env={**base, "BITMAPS_SKIP_ORT": "1", **env}, capture_output=True, text=True
    )


def _cpu_torch() -> bool:
    import torch

    return torch.version.cuda is None


def test_require_cuda_with_a_cpu_torch_fails_with_one_line(tmp_path):
    if not _cpu_torch():
        pytest.skip("checks a CPU-only torch; this torch has CUDA")
    proc = _setup_py(tmp_path, {"BITMAPS_REQUIRE_CUDA": "1"})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bitmaps: BITMAPS_REQUIRE_CUDA=1 but the installed torch has no CUDA")
    assert not (tmp_path / "lib").exists()


def test_expected_cuda_build_with_a_broken_nvcc_fails_the_install(tmp_path):
    """A CUDA torch (faked: torch.version.cuda set in sitecustomize) and a toolkit whose nvcc
    crashes: CUDA is expected, so the build fails with one line, not a silent CPU-only _C."""
    home = _fake_toolkit(tmp_path, 'echo "nvcc: forced failure for the test" >&2; exit 3')
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import torch\ntorch.version.cuda = '13.0'\n")
    env = {"CUDA_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = _setup_py(tmp_path, env)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert f"toolkit {home}" in proc.stderr  # the plan found the toolkit and expected CUDA
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bitmaps: building bitmaps._C with CUDA failed"), proc.stderr[-2000:]
    assert "BITMAPS_SKIP_CUDA=1" in last
    assert not list(tmp_path.glob("lib/**/_C*.so"))

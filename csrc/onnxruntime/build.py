"""Build ``libbitmaps_ort.so``, the ONNX Runtime custom-op library, from csrc/onnxruntime + csrc/kernels.

The library is compiled against ONNX Runtime's C API header alone (no libonnxruntime to link), so
one build loads into every ONNX Runtime from C API version 17 (1.17) on. The pip wheel of
onnxruntime ships no headers, and none is committed here; they are found, in this order:

1. ``$ORT_INCLUDE``: a folder holding ``onnxruntime_c_api.h`` (or its ``onnxruntime/`` subfolder);
2. an installed ``libonnxruntime-dev`` (``pkg-config --cflags libonnxruntime``);
3. the bitmaps cache (``$BITMAPS_CACHE``, else ``$XDG_CACHE_HOME/bitmaps``, else
   ``~/.cache/bitmaps``; the same root as bitmaps.data.assets), ``ort-headers/``, from an earlier
   fetch;
4. a fetch: Debian's ``libonnxruntime-dev`` (suite trixie, ONNX Runtime 1.21, about 85 KB) through
   the Debian mirror this machine's apt is configured with, by ``apt-get download`` in a private
   apt state folder (the system's apt lists and sources stay untouched; apt checks the signed
   release file and the package hash), unpacked with ``dpkg -x`` into the cache.

Standard library only: ``setup.py`` runs it during ``pip install`` / ``build_ext`` (best effort: a
failure prints one warning and bitmaps runs the model-local ONNX function instead). By hand::

    python csrc/onnxruntime/build.py [--out PATH] [--define NAME=VALUE] [--headers-only]
    python csrc/onnxruntime/build.py --kernel-objects   # csrc/kernels' objects, one path a line
    python csrc/onnxruntime/build.py --runtime debian-arm64   # an ONNX Runtime to test with:
    python csrc/onnxruntime/build.py --runtime pypi-1.21.1    # fetched into the cache, printed
    python csrc/onnxruntime/build.py --runtime pypi-1.32.0-aarch64

The last two fetch ONNX Runtime libraries that tests/test_cxx_client.py runs the C++ client
(csrc/onnxruntime/example/run_model.cpp) against: Debian trixie's for another architecture (with
the packages it needs, as a sysroot for qemu-user) and an onnxruntime wheel's (an older one, or
one for another machine: its library runs in that sysroot).

Objects are cached in ``build/ort/`` and rebuilt only when a source or header is newer. The
kernels' objects need no ONNX Runtime header and are kept apart (``build/ort/kernels-<key>/``, the
key from the compiler and flags): the torch-free kernel harness (``make kernel-harness``, natively
and with ``CXX=aarch64-linux-gnu-g++``), the C++ experiments of benchmarks/ and bitmaps._C
(setup.py) link the same objects instead of compiling them again.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADER = "onnxruntime_c_api.h"
DEB_PACKAGE = "libonnxruntime-dev"
DEB_SUITE = "trixie"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-pthread"]
WARNINGS = ["-Wall", "-Wextra"]


class BuildError(RuntimeError):
    """One line saying why the library was not built."""


def log(message: str) -> None:
    print(f"bitmaps ort: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The bitmaps cache (mirrors bitmaps.data.assets.cache_root; this file imports no bitmaps)."""
    if os.environ.get("BITMAPS_CACHE"):
        return Path(os.environ["BITMAPS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bitmaps"


# --------------------------------------------------------------------------- headers


def _header_dir(folder: Path) -> Path | None:
    for candidate in (folder, folder / "onnxruntime"):
        if (candidate / HEADER).is_file():
            return candidate
    return None


def _pkg_config_headers() -> Path | None:
    if shutil.which("pkg-config") is None:
        return None
    proc = subprocess.run(
        ["pkg-config", "--cflags-only-I", "libonnxruntime"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None
    for flag in shlex.split(proc.stdout):
        found = _header_dir(Path(flag[2:])) if flag.startswith("-I") else None
        if found:
            return found
    return None


def _cached_headers() -> Path | None:
    for folder in sorted(cache_root().glob("ort-headers/*/usr/include"), reverse=True):
        found = _header_dir(folder)
        if found:
            return found
    return None


def debian_mirror() -> tuple[str, str]:
    """(URI, keyring) of the first Debian archive in this machine's apt sources."""
    texts = []
    for pattern in ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*"):
        for name in sorted(glob.glob(pattern)):
            if name.endswith((".list", ".sources")) or name == "/etc/apt/sources.list":
                try:
                    texts.append(Path(name).read_text())
                except OSError:
                    continue
    for text in texts:
        # deb822 stanzas (.sources): URIs / Suites / Signed-By fields
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            for uri in fields.get("URIs", "").split():
                if _is_debian_archive(uri, fields.get("Suites", "")):
                    return uri.rstrip("/"), fields.get("Signed-By", DEFAULT_KEYRING).strip()
        # one-line format: deb [options] URI suite components
        for line in text.splitlines():
            m = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
            if m and _is_debian_archive(m.group(2), m.group(3)):
                signed = re.search(r"signed-by=(\S+)", m.group(1) or "")
                return m.group(2).rstrip("/"), signed.group(1) if signed else DEFAULT_KEYRING
    raise BuildError(
        "no Debian archive in /etc/apt/sources.list* to fetch libonnxruntime-dev from; "
        "set ORT_INCLUDE to a folder with ONNX Runtime's C API headers"
    )


def _is_debian_archive(uri: str, suites: str) -> bool:
    return "debian" in uri and "security" not in uri and "security" not in suites


class _PrivateApt:
    """apt-get / apt-cache over Debian's `suite` (for `arch`, else this machine's) in a private
    state folder under `tmp`: the system's apt lists and sources stay untouched; apt checks the
    signed release file and each package's hash."""

    def __init__(self, tmp: Path, suite: str, arch: str | None = None) -> None:
        for tool in ("apt-get", "apt-cache", "dpkg"):
            if shutil.which(tool) is None:
                raise BuildError(f"{tool} not found")
        uri, keyring = debian_mirror()
        for sub in ("state/lists/partial", "cache/archives/partial"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        sources = tmp / "sources.list"
        arch_option = f"arch={arch} " if arch else ""
        sources.write_text(f"deb [{arch_option}signed-by={keyring}] {uri} {suite} main\n")
        self.tmp = tmp
        self.options = [
            "-o", f"Dir::State={tmp / 'state'}",
            "-o", f"Dir::Cache={tmp / 'cache'}",
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "APT::Get::List-Cleanup=0",
        ]  # fmt: skip
        if arch:
            self.options += ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}"]
        if os.geteuid() == 0:  # root: apt would hand the download to _apt, who cannot write here
            self.options += ["-o", "APT::Sandbox::User=root"]
        log(f"reading Debian {suite}{f' ({arch})' if arch else ''} from {uri}")
        _run(["apt-get", "-q", *self.options, "update"], tmp)

    def depends(self, package: str) -> list[str]:
        """`package` and every package it needs, recursively (no recommends or suggests)."""
        out = _run(
            ["apt-cache", *self.options, "depends", "--recurse", "--no-recommends",
             "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
             package],
            self.tmp,
        )  # fmt: skip
        names = {ln.strip() for ln in out.splitlines() if ln and not ln.startswith(" ")}
        return sorted(n for n in names if not n.startswith("<"))  # <virtual> names: provided

    def download(self, packages: list[str], folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", "-q", *self.options, "download", *packages], folder)
        return sorted(folder.glob("*.deb"))


def fetch_headers() -> Path:
    """apt-get download libonnxruntime-dev (trixie) in a private apt state; dpkg -x into the cache."""
    log(f"fetching {DEB_PACKAGE} ({DEB_SUITE})")
    with tempfile.TemporaryDirectory(prefix="bitmaps-apt-") as tmp:
        t = Path(tmp)
        try:
            apt = _PrivateApt(t, DEB_SUITE)
        except BuildError as exc:
            raise BuildError(f"{exc}: set ORT_INCLUDE to ONNX Runtime's C API headers") from exc
        debs = [d for d in apt.download([DEB_PACKAGE], t / "download")
                if d.name.startswith(f"{DEB_PACKAGE}_")]  # fmt: skip
        if not debs:
            raise BuildError(f"apt-get download {DEB_PACKAGE} produced no .deb")
        version = debs[0].name.split("_")[1]
        dest = cache_root() / "ort-headers" / version
        staging = Path(tempfile.mkdtemp(prefix=".ort-headers-", dir=_mkdir(dest.parent)))
        _run(["dpkg", "-x", str(debs[0]), str(staging)], t)
        if _header_dir(staging / "usr" / "include") is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise BuildError(f"{debs[0].name} holds no {HEADER}")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    log(f"ONNX Runtime {version} headers in {dest}")
    return _header_dir(dest / "usr" / "include")  # type: ignore[return-value]


# --------------------------------------------------------------------------- runtimes to test with
# ONNX Runtime shared libraries the C++ client (csrc/onnxruntime/example/run_model.cpp) is tested
# against, besides the one in this machine's onnxruntime wheel: an older wheel's, and Debian's
# build for another architecture (run under qemu-user). Fetched into the cache on first use.

RUNTIME_PACKAGE = "libonnxruntime1.21"  # trixie's ONNX Runtime: 1.21
DEBIAN_TRIPLETS = {"arm64": "aarch64-linux-gnu", "amd64": "x86_64-linux-gnu"}


def debian_runtime(arch: str, fetch: bool = True) -> Path:
    """Debian's ONNX Runtime library for `arch` (trixie's libonnxruntime1.21 and the packages it
    needs, as apt resolves them for that architecture) unpacked into a sysroot in the cache
    (``ort-runtime/debian-trixie-<arch>``, with ``lib`` -> ``usr/lib`` as Debian's merged /usr
    has it: qemu-user's ``-L``). Returns the library's path inside the sysroot."""
    if arch not in DEBIAN_TRIPLETS:
        raise BuildError(f"architecture must be one of {', '.join(DEBIAN_TRIPLETS)}, got {arch!r}")
    sysroot = cache_root() / "ort-runtime" / f"debian-{DEB_SUITE}-{arch}"
    lib = sysroot / "usr" / "lib" / DEBIAN_TRIPLETS[arch] / "libonnxruntime.so.1.21"
    if lib.exists():
        _emulated_cpuinfo(sysroot, arch)
        return lib
    if not fetch:
        raise BuildError(f"no Debian ONNX Runtime for {arch} in {sysroot.parent}")
    log(f"fetching {RUNTIME_PACKAGE} ({DEB_SUITE}, {arch}) and what it needs")
    with tempfile.TemporaryDirectory(prefix="bitmaps-apt-") as tmp:
        t = Path(tmp)
        apt = _PrivateApt(t, DEB_SUITE, arch)
        debs = apt.download(apt.depends(RUNTIME_PACKAGE), t / "download")
        staging = Path(tempfile.mkdtemp(prefix=".debian-", dir=_mkdir(sysroot.parent)))
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(staging)], t)
        if not (staging / "lib").exists():  # merged /usr: packages ship nothing under /lib
            (staging / "lib").symlink_to("usr/lib")
        shutil.rmtree(sysroot, ignore_errors=True)
        staging.rename(sysroot)
    if not lib.exists():
        raise BuildError(f"{RUNTIME_PACKAGE} for {arch} holds no {lib.name}")
    _emulated_cpuinfo(sysroot, arch)
    log(f"ONNX Runtime for {arch} in {sysroot}")
    return lib


# /proc/cpuinfo of two Armv8.0 cores (Cortex-A53: fp, asimd). Under qemu-user a program reads the
# host's /proc/cpuinfo unless the sysroot (-L) has one; the cpuinfo library inside the onnxruntime
# wheels finds no Arm core in an x86 host's and crashes, so the arm64 sysroot carries this one.
# Only ONNX Runtime's own thread and kernel choices read it; bitmaps reads HWCAP (the CPU qemu
# emulates), so `-cpu max` still runs the dot-product paths.
ARM64_CPUINFO = "".join(
    f"processor\t: {i}\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n"
    for i in range(2)
)


def _emulated_cpuinfo(sysroot: Path, arch: str) -> None:
    if arch != "arm64":
        return
    cpuinfo = _mkdir(sysroot / "proc") / "cpuinfo"
    if not cpuinfo.is_file() or cpuinfo.read_text() != ARM64_CPUINFO:
        cpuinfo.write_text(ARM64_CPUINFO)


# manylinux tags a wheel for another machine may carry (pip download --platform)
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux2014", "manylinux_2_17")


def pypi_runtime(version: str, machine: str | None = None, fetch: bool = True) -> Path:
    """``libonnxruntime.so`` of the onnxruntime wheel `version` for `machine` (default: this one;
    e.g. ``aarch64``) and this Python (pip download, nothing installed; the wheels ship it from
    1.19 on), kept in the cache (``ort-runtime/pypi-<version>-<machine>``). Returns its path."""
    machine = machine or platform.machine()
    folder = cache_root() / "ort-runtime" / f"pypi-{version}-{machine}"
    found = sorted(folder.glob("libonnxruntime.so.*"))
    if found:
        return found[0]
    if not fetch:
        raise BuildError(f"no onnxruntime {version} library in {folder}")
    log(f"fetching onnxruntime {version} for {machine} from PyPI")
    target_options: list[str] = []
    if machine != platform.machine():
        target_options = ["--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}"]
        for tag in MANYLINUX:
            target_options += ["--platform", f"{tag}_{machine}"]
    with tempfile.TemporaryDirectory(prefix="bitmaps-wheel-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", *target_options, f"onnxruntime=={version}", "-d", tmp],
            capture_output=True, text=True,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob("onnxruntime-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise BuildError(f"pip download onnxruntime=={version} ({machine}) failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [n for n in wheel.namelist()
                       if re.fullmatch(r"onnxruntime/capi/libonnxruntime\.so[.0-9]*", n)]  # fmt: skip
            if not members:
                raise BuildError(f"{wheels[0].name} ships no libonnxruntime.so")
            staging = Path(tempfile.mkdtemp(prefix=".pypi-", dir=_mkdir(folder.parent)))
            target = staging / Path(members[0]).name
            target.write_bytes(wheel.read(members[0]))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder / target.name


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "error", "dpkg"))] or lines[-1:]
        raise BuildError(f"{cmd[0]} {cmd[-1]} failed: {errors[0] if errors else proc.returncode}")
    return proc.stdout


def find_headers(fetch: bool = True) -> Path:
    """The folder holding onnxruntime_c_api.h (see the module docstring for the order)."""
    env = os.environ.get("ORT_INCLUDE")
    if env:
        found = _header_dir(Path(env))
        if found is None:
            raise BuildError(f"ORT_INCLUDE={env} holds no {HEADER}")
        return found
    found = _pkg_config_headers() or _cached_headers()
    if found:
        return found
    if not fetch:
        raise BuildError(f"no ONNX Runtime headers (ORT_INCLUDE, pkg-config or {cache_root()})")
    return fetch_headers()


# --------------------------------------------------------------------------- compile


def kernel_sources() -> list[Path]:
    return sorted((ROOT / "csrc" / "kernels").glob("*.cpp"))


def adapter_sources() -> list[Path]:
    return sorted((ROOT / "csrc" / "onnxruntime").glob("*.cpp"))


def _headers_of_tree() -> list[Path]:
    return [p for d in ("kernels", "onnxruntime") for p in (ROOT / "csrc" / d).glob("*.h")]


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise BuildError("no C++ compiler (set CXX or install g++)")
    return cxx


def _objdir(prefix: str, cxx: str, flags: list[str]) -> Path:
    # The compiler by its resolved path: `c++` and `g++` are one compiler on Debian (one cache).
    found = shutil.which(cxx)
    real = os.path.realpath(found) if found else cxx
    key = hashlib.sha256(" ".join([real, *flags]).encode()).hexdigest()[:12]
    return _mkdir(ROOT / "build" / "ort" / f"{prefix}{key}")


def _compile_all(cxx: str, flags: list[str], jobs: int, work: list[tuple[Path, Path]]) -> None:
    """Compile each (source, object) whose object is older than its source or any header."""
    newest_header = max((p.stat().st_mtime for p in _headers_of_tree()), default=0.0)

    def compile_one(item: tuple[Path, Path]) -> None:
        src, obj = item
        if obj.is_file() and obj.stat().st_mtime >= max(src.stat().st_mtime, newest_header):
            return
        tmp = obj.with_name(f".{obj.name}.{os.getpid()}.tmp")  # a killed compile leaves no object
        proc = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(tmp)], capture_output=True,
                              text=True)  # fmt: skip
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr)
            raise BuildError(f"compiling {src.relative_to(ROOT)} failed: {first.strip()}")
        os.replace(tmp, obj)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(compile_one, work))


def kernel_objects(jobs: int = 2) -> list[Path]:
    """csrc/kernels compiled (no ONNX Runtime header needed), reused when fresh."""
    cxx = _compiler()
    flags = [*CXXFLAGS, *WARNINGS, f"-I{ROOT / 'csrc'}"]
    objdir = _objdir("kernels-", cxx, flags)
    work = [(src, objdir / f"{src.stem}.o") for src in kernel_sources()]
    _compile_all(cxx, flags, jobs, work)
    return [obj for _, obj in work]


def build(out: Path, defines: list[str] | None = None, jobs: int = 2) -> Path:
    """Compile and link the library into ``out``; objects reused from build/ort/ when fresh."""
    include = find_headers()
    cxx = _compiler()
    flags = [*CXXFLAGS, *WARNINGS, f"-I{ROOT / 'csrc'}", "-isystem", str(include)]
    # --define applies to the adapter only (e.g. BITMAPS_ORT_API_VERSION): kernels are reused.
    extra = [f"-D{d}" for d in defines or []]
    tag = hashlib.sha256(" ".join(extra).encode()).hexdigest()[:8] if extra else ""
    objdir = _objdir("", cxx, flags)
    suffix = f"_{tag}" if tag else ""
    work = [(src, objdir / f"onnxruntime_{src.stem}{suffix}.o") for src in adapter_sources()]
    objects = kernel_objects(jobs)
    _compile_all(cxx, [*flags, *extra], jobs, work)
    objects += [obj for _, obj in work]
    out = out.resolve()
    _mkdir(out.parent)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [cxx, "-shared", "-pthread", *map(str, objects), "-o", str(tmp)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"linking {out.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bitmaps" / "libbitmaps_ort.so")
    parser.add_argument("--define", action="append", default=[], help="NAME=VALUE for the compiler")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--headers-only", action="store_true", help="find or fetch headers, print")
    parser.add_argument(
        "--kernel-objects", action="store_true", help="compile csrc/kernels only, print the objects"
    )
    parser.add_argument(
        "--runtime",
        metavar="debian-ARCH|pypi-VERSION[-MACHINE]",
        help="fetch an ONNX Runtime library to test with into the cache (or find it), print it",
    )
    args = parser.parse_args(argv)
    try:
        if args.headers_only:
            print(find_headers())
            return 0
        if args.runtime:
            kind, _, value = args.runtime.partition("-")
            if kind not in ("debian", "pypi") or not value:
                raise BuildError(f"--runtime must be debian-ARCH or pypi-VERSION: {args.runtime!r}")
            if kind == "debian":
                print(debian_runtime(value))
            else:  # pypi-VERSION or pypi-VERSION-MACHINE
                version, _, machine = value.partition("-")
                print(pypi_runtime(version, machine or None))
            return 0
        if args.kernel_objects:
            print("\n".join(map(str, kernel_objects(args.jobs))))
            return 0
        print(build(args.out, args.define, args.jobs))
    except BuildError as exc:
        log(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

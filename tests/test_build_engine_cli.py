"""`bitmaps build-engine` where it cannot build: one line, exit code 2, no file written.

These run everywhere (no TensorRT, no GPU); the successful builds are in test_tensorrt_plugin.py.
"""

from __future__ import annotations

import importlib.util
import os
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


def test_a_named_plugin_that_is_missing_is_not_passed_over(tmp_path, monkeypatch):
    """A bad BITMAPS_TRT_PLUGIN fell through to a default library without a word."""
    default = tmp_path / "build" / "plugin" / trt_runtime.PLUGIN_LIBRARY
    default.parent.mkdir(parents=True)
    default.write_bytes(b"\x7fELF")
    monkeypatch.setattr(trt_runtime, "_REPO_ROOT", tmp_path)
    monkeypatch.delenv(trt_runtime.PLUGIN_ENV, raising=False)
    assert trt_runtime.find_plugin_library() == default
    monkeypatch.setenv(trt_runtime.PLUGIN_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(
        BitmapsError, match=f"{trt_runtime.PLUGIN_ENV}=.*nowhere.so: no such plugin"
    ):
        trt_runtime.find_plugin_library()


def test_explicit_plugin_path_wins(tmp_path):
    lib = tmp_path / "libbitmaps_trt_plugin.so"
    lib.write_bytes(b"\x7fELF")
    assert trt_runtime.find_plugin_library(lib) == lib


def _binary_node_onnx(tmp_path: Path, **attrs: object) -> Path:
    """A tensorrt-target ONNX whose one node is a bitmaps::BinaryLinear with ``attrs``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.INT32, [4, 1], [0, 0, 0, 0])
    node = helper.make_node("BinaryLinear", ["x", "w"], ["y"], name="q", domain="bitmaps", **attrs)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    helper.set_model_props(model, {"bitmaps.kind": "binary", "bitmaps.target": "tensorrt"})
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("attrs", "needle"),
    [
        ({"in_features": -5, "out_features": 4}, "in_features -5"),
        ({"in_features": 0, "out_features": 4}, "in_features 0"),
        ({"in_features": "four", "out_features": 4}, "in_features missing or not an integer"),
        ({"out_features": 4}, "in_features missing"),
        ({"in_features": 4, "out_features": 2**40}, f"out_features {2**40}"),
        # the helper's packed weight is [4, 1]: 4 rows of one 32-bit word
        ({"in_features": 33, "out_features": 4}, "its packed weight is [4, 1], in_features 33"),
        ({"in_features": 4, "out_features": 8}, "need [8, 1]"),
        # stop 48's probe: the other attributes reached "TensorRT is not installed" too
        ({"in_features": 4, "out_features": 4, "act_scale": float("nan")}, "act_scale nan"),
        ({"in_features": 4, "out_features": 4, "act_scale": -1.0}, "must be a finite float >= 0"),
        ({"in_features": 4, "out_features": 4, "act_scale": "x"}, "act_scale of type STRING"),
        ({"in_features": 4, "out_features": 4, "act_threshold": float("inf")}, "act_threshold inf"),
        ({"in_features": 4, "out_features": 4, "act_unsigned": 2}, "act_unsigned 2"),
        ({"in_features": 4, "out_features": 4, "activation": 1}, "the plugin has no GELU"),
        ({"in_features": 4, "out_features": 4, "plugin_version": "2"}, "plugin_version '2'"),
        ({"in_features": 4, "out_features": 4, "plugin_namespace": "x"}, 'must be "bitmaps"'),
    ],
)
def test_bad_binary_nodes_are_found_without_tensorrt(tmp_path, capsys, attrs, needle):
    # stop 44's probe: these reached "TensorRT is not installed" (or TensorRT's parser) first
    out = tmp_path / "model.engine"
    rc, err = _run(capsys, str(_binary_node_onnx(tmp_path, **attrs)), "-o", str(out))
    assert rc == 2 and err.count("\n") == 0, err
    assert "node 'q'" in err and needle in err
    assert not out.exists()


@pytest.mark.parametrize(
    "case", ["empty model", "plugin missing", "plugin not ELF", "cache dir", "cache unwritable"]
)
def test_inputs_checked_before_tensorrt(tmp_path, capsys, case):
    model = _binary_node_onnx(tmp_path, in_features=4, out_features=4)
    args = [str(model), "-o", str(tmp_path / "model.engine")]
    if case == "empty model":
        model.write_bytes(b"")  # parses as an empty ModelProto
        needle = "empty graph"
    elif case == "plugin missing":
        args += ["--plugin", str(tmp_path / "absent.so")]
        needle = "looked in: " + str(tmp_path / "absent.so")
    elif case == "plugin not ELF":
        (tmp_path / "random.so").write_bytes(b"\x00\x01 not a library")
        args += ["--plugin", str(tmp_path / "random.so")]
        needle = "not a shared library"
    elif case == "cache dir":
        args += ["--timing-cache", str(tmp_path)]
        needle = "--timing-cache"
    else:  # written after the engine: a folder that takes no files is refused first
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs /proc (a folder the access check passes that takes no files)")
        args += ["--timing-cache", "/proc/x.cache"]
        needle = "cannot write /proc/x.cache"
    rc, err = _run(capsys, *args)
    assert rc == 2 and err.count("\n") == 0, err
    assert needle in err


def test_shapes_are_bounded():
    with pytest.raises(ConfigError, match="batch must be <= 65536 and sequence <= 65536"):
        EngineBuildConfig(max_shape="99999999999999999999x128")


def test_workspace_is_bounded():
    with pytest.raises(ConfigError, match="workspace_mb must be <= 1048576"):
        EngineBuildConfig(workspace_mb=99999999999999)


def test_max_shape_beyond_the_position_table_is_refused_before_tensorrt(tmp_path, capsys):
    import onnx
    from onnx import helper

    path = _binary_node_onnx(tmp_path, in_features=4, out_features=4)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | {"bitmaps.max_sequence": "64"}
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    out = tmp_path / "model.engine"
    rc, err = _run(capsys, str(path), "-o", str(out), "--opt-shape", "8x64", "--max-shape", "8x65")
    assert rc == 2 and err.count("\n") == 0, err
    assert "at most 64 tokens" in err and "--max-shape Bx64" in err
    assert not out.exists()
    # a max_sequence of digits int() does not read ("²" is a digit to str.isdigit) is no table
    props["bitmaps.max_sequence"] = "\u00b2"
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    rc, err = _run(capsys, str(path), "-o", str(out), "--opt-shape", "8x64", "--max-shape", "8x65")
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert "position table" not in err
    props["bitmaps.max_sequence"] = "64"
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    # at the table's length the check passes (what follows needs TensorRT, or its plugin)
    rc, err = _run(capsys, str(path), "-o", str(out), "--opt-shape", "8x64", "--max-shape", "8x64")
    assert "position table" not in err

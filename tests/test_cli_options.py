"""Every option of every command refuses a bad value before any work starts: one line on stderr,
exit code 2, no traceback, no output file (DESIGN.md: "2 on bad input with a one-line message").

The table drives the real CLI (``bitmaps.cli.main``) with a wrong type, a wrong range, a wrong
device, or a missing / unreadable / non-UTF-8 file for each option; none of these cases needs an
asset, a GPU or TensorRT, so they run everywhere. ``test_every_command_is_covered`` keeps the table
honest when a command is added.
"""

from __future__ import annotations

import json
import os

import click
import pytest
import torch

from bitmaps.cli import cli, main

OUT = {"train": "out.pt", "export": "out.onnx", "export-baseline": "out.onnx",
       "build-engine": "out.engine", "profile": "out.json"}  # fmt: skip
TRAIN = ["train", "--teacher", "bert-tiny", "--data", "{tmp}", "-o", "{tmp}/out.pt"]
STUDENT = ["train", "--stage", "student", "--teacher", "t.pt", "--data", "{tmp}"]
STUDENT += ["-o", "{tmp}/out.pt"]
EVAL = ["eval", "bert-tiny", "--data", "{tmp}"]
STATS = ["data-stats", "{tmp}/good.txt"]
ENGINE = ["build-engine", "{tmp}/model.onnx", "-o", "{tmp}/out.engine"]
EXPORT = ["export", "{tmp}/missing.pt", "{tmp}/out.onnx"]
BASELINE = ["export-baseline", "bert-tiny", "{tmp}/out.onnx"]
PROFILE = ["profile", "--json", "{tmp}/out.json"]

CASES = [
    # train: every --set section, wrong types, wrong ranges, unknown names
    (TRAIN + ["--set", "train.steps=abc"], "steps must be an integer"),
    (TRAIN + ["--set", "train.steps=1.5"], "steps must be an integer"),
    (TRAIN + ["--set", "train.lr=fast"], "lr must be a number"),
    (TRAIN + ["--set", "train.lr=inf"], "finite"),
    (TRAIN + ["--set", "train.lr=-1"], "lr must be > 0"),
    # values that overflowed float32 in the first steps (a traceback, or a NaN "complete" run)
    (TRAIN + ["--lr", "1e39"], "lr must be <= 1"),
    (TRAIN + ["--set", "train.weight_decay=1e300"], "lr x weight_decay must be < 1"),
    (STUDENT + ["--set", "distill.temperature=1e300"], "temperature must be in [0.01, 1000]"),
    (STUDENT + ["--set", "distill.temperature=1e-300"], "temperature must be in [0.01, 1000]"),
    (STUDENT + ["--set", "distill.lambda_mlm=1e300"], "lambda_mlm must be <= 1e+06"),
    (TRAIN + ["--set", "data.heldout_fraction=0"], "leaves training no held-out text"),
    # --set text read loosely before: Python's 0_1 == 1, an empty list item dropped, a newline
    (TRAIN + ["--set", "train.seed=0_1"], "seed must be an integer, got '0_1'"),
    (TRAIN + ["--set", "train.adam_betas=0.9,,0.99"], "adam_betas must be a list"),
    (TRAIN + ["--set", "train.steps=1\n2"], "--set 'train.steps=1\\n2': steps must be"),
    (TRAIN + ["--set", "train.adam_betas=" + "[" * 100000], "adam_betas must be a list"),
    # JSON that json.loads lets through as other errors, or silently
    (TRAIN + ["--config", "{tmp}/deep.json"], "nested too deeply"),
    (TRAIN + ["--config", "{tmp}/long_int.json"], "cannot read config file"),
    (TRAIN + ["--config", "{tmp}/huge_lr.json"], "lr must be a finite number"),
    (TRAIN + ["--config", "{tmp}/twice.json"], "names the key 'train' twice"),
    (TRAIN + ["--set", "train.adam_betas=0.9"], "2 entries"),
    (TRAIN + ["--set", "train.adam_betas=0.9,1.5"], "adam_betas entry"),
    (TRAIN + ["--set", "train.nope=1"], "unknown field 'nope'"),
    (TRAIN + ["--set", "steps=3"], "SECTION.FIELD=VALUE"),
    (TRAIN + ["--set", "model.steps=3"], "SECTION.FIELD=VALUE"),
    (TRAIN + ["--set", "data.per_line=maybe"], "true or false"),
    (TRAIN + ["--set", "data.seq_len=4"], "seq_len"),
    (TRAIN + ["--set", "data.mask_prob=x"], "mask_prob must be a number"),
    (STUDENT + ["--set", "binarize.clip=wide"], "clip must be a number"),
    (STUDENT + ["--set", "binarize.modules=query,nope"], "nope"),
    (STUDENT + ["--set", "distill.temperature=0"], "temperature"),
    (STUDENT + ["--act-quantizer", "nope"], "activation_quantizer"),
    # a setting of a loss term or schedule that is off would be ignored
    (
        STUDENT + ["--set", "distill.lambda_logit=0", "--set", "distill.temperature=5"],
        "temperature shapes a loss term that is off (lambda_logit 0)",
    ),
    (
        STUDENT + ["--set", "distill.lambda_attn=0", "--set", "distill.attention_target=probs"],
        "attention_target shapes a loss term that is off",
    ),
    (
        STUDENT
        + [
            "--set",
            "distill.lambda_hidden=0",
            "--set",
            "distill.lambda_attn=0",
            "--set",
            "distill.mse_decay_steps=5",
        ],
        "mse_decay_steps shapes a loss term",
    ),
    (
        STUDENT + ["--set", "distill.multistep_teacher=intermediate"],
        "applies to binarize.schedule bit_multistep",
    ),
    (
        STUDENT
        + [
            "--steps",
            "2",
            "--set",
            "binarize.schedule=bit_multistep",
            "--set",
            "binarize.activation_start_step=50",
        ],
        "would never be binarized",
    ),
    (TRAIN + ["--act-quantizer", "elastic"], "--stage student"),
    (TRAIN + ["--config", "{tmp}/list.json"], "JSON object"),
    (TRAIN + ["--config", "{tmp}/unknown_section.json"], "unknown section 'model'"),
    (TRAIN + ["--config", "{tmp}/unknown_field.json"], "unknown field 'nope'"),
    (TRAIN + ["--config", "{tmp}/string_steps.json"], "steps must be an integer"),
    (TRAIN + ["--config", "{tmp}/section_list.json"], "must be a JSON object"),
    (TRAIN + ["--config", "{tmp}/not_json.json"], "cannot read config file"),
    (TRAIN + ["--config", "{tmp}/latin1.txt"], "cannot read config file"),
    (TRAIN + ["--config", "{tmp}/missing.json"], "cannot read config file"),
    (TRAIN + ["--steps", "x"], "--steps"),
    (TRAIN + ["--steps", "0"], "steps must be >= 1"),
    (TRAIN + ["--batch-size", "-2"], "batch_size"),
    (TRAIN + ["--lr", "0"], "lr must be > 0"),
    (TRAIN + ["--warmup-ratio", "1.5"], "warmup_ratio"),
    (TRAIN + ["--weight-decay", "-0.1"], "weight_decay"),
    (TRAIN + ["--grad-clip", "-1"], "grad_clip"),
    (TRAIN + ["--seed", "-1"], "seed must be >= 0"),
    # absurd sizes: one line each, not an overflow or an allocation failure inside torch
    (TRAIN + ["--seed", "99999999999999999999"], "seed must be <= 4294967295"),
    (TRAIN + ["--batch-size", "99999999999"], "batch_size must be <= 65536"),
    (TRAIN + ["--steps", "99999999999999999999"], "steps must be <= 1000000000"),
    (TRAIN + ["--set", "data.split_seed=99999999999999999999"], "split_seed must be <="),
    (TRAIN + ["--eval-every", "-1"], "eval_every"),
    (TRAIN + ["--eval-sequences", "0"], "eval_sequences"),
    (TRAIN + ["--save-every", "-5"], "save_every"),
    (TRAIN + ["--log-every", "0"], "log_every"),
    (TRAIN + ["--schedule", "steep"], "--schedule"),
    (TRAIN + ["--amp", "fp8"], "--amp"),
    (TRAIN + ["--amp", "fp16", "--device", "cpu"], "mixed precision on a CUDA GPU"),
    (TRAIN + ["--set", "train.amp=bf16", "--device", "cpu"], "mixed precision on a CUDA GPU"),
    (TRAIN + ["--stage", "pupil"], "--stage"),
    (TRAIN + ["--device", "tpu"], "not a device"),
    (TRAIN + ["--device", "cuda:0"], "not a device"),
    (["train", "--teacher", "bert-tiny", "-o", "{tmp}/out.pt"], "--data"),
    (
        ["train", "--teacher", "bert-tiny", "--data", "{tmp}/missing", "-o", "{tmp}/out.pt"],
        "missing",
    ),
    (["train", "--teacher", "bert-tiny", "--data", "{tmp}"], "--output"),
    # eval
    (EVAL + ["--batch-size", "0"], "--batch-size"),
    (EVAL + ["--batch-size", "many"], "--batch-size"),
    (EVAL + ["--max-sequences", "-1"], "--max-sequences"),
    (EVAL + ["--split", "test"], "--split"),
    (EVAL + ["--set", "data.seq_len=long"], "seq_len must be an integer"),
    (EVAL + ["--set", "train.steps=3"], "SECTION one of data"),
    (EVAL + ["--device", "gpu"], "not a device"),
    (["eval", "bert-tiny"], "--data"),
    # data-stats
    (STATS + ["--seq-len", "4"], "seq_len"),
    (STATS + ["--seq-len", "x"], "--seq-len"),
    (STATS + ["--heldout-fraction", "1.5"], "heldout_fraction"),
    (STATS + ["--split-seed", "-1"], "split_seed"),
    (["data-stats", "{tmp}/good.txt", "--tokenizer", "{tmp}"], "no config.json"),
    (["data-stats", "{tmp}/missing.txt"], "missing.txt"),
    (["data-stats"], "PATH"),
    # build-engine
    (ENGINE + ["--min-shape", "1x"], "BATCHxSEQ"),
    (ENGINE + ["--opt-shape", "0x128"], "BATCHxSEQ"),
    (ENGINE + ["--min-shape", "64x8"], "min <= opt <= max"),
    (ENGINE + ["--workspace", "0"], "workspace"),
    (ENGINE + ["--workspace", "lots"], "--workspace"),
    (["build-engine", "{tmp}/model.onnx"], "--output"),
    # export, export-baseline
    (EXPORT + ["--opset", "99"], "opset"),
    (EXPORT + ["--opset", "x"], "--opset"),
    (EXPORT + ["--tolerance", "-1"], "tolerance"),
    (EXPORT + ["--dtype", "int8"], "--dtype"),
    (EXPORT + ["--output", "probs"], "--output"),
    (EXPORT, "missing.pt"),
    (BASELINE + ["--opset", "5"], "opset"),
    (BASELINE + ["--dtype", "bf16"], "--dtype"),
    # profile
    (PROFILE + ["--device", "tpu"], "not a device"),
    (PROFILE + ["--threads", "-1"], "threads"),
    (PROFILE + ["--seed", "-1"], "seed"),
    (PROFILE + ["--repeats", "0"], "repeats"),
    (PROFILE + ["--warmup", "-1"], "warmup"),
    (PROFILE + ["--warmup-time", "-1"], "warmup_time"),
    (PROFILE + ["--min-time", "nan"], "finite"),
    (PROFILE + ["--max-time", "0"], "max_time"),
    (PROFILE + ["--eval-sequences", "-1"], "eval_sequences"),
    (PROFILE + ["--batch", "1,x"], "--batch"),
    (PROFILE + ["--seq", "0"], "sequence length"),
    (PROFILE + ["--backend", "tvm"], "tvm"),
    (PROFILE + ["--models", "int2"], "int2"),
    (PROFILE + ["--output", "probs"], "--output"),
    (PROFILE + ["--shape", "bert-huge"], "--shape"),
    (PROFILE + ["--plot", "{tmp}/out.jpg"], ".png"),
    (["profile", "--show", "{tmp}/latin1.txt"], "latin1.txt"),
    (["profile", "--show", "{tmp}/missing.json"], "missing.json"),
    # paths as typed: never empty; an output file's path that names a folder is refused, not
    # written beside it (Path("new/") would drop the slash and write a file "new")
    (TRAIN + ["-o", "{tmp}/outnew/"], "names a folder"),
    (TRAIN + ["-o", "{tmp}"], "names a folder"),
    (TRAIN + ["-o", ""], "an empty path"),
    (TRAIN + ["--config", ""], "an empty path"),
    (TRAIN + ["--config", "{tmp}"], "is a folder"),
    (["export", "{tmp}/missing.pt", "{tmp}/outnew/"], "names a folder"),
    (["export-baseline", "bert-tiny", ""], "an empty path"),
    (["build-engine", "{tmp}/model.onnx", "-o", "{tmp}/outnew/"], "names a folder"),
    (ENGINE + ["--timing-cache", "{tmp}"], "names a folder"),
    (ENGINE + ["--plugin", ""], "an empty path"),
    (["profile", "--json", ""], "an empty path"),
    (["profile", "--json", "{tmp}/outnew/"], "names a folder"),
    (PROFILE + ["--plot", ""], "an empty path"),
    (PROFILE + ["--workdir", ""], "an empty path"),
    (PROFILE + ["--workdir", "{tmp}/good.txt"], "is a file"),
    (["profile", "--show", "{tmp}"], "is a folder"),
    (["profile", "--show", ""], "an empty path"),
    # an option that would be ignored is refused
    (PROFILE + ["--eval-sequences", "5"], "give --data"),
    (TRAIN + ["--resume", "--overwrite"], "give one of them"),
    (EVAL + ["--embedding-group", "32"], "these embeddings are fp32"),
    (EXPORT + ["--embeddings", "int8", "--embedding-group", "32"], "these embeddings are int8"),
    (EXPORT + ["--target", "tensorrt", "--embedding-group", "32"], "these embeddings are fp16"),
    # an output that is an input (or another output) would destroy it
    (["export", "{tmp}/good.txt", "{tmp}/good.txt"], "is also the CKPT input"),
    (["export-baseline", "{tmp}/good.txt", "{tmp}/./good.txt"], "is also the MODEL input"),
    (
        ["train", "--teacher", "{tmp}/good.txt", "--data", "{tmp}", "-o", "{tmp}/good.txt"],
        "is also the --teacher input",
    ),
    (
        ["train", "--teacher", "bert-tiny", "--data", "{tmp}/good.txt", "-o", "{tmp}/good.txt"],
        "is also the --data input",
    ),
    (
        TRAIN[:-1] + ["{tmp}/string_steps.json", "--config", "{tmp}/string_steps.json"],
        "is also the --config input",
    ),
    (["profile", "--model", "{tmp}/m.pt", "--json", "{tmp}/m.pt"], "is also the --model input"),
    (PROFILE + ["--plot", "{tmp}/out.json"], "--plot and --json name the same file"),
    (["profile", "--show", "{tmp}/good.txt", "--plot", "{tmp}/good.txt"], "is also the --show"),
    (["build-engine", "{tmp}/model.onnx", "-o", "{tmp}/model.onnx"], "is also the MODEL.onnx"),
    (ENGINE + ["--timing-cache", "{tmp}/out.engine"], "name the same file"),
    # profile --show measures nothing: measuring options are refused, --plot is still a PNG
    (["profile", "--show", "{tmp}/good.txt", "--batch", "4"], "--batch would be ignored"),
    (
        ["profile", "--show", "{tmp}/good.txt", "--threads", "3", "--attention", "int8"],
        "--threads, --attention would be ignored",
    ),
    (["profile", "--show", "{tmp}/good.txt", "--workdir", "{tmp}"], "--workdir would be ignored"),
    (["profile", "--show", "{tmp}/good.txt", "--plot", "{tmp}/out.txt"], "writes a PNG"),
    # paths that are something else than they must be
    (["eval", "", "--data", "{tmp}"], "an empty model path"),
    (["data-stats", "{tmp}/good.txt", "--tokenizer", ""], "an empty tokenizer path"),
    (["build-engine", "{tmp}", "-o", "{tmp}/out.engine"], "is a folder: give the .onnx file"),
    (
        ["export-baseline", "bert-tiny", "{tmp}/good.txt/out.onnx"],
        "good.txt is a file, not a folder",
    ),
    (  # a file further up: "folder .../sub does not exist; create it first" could not be done
        ["export-baseline", "bert-tiny", "{tmp}/good.txt/sub/out.onnx"],
        "good.txt is a file, not a folder",
    ),
    # assets, ort-library
    (["assets", "path", "bert-huge"], "unknown asset"),
    (["assets", "verify", "bert-huge"], "unknown asset"),
    (["assets", "fetch", "bert-huge"], "unknown asset"),
    (["ort-library", "extra"], "extra"),
]
if torch.cuda.is_available():
    NO_CUDA = []
else:
    NO_CUDA = [
        (TRAIN + ["--device", "cuda"], "no CUDA GPU"),
        (EVAL + ["--device", "cuda"], "no CUDA GPU"),
        (PROFILE + ["--device", "cuda"], "CUDA"),
    ]


@pytest.fixture
def files(tmp_path):
    """Config files good and bad, a non-UTF-8 file, a UTF-8 text and a fake ONNX file."""
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "unknown_section.json").write_text('{"model": {}}')
    (tmp_path / "unknown_field.json").write_text('{"train": {"nope": 1}}')
    (tmp_path / "string_steps.json").write_text('{"train": {"steps": "100"}}')
    (tmp_path / "section_list.json").write_text('{"train": [1]}')
    (tmp_path / "not_json.json").write_text("{steps: 3")
    (tmp_path / "deep.json").write_text("[" * 100000)
    (tmp_path / "long_int.json").write_text('{"train": {"steps": 1' + "0" * 5000 + "}}")
    (tmp_path / "huge_lr.json").write_text('{"train": {"lr": 1' + "0" * 400 + "}}")
    (tmp_path / "twice.json").write_text('{"train": {"eval_every": -5}, "train": {"lr": 0.001}}')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "good.txt").write_text("A line of text.\n")
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    return tmp_path


def _outputs(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith("out")}


@pytest.mark.parametrize(("args", "needle"), CASES + NO_CUDA, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)  # fmt: skip
def test_bad_value_one_line_exit_2_no_output(files, capsys, monkeypatch, args, needle) -> None:
    monkeypatch.chdir(files)
    monkeypatch.setenv("BITMAPS_CACHE", str(files / "cache"))  # no asset can be found
    argv = [a.replace("{tmp}", str(files)) for a in args]
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert _outputs(files) == set(), "no output file may be written"


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("BITMAPS_CPU_PATH", "bogus", "unknown CPU path 'bogus'"),
        ("BITMAPS_ORT_THREADS", "bogus", "BITMAPS_ORT_THREADS must be ort, std or serial"),
    ],
)
@pytest.mark.parametrize("args", [EXPORT, BASELINE, EVAL, TRAIN, PROFILE], ids=lambda a: a[0])
def test_bad_native_settings_are_refused_before_any_work(
    files, capsys, monkeypatch, variable, value, needle, args
) -> None:
    """The torch ops and libbitmaps_ort.so read these variables deep inside a run (export's
    verification, profile's measuring process): each command checks them first."""
    monkeypatch.chdir(files)
    monkeypatch.setenv("BITMAPS_CACHE", str(files / "cache"))
    monkeypatch.setenv(variable, value)
    code = main([a.replace("{tmp}", str(files)) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err and "fix or unset it" in err, err
    assert _outputs(files) == set()


def test_a_cpu_path_this_cpu_lacks_is_refused(files, capsys, monkeypatch) -> None:
    from bitmaps.core import ops

    missing = [p for p in ("avx512", "avx2", "neon") if p not in ops.cpu_paths_supported()]
    if not ops.native_available() or not missing:
        pytest.skip("needs bitmaps._C and a CPU path this CPU lacks (one of avx512, avx2, neon)")
    monkeypatch.setenv("BITMAPS_CPU_PATH", missing[0])
    code = main([a.replace("{tmp}", str(files)) for a in EXPORT])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "which this CPU or this build lacks" in err, err


def test_profile_show_refuses_a_foreign_meta_before_printing(tmp_path, capsys) -> None:
    """Rows that pass the loader with a meta that does not fit the report: one line, nothing
    printed, no plot written."""
    from bitmaps.runtime.profile import ROW_KEYS

    row = dict.fromkeys(ROW_KEYS, 1.0) | {"model": "binary", "backend": "torch", "device": "cpu"}
    row |= {"batch": 1, "seq": 8}
    for meta in ({"skipped": [1]}, {"machine": "cpu"}, {"weights_by_part_mb": {"fp32": {}}}):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"meta": meta, "rows": [row]}))
        code = main(["profile", "--show", str(path), "--plot", str(tmp_path / "p.png")])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "its meta does not fit the report" in err, err
        assert not (tmp_path / "p.png").exists()


def test_outputs_that_take_no_files_are_refused_early(tmp_path) -> None:
    """A folder the access check passes but that takes no files (/proc, for root), and failed
    writes of the output itself: one BitmapsError line, no temporary file left."""
    import errno

    from bitmaps.core.atomic import atomic_output, check_writable
    from bitmaps.core.errors import BitmapsError

    if os.path.isdir("/proc/self"):
        with pytest.raises(BitmapsError, match="cannot write /proc/x.onnx"):
            check_writable("/proc/x.onnx")
    with pytest.raises(BitmapsError, match="cannot write .*out.bin: No space left on device"):
        with atomic_output(tmp_path / "out.bin"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(FileNotFoundError):  # not the output's own write: left as it is
        with atomic_output(tmp_path / "out.bin"):
            raise FileNotFoundError(errno.ENOENT, "gone", str(tmp_path / "input.txt"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (a POSIX system)")
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys) -> None:
    """The rename onto the output replaced a device node or FIFO itself (as root, `-o /dev/null
    --overwrite` replaced /dev/null), and `--resume` from a FIFO hung: refused before any work."""
    fifo = tmp_path / "out.pt"
    os.mkfifo(fifo)
    for extra in (["--overwrite"], ["--resume"]):
        code = main(["train", "--teacher", "bert-tiny", "--data", str(tmp_path), "-o", str(fifo),
                     *extra])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "is not a regular file" in err and len(err.strip().splitlines()) == 1
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", [["data-stats"], ["eval", "bert-tiny", "--data"]])
def test_non_utf8_text_is_refused(files, capsys, bert_tiny_dir, command) -> None:
    code = main([*command, str(files / "latin1.txt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not UTF-8 text" in err, err


def _commands() -> list[str]:
    names = []
    for name, cmd in cli.commands.items():
        if isinstance(cmd, click.Group):
            names += [f"{name} {sub}" for sub in cmd.commands]
        else:
            names.append(name)
    return names


def test_every_command_is_covered() -> None:
    """A new command joins the table above with at least one bad value."""
    covered = {" ".join(a[:2]) if a[0] == "assets" else a[0] for a, _ in CASES}
    assert set(_commands()) <= covered, set(_commands()) - covered


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(capsys, command) -> None:
    assert main([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: bitmaps " + command)


def test_top_level_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.commands:
        assert f"  {name} " in out, name


def test_no_arguments_prints_help(capsys) -> None:
    assert main([]) == 0
    assert "Commands:" in capsys.readouterr().out


def test_bare_environment_help_needs_no_torch() -> None:
    """`bitmaps --help` and option errors answer without importing torch (fast on 2 cores)."""
    import subprocess
    import sys

    code = (
        "import sys; from bitmaps.cli import main; main(['--help']); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("False")


def test_the_default_embedding_group_goes_with_any_embeddings() -> None:
    # scripts loop over the modes passing the group each time (bench_embeddings_accuracy.py)
    from bitmaps.cli import _group_needs_int4

    for mode in ("fp32", "fp16", "int8", "int4"):
        _group_needs_int4(mode, "64")
    _group_needs_int4("int4", "32")
    with pytest.raises(click.UsageError, match="these embeddings are int8"):
        _group_needs_int4("int8", "32")


def test_a_cache_that_is_a_file_is_refused(files, capsys, monkeypatch) -> None:
    monkeypatch.setenv("BITMAPS_CACHE", str(files / "good.txt"))
    assert main(["assets", "path", "sotu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file: give a folder, or unset it" in err, err

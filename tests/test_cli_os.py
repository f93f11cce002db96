"""What the operating system can do to a command (stop 48's probe): standard output that is
closed or cannot be written, SIGTERM, paths the kernel refuses (a loop of symbolic links, a name
too long), file names that are not UTF-8, a cache write on a full disk, progress lines that cannot
be written, a measuring worker whose parent is interrupted. Each ends in one line and exit 2 (143
for SIGTERM), never a traceback, and the work that can go on goes on."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import time

import click
import pytest
from conftest import assert_one_line_error

import bitmaps.cli as cli_module
from bitmaps.cli import Terminated, main
from bitmaps.core.progress import ProgressReporter, stderr_logger, write_line


class _FullStream(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_standard_output_that_cannot_be_written_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _FullStream())
    code = main(["assets", "path"])
    assert_one_line_error(code, capsys.readouterr().err, "cannot write the output", "No space")


def test_closed_standard_output_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", None)
    assert_one_line_error(main(["assets", "path"]), capsys.readouterr().err, "output is closed")


def test_sigterm_ends_the_command_as_terminated(monkeypatch, capsys):
    def terminated(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            raise Terminated
        except KeyboardInterrupt as exc:  # as click's main does with an interrupt
            raise click.Abort from exc

    monkeypatch.setattr(cli_module.cli, "main", terminated)
    assert main(["assets", "path"]) == 143
    assert capsys.readouterr().err.strip() == "terminated"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_loop_of_symbolic_links_is_one_line(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code = main(["export", str(tmp_path / "a"), str(tmp_path / "out.onnx")])
    assert_one_line_error(code, capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists()


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    long = tmp_path / ("a" * 300 + ".onnx")  # over every Linux file system's 255-byte name
    code = main(["export", str(tmp_path / "s.pt"), str(long)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_line_break_in_a_path_stays_on_one_line(tmp_path, capsys):
    code = main(["export", str(tmp_path / "no\nsuch.pt"), str(tmp_path / "out.onnx")])
    assert_one_line_error(code, capsys.readouterr().err, "no\\nsuch.pt")


def test_progress_and_logs_survive_a_stream_that_cannot_be_written():
    assert not write_line("x", _FullStream()) and not write_line("x", None)
    reporter = ProgressReporter(3, "train", log_every=1, stream=_FullStream())
    with reporter:
        reporter.update(1, loss=1.0)  # would have raised OSError and ended the run
        reporter.log("held-out")
    assert not reporter.enabled


def test_stderr_logger_survives_a_full_stderr(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _FullStream())
    log = stderr_logger()
    log("one")
    log("two")  # no error, and no second attempt needed to prove it


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    from bitmaps.data.corpus import heldout_score
    from bitmaps.data.text import read_documents

    folder = tmp_path / "docs"
    folder.mkdir()
    try:
        (folder / os.fsdecode(b"raw\xe9.txt")).write_text("Some text here.\n")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    (doc,) = read_documents([folder])
    doc.id.encode("utf-8")  # raised UnicodeEncodeError (a surrogate) when hashed
    assert "raw\\xe9.txt" in doc.id
    heldout_score(doc.id, 0)


def test_a_cache_write_that_safetensors_refuses_is_logged_and_passed_over(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import bitmaps.data.corpus as corpus

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(corpus, "save_file", full)
    lines: list[str] = []
    corpus._save(tmp_path / "c.safetensors", _tiny_corpus(), lines.append)
    assert len(lines) == 1 and "continuing without it" in lines[0]


def _tiny_corpus():  # noqa: ANN202
    import types

    import torch

    empty, docs = torch.zeros((0, 4), dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    stats = types.SimpleNamespace(to_dict=dict)
    return types.SimpleNamespace(train=empty, heldout=empty, train_doc=docs, heldout_doc=docs,
                                 key="key", stats=stats, documents=[])  # fmt: skip


def test_an_interrupted_profile_stops_its_measuring_worker(monkeypatch, tmp_path):
    import bitmaps.runtime.profile as profile
    from bitmaps.runtime.measure import RESULT_PREFIX

    started = []
    real_popen = subprocess.Popen

    def worker(args, **kwargs):  # noqa: ANN001, ANN003, ANN202
        # a worker that reports once, then measures on for a minute
        code = f"import time; print({RESULT_PREFIX!r} + '{{}}', flush=True); time.sleep(60)"
        proc = real_popen([sys.executable, "-c", code], **kwargs)
        started.append(proc)
        return proc

    def interrupted(_result):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(profile.subprocess, "Popen", worker)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        profile.run_worker({"threads": 1, "model": "binary", "backend": "torch",
                            "device": "cpu"}, interrupted)  # fmt: skip
    assert started and started[0].poll() is not None  # killed, not left running
    assert time.monotonic() - t0 < 30


def test_the_early_write_check_sees_a_full_disk(tmp_path, monkeypatch):
    """Stop 48's probe: `profile --json` on a full disk measured for 40 s before failing, because
    the early check created an empty file, which needs no space. It now writes a byte."""
    import bitmaps.core.atomic as atomic
    from bitmaps.core.errors import BitmapsError

    def full(fd, data):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", full)
    with pytest.raises(BitmapsError, match="cannot write .*p.json: No space left on device"):
        atomic.check_writable(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []  # the probe removed


def test_a_write_killed_outright_leaves_nothing_for_the_next_write(tmp_path, monkeypatch):
    """SIGKILL during a write (a checkpoint save) cannot remove the temporary file; the next write
    of the same output on this machine removes what dead processes left, and nothing else."""
    from bitmaps.core.atomic import atomic_output

    out = tmp_path / "ckpt.pt"
    killed = (
        "import os, signal, sys\n"
        "from bitmaps.core.atomic import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a checkpoint')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", killed, str(out)], check=False)
    assert child.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert len(left) == 1 and not out.exists()
    others = [tmp_path / ".other.pt.x.tmp", tmp_path / ".ckpt.pt.abc123.tmp"]  # not ours to take
    for p in others:
        p.write_bytes(b"x")
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    with atomic_output(out) as tmp:
        # a live writer of this machine (this process) keeps its temporary file meanwhile
        assert tmp.exists() and f"-{os.getpid()}." in tmp.name
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and len(fsynced) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt.pt", *(p.name for p in others)]
    )

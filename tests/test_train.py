"""The shared trainer on the real BERT-tiny and State of the Union text: fine-tuning helps, resume is
exact, a killed run resumes, torchrun with two CPU processes works."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_args

from bitmaps.core.checkpoint import load_checkpoint
from bitmaps.core.config import DataConfig, TrainConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.train.trainer import TrainJob, lr_lambda, run_training

QUIET = dict(log=lambda _m: None)


def _job(data: Path, out: Path, seq_len: int = 128, **train) -> TrainJob:
    defaults = dict(steps=6, batch_size=8, lr=5e-4, eval_every=0, save_every=0, eval_sequences=32)
    defaults.update(train)
    return TrainJob(
        train=TrainConfig(**defaults),
        data=DataConfig(seq_len=seq_len),
        data_paths=[str(data)],
        output=out,
        model="bert-tiny",
    )


def test_lr_schedule_shapes() -> None:
    cfg = TrainConfig(steps=100, warmup_ratio=0.1, schedule="linear")
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0
    cos = lr_lambda(TrainConfig(steps=100, warmup_ratio=0.0, schedule="cosine"))
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) < 1e-9


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(resume=True, overwrite=True), "set one of them, not both"),
        (dict(task="classify", data=dict(mask_prob=0.3)), "data.mask_prob applies to masked-LM"),
        (dict(task="classify", data=dict(per_line=True)), "data.per_line applies to masked-LM"),
        (dict(task="classify", data=dict(max_eval_sequences=5)), "data.max_eval_sequences"),
    ],
)
def test_library_refuses_settings_it_would_ignore(tmp_path, settings, message) -> None:
    """The library's TrainJob is checked as the CLI's options are (tests/test_cli_options.py), before
    any model or data is read and before the output is touched."""
    from bitmaps.core.errors import BitmapsError

    job = _job(tmp_path / "missing.txt", tmp_path / "out.pt", task=settings.get("task", "mlm"))
    job.data = DataConfig(**settings.get("data", {}))
    job.resume, job.overwrite = settings.get("resume", False), settings.get("overwrite", False)
    with pytest.raises(BitmapsError, match=message):
        run_training(job, **QUIET)
    assert not (tmp_path / "out.pt").exists()


def test_library_checks_the_stage_settings(tmp_path, bert_tiny_dir) -> None:
    """binarize / distill: refused for a teacher, type-checked, and None means the defaults for a
    student (it gets past binarizing to the data, which is missing here)."""
    from bitmaps.core.config import BinarizeConfig
    from bitmaps.core.errors import BitmapsError

    teacher = _job(tmp_path / "missing.txt", tmp_path / "t.pt")
    teacher.binarize = BinarizeConfig()
    with pytest.raises(BitmapsError, match="student stage only"):
        run_training(teacher, **QUIET)
    student = _job(tmp_path / "missing.txt", tmp_path / "s.pt", stage="student")
    student.distill = {"lambda_attn": 0.0}
    with pytest.raises(BitmapsError, match="TrainJob.distill must be a DistillConfig or None"):
        run_training(student, **QUIET)
    student.distill = None
    with pytest.raises(BitmapsError) as err:
        run_training(student, **QUIET)
    assert "missing.txt" in str(err.value)
    assert student.binarize is None  # the caller's job is not changed
    assert not (tmp_path / "t.pt").exists() and not (tmp_path / "s.pt").exists()


def test_classifier_job_takes_masked_lm_defaults(tmp_path) -> None:
    """Fields at their defaults are not refused: a classifier's DataConfig is a DataConfig."""
    from bitmaps.core.errors import BitmapsError

    job = _job(tmp_path / "missing.jsonl", tmp_path / "out.pt", task="classify")
    job.data = DataConfig(mask_prob=0.15, seq_len=64)
    assert job.data.changed_fields(DataConfig.MLM_ONLY) == []
    with pytest.raises(BitmapsError) as err:  # it gets as far as the data: the file is missing
        run_training(job, **QUIET)
    assert "masked-LM" not in str(err.value) and "missing.jsonl" in str(err.value)


def test_teacher_finetune_lowers_heldout_cross_entropy(sotu_small, tmp_path, bert_tiny_dir) -> None:
    out = tmp_path / "teacher.pt"
    # 64-token sequences: Zen 1, 26 s → 10 s alone; held-out cross entropy 8.44 → 5.49 in 40 steps
    job = _job(sotu_small, out, seq_len=64, steps=40, batch_size=16, eval_every=40)
    result = run_training(job, **QUIET)
    before, after = result.history[0], result.history[-1]
    assert before["step"] == 0 and after["step"] == 40
    assert after["cross_entropy"] < before["cross_entropy"] - 0.5, (before, after)
    assert after["accuracy"] > before["accuracy"]
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["complete"] and ckpt["meta"]["step"] == 40
    assert ckpt["binarize"] == {}
    assert ckpt["train_state"]["stream"]["step"] == 40


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_resume_is_equivalent_to_a_straight_run(sotu_small, tmp_path, bert_tiny_dir) -> None:
    straight = tmp_path / "straight.pt"
    run_training(_job(sotu_small, straight, steps=6, save_every=2), **QUIET)

    resumed = tmp_path / "resumed.pt"
    first = run_training(_job(sotu_small, resumed, steps=6, save_every=2, stop_after=3), **QUIET)
    assert not first.complete and first.step == 3
    saved = load_checkpoint(resumed)
    assert saved["meta"]["step"] == 2 and not saved["meta"]["complete"]  # step 3 was lost
    job = _job(sotu_small, resumed, steps=6, save_every=2)
    job.resume = True
    second = run_training(job, **QUIET)
    assert second.complete and second.step == 6

    again = run_training(job, **QUIET)  # resuming a finished run changes nothing
    assert again.complete and again.step == 6 and again.metrics == second.metrics

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # and not trivially: training moved the weights away from the pretrained ones
    from bitmaps.train.models import load_model

    start = load_model("bert-tiny").model.state_dict()
    assert not torch.allclose(
        a["bert.encoder.layer.0.attention.self.query.weight"],
        start["bert.encoder.layer.0.attention.self.query.weight"],
    )


def test_resume_refuses_changed_settings(sotu_small, tmp_path, bert_tiny_dir) -> None:
    from bitmaps.core.errors import BitmapsError

    out = tmp_path / "r.pt"
    run_training(_job(sotu_small, out, steps=4, save_every=2, stop_after=2), **QUIET)
    job = _job(sotu_small, out, steps=4, save_every=2, lr=1e-3)
    job.resume = True
    with pytest.raises(BitmapsError, match="train config differs"):
        run_training(job, **QUIET)
    with pytest.raises(BitmapsError, match="exists; pass --resume"):
        run_training(_job(sotu_small, out, steps=4), **QUIET)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bitmaps", *args]


def test_killed_run_resumes(sotu_small, tmp_path, bert_tiny_dir) -> None:
    out = tmp_path / "killed.pt"
    args = train_args(sotu_small, out, "--steps", "60", "--batch-size", "4", "--save-every", "2")
    # sequences of 32 tokens: what is resumed does not depend on their length, the time does
    args += ["--eval-every", "0", "--eval-sequences", "8", "--set", "data.seq_len=32"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and load_checkpoint(out)["meta"]["step"] >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = load_checkpoint(out)["meta"]
    assert 4 <= killed["step"] < 60 and not killed["complete"]

    done = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {out} at step {killed['step']}/60" in done.stderr
    final = load_checkpoint(out)["meta"]
    assert final["complete"] and final["step"] == 60


@pytest.mark.slow
def test_torchrun_two_cpu_processes(sotu_small, tmp_path, bert_tiny_dir) -> None:
    out = tmp_path / "ddp.pt"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    args = train_args(sotu_small, out, "--steps", "4", "--batch-size", "4", "--eval-every", "0")
    cmd = [*torchrun, "-m", "bitmaps", *args, "--eval-sequences", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["complete"] and ckpt["train_state"]["world_size"] == 2
    assert len(ckpt["train_state"]["rng"]) == 2
    assert "held-out @ step 4" in done.stderr
    assert done.stdout.count("held-out cross entropy") == 1, done.stdout  # one summary, rank 0's


def test_student_resume_is_equivalent_to_a_straight_run(
    sotu_small, tmp_path, bert_tiny_dir
) -> None:
    # Elastic activations (α initialised from the first batch) and BiT's multi-step schedule, with
    # the kill between the weight-only and the W1A1 phase: everything that resume must restore.
    from bitmaps.core.config import BinarizeConfig, DistillConfig

    teacher = tmp_path / "teacher.pt"
    run_training(_job(sotu_small, teacher, steps=2), **QUIET)

    def student_job(out: Path, **train) -> TrainJob:
        job = _job(sotu_small, out, stage="student", steps=6, save_every=2, lr=1e-3, **train)
        job.model = str(teacher)
        job.binarize = BinarizeConfig(
            activation_quantizer="elastic", schedule="bit_multistep", activation_start_step=3
        )
        job.distill = DistillConfig(lambda_attn=0.1)
        return job

    straight = tmp_path / "straight.pt"
    run_training(student_job(straight), **QUIET)
    resumed = tmp_path / "resumed.pt"
    first = run_training(student_job(resumed, stop_after=3), **QUIET)
    assert not first.complete and first.step == 3
    job = student_job(resumed)
    job.resume = True
    assert run_training(job, **QUIET).complete

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["binarize"]["activation_quantizer"] == "elastic" and a["binarize"] == b["binarize"]
    wa, wb = a["state_dict"], b["state_dict"]
    assert wa.keys() == wb.keys() and any("alpha" in k for k in wa)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    teacher_w = load_checkpoint(teacher)["state_dict"]
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(wa[q], teacher_w[q])


def test_dropout_option_sets_every_dropout_and_is_validated(bert_tiny_dir) -> None:
    from bitmaps.core.errors import ConfigError
    from bitmaps.train.models import load_model
    from bitmaps.train.trainer import set_dropout_

    model = load_model("bert-tiny").model
    before = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert before == {0.1}  # BERT-tiny's own
    assert set_dropout_(model, None) is model
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == before
    set_dropout_(model, 0.0)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0
    # with no dropout, training mode computes what eval mode computes
    ids = torch.randint(1000, 2000, (2, 16))
    model.train()
    train_out = model(input_ids=ids).logits
    model.eval()
    torch.testing.assert_close(train_out, model(input_ids=ids).logits)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="dropout"):
            TrainConfig(dropout=bad).validate()
    assert TrainConfig.from_dict({"dropout": 0.2}).dropout == 0.2


def _corrupt(field, value):
    def mutate(raw):
        raw["train_state"][field] = value

    return mutate


def _drop_weight(raw):
    raw["state_dict"].pop("bert.encoder.layer.0.attention.self.query.weight")


RESUME_CASES = {
    "step text": (_corrupt("step", "x"), "training state is corrupt (its step is 'x')"),
    "step negative": (_corrupt("step", -1), "its step is -1"),
    "optimizer text": (_corrupt("optimizer", "x"), "its optimizer is not a dict"),
    "optimizer foreign": (_corrupt("optimizer", {"state": 1}), "training state is corrupt"),
    "history text": (_corrupt("history", "x"), "history is not a list"),
    "rng empty": (_corrupt("rng", []), "random-number states"),
    "world size text": (_corrupt("world_size", "1"), "its world size is '1'"),
    "scaler text": (_corrupt("scaler", "x"), "scaler state is not a dict"),
    "another model's weights": (_drop_weight, "its weights are not this model's"),
}


def test_resume_refuses_a_corrupt_state_or_another_models_weights(
    sotu_small, tmp_path, bert_tiny_dir
) -> None:
    # stop 44's bad-input probe: each of these was a traceback from torch's load_state_dict
    from bitmaps.core.errors import BitmapsError

    partial = tmp_path / "partial.pt"
    run_training(_job(sotu_small, partial, 32, steps=4, save_every=2, stop_after=2), **QUIET)
    raw = torch.load(partial, weights_only=True)
    for case, (mutate, message) in RESUME_CASES.items():
        changed = copy.deepcopy(raw)
        mutate(changed)
        out = tmp_path / "r.pt"
        torch.save(changed, out)
        job = _job(sotu_small, out, 32, steps=4, save_every=2)
        job.resume = True
        with pytest.raises(BitmapsError, match=re.escape(message)) as info:
            run_training(job, **QUIET)
        assert "\n" not in str(info.value), case
    job = _job(sotu_small, partial, 32, steps=4, save_every=2)  # the untouched one resumes
    job.resume = True
    assert run_training(job, **QUIET).step == 4


def test_library_refuses_to_write_over_its_input(tmp_path) -> None:
    """The library checks what the CLI checks: an output that is the model it reads."""
    from bitmaps.core.config import ExportConfig
    from bitmaps.core.errors import BitmapsError
    from bitmaps.export.pipeline import export_baseline, export_student

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"stays")
    job = _job(tmp_path / "missing.txt", ckpt)
    job.model, job.overwrite = str(ckpt), True
    with pytest.raises(BitmapsError, match="is also the model it trains from"):
        run_training(job, **QUIET)
    for export in (export_student, export_baseline):
        with pytest.raises(BitmapsError, match="is also the (checkpoint|model) to export"):
            export(ckpt, ckpt, ExportConfig())
    assert ckpt.read_bytes() == b"stays"


def test_a_run_whose_last_step_leaves_non_finite_weights_is_not_saved(
    sotu_small, tmp_path, bert_tiny_dir, monkeypatch
) -> None:
    """The loss is checked before each step; the weights the last step leaves were saved unchecked
    (a 1-step run at lr 1e30 wrote a "complete" checkpoint scoring NaN). The save refuses them."""
    step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "t.pt"
    with pytest.raises(BitmapsError, match="training diverged by step 1 .*NaN or infinite"):
        run_training(_job(sotu_small, out, seq_len=64, steps=1, batch_size=4), **QUIET)
    assert not out.exists()


def test_a_save_refuses_an_output_another_process_wrote_meanwhile(
    sotu_small, tmp_path, bert_tiny_dir, monkeypatch
) -> None:
    """Stop 48's probe: a file put at the output after the run's start (a second run with the
    same -o) was replaced by the next save without --overwrite. Each save now compares the output
    with what the run found or last wrote; --overwrite still replaces it."""
    import bitmaps.train.trainer as trainer

    real_save, real_rng_state = trainer.save_checkpoint, trainer._rng_state
    calls: list[Path] = []

    def save(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        real_save(path, **kwargs)
        calls.append(path)

    def clobber_then_rng_state(env):  # noqa: ANN001, ANN202
        # the second save begins: meanwhile another process has written the output
        if len(calls) == 1 and clobber:
            Path(calls[0]).write_bytes(b"another run's file")
            clobber.clear()
        return real_rng_state(env)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    monkeypatch.setattr(trainer, "_rng_state", clobber_then_rng_state)
    clobber = [True]
    out = tmp_path / "t.pt"
    with pytest.raises(BitmapsError, match="written by something else while this run went on"):
        run_training(_job(sotu_small, out, seq_len=64, steps=2, batch_size=4, save_every=1),
                     **QUIET)  # fmt: skip
    assert out.read_bytes() == b"another run's file" and len(calls) == 1
    calls.clear()
    out.unlink()
    clobber.append(True)
    job = _job(sotu_small, out, seq_len=64, steps=2, batch_size=4, save_every=1)
    run_training(dataclasses.replace(job, overwrite=True), **QUIET)
    assert len(calls) == 2 and out.read_bytes() != b"another run's file"


def test_a_student_resumed_with_another_teacher_is_refused(
    sotu_small, tmp_path, bert_tiny_dir
) -> None:
    """A teacher of the same shape with other weights loads without complaint, so the run would
    mix two teachers; the state records the teacher's digest and a resume checks it."""
    from bitmaps.core.config import BinarizeConfig, DistillConfig

    teachers = [tmp_path / "teacher-a.pt", tmp_path / "teacher-b.pt"]
    run_training(_job(sotu_small, teachers[0], steps=1), **QUIET)
    run_training(_job(sotu_small, teachers[1], steps=2), **QUIET)

    def student_job(teacher: Path, **train) -> TrainJob:
        job = _job(sotu_small, tmp_path / "s.pt", stage="student", steps=4, save_every=1, **train)
        job.model = str(teacher)
        job.binarize, job.distill = BinarizeConfig(), DistillConfig()
        return job

    run_training(student_job(teachers[0], stop_after=1), **QUIET)
    job = student_job(teachers[1])
    job.resume = True
    with pytest.raises(BitmapsError, match="trained from another teacher than .*teacher-b.pt"):
        run_training(job, **QUIET)
    job = student_job(teachers[0])
    job.resume = True
    assert run_training(job, **QUIET).complete


@pytest.mark.parametrize("at_save", [1, 2])
def test_an_output_written_during_a_save_is_not_replaced(
    sotu_small, tmp_path, bert_tiny_dir, monkeypatch, at_save
) -> None:
    """The check before a save left the seconds of torch.save open: two runs started at once on
    one absent output both wrote it, the last silently replacing the first (1 in 4 on 2 cores).
    The save is published only if the output is still what the run saw (absent: a hard link,
    which fails where a file is)."""
    import bitmaps.core.checkpoint as checkpoint

    real_save = checkpoint.torch.save
    out = tmp_path / "t.pt"
    saves: list[int] = []

    def save_while_another_writes(obj, f):  # noqa: ANN001, ANN202
        real_save(obj, f)
        saves.append(1)
        if len(saves) == at_save:  # meanwhile another run writes the output
            tmp = tmp_path / "other.tmp"
            tmp.write_bytes(b"another run's file")
            os.replace(tmp, out)

    monkeypatch.setattr(checkpoint.torch, "save", save_while_another_writes)
    job = _job(sotu_small, out, seq_len=64, steps=2, batch_size=4, save_every=1)
    with pytest.raises(BitmapsError, match="written by something else while this run went on"):
        run_training(job, **QUIET)
    assert out.read_bytes() == b"another run's file" and len(saves) == at_save
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".t.pt.")]  # no temporary

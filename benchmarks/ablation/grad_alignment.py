"""Why the hidden-state and attention MSE terms hurt: their size and direction against the KL term.

For a binarized student (a fresh W1A1 copy of the teacher, or a trained student checkpoint) and a
few training batches, each distillation term is evaluated on its own and its gradient over the
student's trainable parameters is compared with the gradient of the KL term, the term the
masked-LM metric follows most closely:

- ``value``: the term, unweighted;
- ``grad_norm`` and ``ratio`` = ‖∇term‖ / ‖∇KL‖: at λ = 1, how hard the term pulls against the KL;
- ``cos_kl``: cosine between ∇term and ∇KL (summed over the batches): > 0 helps the KL descend,
  ≈ 0 spends the step elsewhere, < 0 fights it.

It also prints, per layer, the teacher's mean square of the hidden states and attention scores
(what ``mse_norm="layer"`` divides by). Nothing is trained; a handful of forward and backward passes.

    python benchmarks/ablation/grad_alignment.py --teacher runs/c1/teacher.pt --data $SOTU \\
        [--student runs/ablation/r300-logits.pt] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from bitmaps.core.config import BinarizeConfig, DataConfig, DistillConfig
from bitmaps.data.corpus import TrainStream, build_corpus
from bitmaps.metrics.mlm import MaskedLMModel
from bitmaps.train.binary_linear import binarize_
from bitmaps.train.distill import DistillationObjective
from bitmaps.train.models import load_model

OFF = dict(lambda_mlm=0.0, lambda_logit=0.0, lambda_hidden=0.0, lambda_attn=0.0)
TERMS: dict[str, dict] = {
    "kl": dict(OFF, lambda_logit=1.0),
    "mlm": dict(OFF, lambda_mlm=1.0),
    "hidden (raw Σ)": dict(OFF, lambda_hidden=1.0),
    "hidden (layer-normalized)": dict(OFF, lambda_hidden=1.0, mse_norm="layer"),
    "hidden (last layer)": dict(OFF, lambda_hidden=1.0, hidden_layers="last"),
    "attn scores (raw Σ)": dict(OFF, lambda_attn=1.0),
    "attn scores (layer-normalized)": dict(OFF, lambda_attn=1.0, mse_norm="layer"),
    "attn probs (raw Σ)": dict(OFF, lambda_attn=1.0, attention_target="probs"),
}


def _grad(model: torch.nn.Module, objective: DistillationObjective, batches: list) -> tuple:
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    value = 0.0
    for batch in batches:
        loss, parts = objective(model, batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t.add_(g)
        value += float(sum(parts.values())) / len(batches)
    return torch.cat([t.flatten() for t in total]), value


def layer_scales(teacher: torch.nn.Module, batch: dict) -> list[float]:
    with torch.no_grad():
        out = teacher(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
    return [float(h.float().square().mean()) for h in out.hidden_states]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--student", help="a trained student checkpoint (default: fresh W1A1 copy)")
    p.add_argument("--quantizer", default="elastic")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json")
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    source = load_model(a.teacher)
    teacher = source.model.eval()
    if a.student:
        student = load_model(a.student).model
    else:
        student = copy.deepcopy(teacher)
        binarize_(student, BinarizeConfig(activation_quantizer=a.quantizer))
    corpus = build_corpus([a.data], source.tokenizer, DataConfig(), log=lambda _m: None)
    stream = TrainStream(corpus.train, source.tokenizer, DataConfig(), batch_size=a.batch_size)
    batches = [next(stream) for _ in range(a.batches)]
    wrapped = MaskedLMModel(student)
    with torch.no_grad():  # a training-mode forward initialises every elastic α
        student.train()(
            input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"]
        )
    wrapped.eval()  # no dropout: the comparison is between terms, not noise
    rows, ref = [], None
    for name, fields in TERMS.items():
        objective = DistillationObjective(teacher, DistillConfig(**fields))
        grad, value = _grad(wrapped, objective, batches)
        if ref is None:
            ref = grad
        rows.append(
            {
                "term": name,
                "value": value,
                "grad_norm": float(grad.norm()),
                "ratio": float(grad.norm() / ref.norm()),
                "cos_kl": float(torch.nn.functional.cosine_similarity(grad, ref, dim=0)),
            }
        )
    scales = layer_scales(MaskedLMModel(teacher).model, batches[0])
    print(f"student: {a.student or 'fresh W1A1 copy of the teacher (' + a.quantizer + ')'}")
    print("| term (λ = 1) | value | ‖∇‖ | ‖∇‖ / ‖∇KL‖ | cos(∇, ∇KL) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['term']} | {r['value']:.4g} | {r['grad_norm']:.3g} | {r['ratio']:.3g} | "
            f"{r['cos_kl']:+.3f} |"
        )
    print(
        "teacher mean square of hidden states, embeddings … last layer: "
        + ", ".join(f"{s:.3g}" for s in scales)
    )
    print(f"({a.batches} batches of {a.batch_size}, {time.perf_counter() - t0:.0f} s)")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(
                {"student": a.student, "rows": rows, "hidden_mean_square": scales}, f, indent=2
            )


if __name__ == "__main__":
    main()

"""The non-binary remainder of binary BERT-base in ONNX Runtime, per export target.

For each target (portable, onnxruntime) the binary BERT-base-shaped student (random weights,
binarized as ``bitmaps profile --shape`` binarizes it: the elastic quantizer, fixed activation
scales; encoder only: ``--output hidden``, int4 embeddings as ``bitmaps export`` ships them) is
exported through the real pipeline (verified on the native op), opened with ``libbitmaps_ort.so``
registered, and timed at batch x seq. ONNX Runtime's own profiler then splits one run's node time
into the binary nodes (BinaryLinear, BinaryFeedForward) and everything else (the remainder that
the onnxruntime target's float ops are meant to shrink). The binary nodes' binary
multiply-accumulates per second are then quoted as a share of this CPU's popcount ceiling
measured in the same run, on as many threads as the sessions use (the fastest binary loop of
bench_popcount_ceiling.py on this CPU, as bench_model_breakdown.py does for the PyTorch path;
sampled before the timing and after the node profiles, the larger kept):
issue 12's "binary linears >= 70 % of the ceiling", measured on the ONNX Runtime engine. In the onnxruntime
row each FFN is one BinaryFeedForward node (no GELU evaluated at run time); where it is two
nodes, the GELU is fused into the first and counted there.

A third row, ``onnxruntime, ORT float ops``, is the onnxruntime export with bitmaps' own float
ops swapped back for ONNX Runtime's (:func:`ort_float_ops`: com.microsoft MultiHeadAttention, after
a Split of the stacked Q, K, V, Add + LayerNormalization, the embeddings' GatherBlockQuantized +
Add + LayerNormalization, each FFN as two BinaryLinear nodes with a Gelu node between): the same
weights and GEMM kernels, so its difference to the onnxruntime row is what those ops win. A
fourth row, ``onnxruntime, Q K V separate``, splits each stacked Q, K, V BinaryLinear back into
three nodes feeding bitmaps::MultiHeadAttention (:func:`separate_qkv`): what the stacking wins. A
fifth, ``onnxruntime, FFN as two nodes``, splits each BinaryFeedForward back into its two
BinaryLinear nodes (:func:`split_ffns`): what that fusion wins. A sixth, ``onnxruntime, int8
attention``, is the onnxruntime export with ``--attention int8`` (stop 35; its output differs from
the others': rounded attention, and random weights let a flipped activation bit cascade).

    .venv/bin/python benchmarks/bench_export_targets.py [--batch 1] [--seq 128] [--runs 30]

Prints a markdown table; ``--out FILE.json|csv|md`` also writes the rows (benchmarks/bench_results.py).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import tempfile
from collections import defaultdict

import numpy as np
import onnx
import onnx.inliner
import torch
from bench_model_breakdown import peak_of, popcount_ceiling_gmacs
from bench_results import markdown_table, parse_with_outputs, run_meta, write_outputs
from onnx import helper
from transformers import BertConfig, BertForMaskedLM

from bitmaps.core.config import ExportConfig
from bitmaps.core.embeddings import STUDENT_EMBEDDING_GROUP, STUDENT_EMBEDDINGS
from bitmaps.core.ort import inference_session, native_library, session_options
from bitmaps.export.onnx_function import BINARY_FFN_ATTRIBUTES, BINARY_FFN_OP_TYPE, FEEDS
from bitmaps.export.pipeline import export_verified
from bitmaps.runtime.backends import SHAPE_BINARIZE
from bitmaps.runtime.timing import cpu_timer, time_alternating
from bitmaps.train.binary_linear import binarize_


def _student() -> BertForMaskedLM:
    """BERT-base shapes, random weights, binarized as ``bitmaps profile --shape`` binarizes them
    (SHAPE_BINARIZE: the elastic quantizer, fixed activation scales)."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()).eval()
    binarize_(model, SHAPE_BINARIZE)
    return model


def export_student(target: str, attention: str = "float") -> onnx.ModelProto:
    """:func:`_student` exported for ``target`` through the real pipeline (verified on the native
    op), encoder only, with the embeddings `bitmaps export` ships by default; ``attention`` as
    ``bitmaps export --attention``."""
    cfg = ExportConfig(
        output="hidden",
        target=target,
        backends=("kernel",),
        embeddings=STUDENT_EMBEDDINGS,
        embedding_group=STUDENT_EMBEDDING_GROUP,
        attention=attention,
    )
    return export_verified(_student(), cfg, binary=True).model


def split_ffns(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (an onnxruntime-target export) with each bitmaps::BinaryFeedForward as the two
    BinaryLinear nodes it replaced (the first with its fused GELU): the same weights and GEMM
    kernels, the intermediate as a float tensor between two nodes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.domain != "bitmaps" or node.op_type != BINARY_FFN_OP_TYPE:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        layers: list[dict] = [{}, {"in_features": attrs["hidden_features"]}]
        for name, (layer, attribute) in BINARY_FFN_ATTRIBUTES.items():
            layers[layer][attribute] = attrs[name]
        names = node.name.split(FEEDS)
        hidden = f"{node.output[0]}_hidden"
        for i, (inputs, output) in enumerate(
            [(node.input[:4], [hidden]), ([hidden, *node.input[4:]], list(node.output))]
        ):
            nodes.append(helper.make_node("BinaryLinear", list(inputs), output, name=names[i],
                                          domain="bitmaps", **layers[i]))  # fmt: skip
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def ort_float_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (an onnxruntime-target export) with bitmaps::MultiHeadAttention as
    com.microsoft MultiHeadAttention, bitmaps::SkipLayerNormalization as Add +
    LayerNormalization, bitmaps::EmbedLayerNormalization as the three GatherBlockQuantized, two
    Add and the LayerNormalization it replaced, and each BinaryLinear's fused GELU
    (``activation = 1``) as a Gelu node."""
    out = split_ffns(model)
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain == "bitmaps" and node.op_type == "MultiHeadAttention":
            q, k, v, bias = node.input
            nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, "", "", bias],
                                          list(node.output), name=node.name,
                                          domain="com.microsoft", **attrs))  # fmt: skip
        elif node.domain == "bitmaps" and node.op_type == "PackedMultiHeadAttention":
            qkv, bias = node.input  # the stacked Q, K, V BinaryLinear stays; ONNX Runtime splits
            q, k, v = (f"{node.output[0]}_{part}" for part in "qkv")
            nodes += [
                helper.make_node("Split", [qkv], [q, k, v], axis=-1, num_outputs=3),
                helper.make_node("MultiHeadAttention", [q, k, v, "", "", bias],
                                 list(node.output), name=node.name, domain="com.microsoft",
                                 **attrs),
            ]  # fmt: skip
        elif node.domain == "bitmaps" and node.op_type == "SkipLayerNormalization":
            x, skip, gamma, beta = node.input
            total = f"{node.output[0]}_sum"
            nodes += [
                helper.make_node("Add", [x, skip], [total]),
                helper.make_node("LayerNormalization", [total, gamma, beta], list(node.output),
                                 axis=-1, epsilon=attrs["epsilon"]),
            ]  # fmt: skip
        elif (
            node.domain == "bitmaps" and node.op_type == "BinaryLinear" and attrs.get("activation")
        ):
            linear = onnx.NodeProto()
            linear.CopyFrom(node)
            kept = [a for a in linear.attribute if a.name != "activation"]
            del linear.attribute[:]
            linear.attribute.extend(kept)
            linear.output[0] = f"{node.output[0]}_linear"
            nodes += [linear, helper.make_node("Gelu", [linear.output[0]], [node.output[0]])]
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    # the embeddings node: its model-local function is exactly the nodes it replaced
    return onnx.inliner.inline_selected_functions(out, [("bitmaps", "EmbedLayerNormalization")])


def separate_qkv(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (an onnxruntime-target export) with each stacked Q, K, V BinaryLinear split back
    into its three layers (panels, scales and biases sliced) feeding bitmaps::MultiHeadAttention:
    what the target wrote before it stacked them, same weights and kernels."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    stacked = {}
    nodes = []
    for node in out.graph.node:
        if node.domain == "bitmaps" and node.op_type == "PackedMultiHeadAttention":
            qkv, bias = node.input
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(helper.make_node("MultiHeadAttention", [*stacked[qkv], bias],
                                          list(node.output), name=node.name, domain="bitmaps",
                                          **attrs))  # fmt: skip
        elif node.op_type == "BinaryLinear" and "+" in node.name:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            width = attrs["out_features"] // 3
            outputs = []
            for i, layer in enumerate(node.name.split("+")):
                inputs = [node.input[0]]
                for j, name in enumerate(node.input[1:]):
                    array = onnx.numpy_helper.to_array(inits[name])
                    rows = width // 16 if j == 0 else width  # panels of 16 rows, then per row
                    part = f"{layer}.{name.rsplit('.', 1)[-1]}"
                    out.graph.initializer.append(
                        onnx.numpy_helper.from_array(array[i * rows : (i + 1) * rows], part)
                    )
                    inputs.append(part)
                outputs.append(f"{node.output[0]}_{i}")
                nodes.append(helper.make_node("BinaryLinear", inputs, [outputs[-1]], name=layer,
                                              domain=node.domain,
                                              **{**attrs, "out_features": width}))  # fmt: skip
            stacked[node.output[0]] = outputs
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _session(model, threads: int, profile_dir: str | None = None, spin: bool = True):  # noqa: ANN001, ANN202
    """A session as bitmaps opens them (bitmaps/core/ort.py: its graph options included), on the
    native op; ``spin=False`` for sessions timed in turns (a spinning pool steals the next call's
    cores)."""
    so = session_options(threads)
    so.register_custom_ops_library(native_library())
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort")
    return inference_session(model, so)


def binary_macs(model: onnx.ModelProto, rows: int) -> int:
    """Binary multiply-accumulates of one run: in_features x out_features per row of every
    BinaryLinear node, both layers of every BinaryFeedForward node."""
    total = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "BinaryLinear":
            total += int(attrs["in_features"]) * int(attrs["out_features"]) * rows
        elif node.op_type == BINARY_FFN_OP_TYPE:
            hidden = int(attrs["hidden_features"])
            total += hidden * (int(attrs["in_features"]) + int(attrs["out_features"])) * rows
    return total


def _main_thread_wait_us(args: dict) -> float:
    """The calling thread's wait for the pool in a node event's ``thread_scheduling_stats`` (an
    object, or a JSON string, or absent where the node ran no parallel section)."""
    stats = args.get("thread_scheduling_stats", {})
    if isinstance(stats, str):
        try:
            stats = json.loads(stats) if stats.strip() else {}
        except ValueError:
            return 0.0
    main = stats.get("main_thread", {}) if isinstance(stats, dict) else {}
    return float(main.get("Wait", 0)) if isinstance(main, dict) else 0.0


def profile_runs(model, feed: dict, runs: int, threads: int) -> list[dict[str, dict[str, float]]]:  # noqa: ANN001
    """ONNX Runtime's profiler over ``runs`` runs: per run (its ``model_run`` event's window), per
    op type, ``ms``: the node time summed, and ``wait_ms``: the time the calling thread waited in
    the op's parallel sections for the pool's other threads (``thread_scheduling_stats``; 0 at one
    thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(model, threads, tmp)
        for _ in range(runs):
            session.run(None, feed)
        events = json.load(open(session.end_profiling()))
    windows = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    starts = [start for start, _ in windows]
    per_run = [defaultdict(lambda: {"ms": 0.0, "wait_ms": 0.0}) for _ in windows]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1  # the last run that started before it
        if i < 0 or e["ts"] > windows[i][1]:
            continue  # outside every run (warm-up work of the session)
        entry = per_run[i][e["args"]["op_name"]]
        entry["ms"] += e["dur"] / 1e3
        entry["wait_ms"] += _main_thread_wait_us(e["args"]) / 1e3
    return per_run


def per_op_median(
    per_run: list[dict[str, dict[str, float]]], field: str = "ms"
) -> dict[str, float]:
    """Each op type's median over the runs of :func:`profile_runs`' ``field``, largest first."""
    ops = {op for run in per_run for op in run}
    by_op = {
        op: statistics.median(run[op][field] if op in run else 0.0 for run in per_run) for op in ops
    }
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _node_split(model, feed: dict, runs: int, threads: int) -> dict[str, float]:  # noqa: ANN001
    """Node time per run by op type (ms), from ONNX Runtime's profiler: each op type's time summed
    within each run, then the median over the runs, so that a few runs slowed by the shared
    machine do not move the split (a mean did: one profiled window summed to 25.7 ms per run beside
    a 20.5 ms p50 of the timed runs)."""
    return per_op_median(profile_runs(model, feed, runs, threads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = parse_with_outputs(p)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (args.batch, args.seq), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    exports = ("portable", "onnxruntime")
    targets = (*exports, "onnxruntime, ORT float ops", "onnxruntime, Q K V separate",
               "onnxruntime, FFN as two nodes", "onnxruntime, int8 attention")  # fmt: skip
    models, sessions = {}, {}
    for target in exports:
        models[target] = export_student(target)
    models[targets[2]] = ort_float_ops(models["onnxruntime"])
    models[targets[3]] = separate_qkv(models["onnxruntime"])
    models[targets[4]] = split_ffns(models["onnxruntime"])
    models[targets[5]] = export_student("onnxruntime", attention="int8")
    threads = args.threads or os.cpu_count() or 1
    # The ceiling is a peak: sampled before the timing and after the node profiles, the larger
    # kept, so that a burst of load from another tenant during one sample does not lower it
    # (Zen 1, 2026-12-05: one run's single sample read 275 G binary MAC/s against 434 in the next)
    ceilings = [popcount_ceiling_gmacs(threads)]
    outputs = {}
    for target in targets:
        sessions[target] = _session(models[target], args.threads, spin=False)
        for _ in range(5):
            outputs[target] = sessions[target].run(None, feed)[0]
    # interleaved, so load from other processes hits both alike
    timers = [cpu_timer(lambda i, s=sessions[t]: s.run(None, feed)) for t in targets]
    times = dict(zip(targets, time_alternating(timers, args.runs), strict=True))
    splits = {t: _node_split(models[t], feed, args.runs, args.threads) for t in targets}
    ceilings.append(popcount_ceiling_gmacs(threads))  # its loops heat the cores alike
    ceiling = peak_of(ceilings)
    rows = []
    for target in targets:
        diff = float(np.abs(outputs[target] - outputs["portable"]).max())
        by_op = splits[target]
        binary_ms = by_op.pop("BinaryLinear", 0.0) + by_op.pop(BINARY_FFN_OP_TYPE, 0.0)
        other_ms = sum(by_op.values())
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(by_op.items())[:5])
        rows.append({
            "target": target, "batch": args.batch, "seq": args.seq, "threads": args.threads,
            "p50_ms": statistics.median(times[target]), "min_ms": min(times[target]),
            "binary_linear_ms": binary_ms, "remainder_ms": other_ms,
            "remainder_share": other_ms / (binary_ms + other_ms), "remainder_top_ms": top,
            "max_abs_diff_vs_portable": diff,
            "binary_macs": binary_macs(models[target], args.batch * args.seq),
            "ceiling_gmacs": ceiling, "ceiling_threads": threads,
            "ceiling_gmacs_samples": ceilings,
        })  # fmt: skip
    text = table(rows)
    print(text)
    write_outputs(args.out, rows, run_meta(), text)


def table(rows: list[dict]) -> str:
    """The markdown table of the rows (what is printed, and what make_results.py renders)."""
    head = ("target", "batch x seq", "p50 ms", "min ms", "BinaryLinear ms", "remainder ms",
            "share", "largest remainder ops (ms)")  # fmt: skip
    cells = [
        [r["target"], f"{r['batch']}x{r['seq']}"]
        + [f"{r[k]:.1f}" for k in ("p50_ms", "min_ms", "binary_linear_ms", "remainder_ms")]
        + [f"{100 * r['remainder_share']:.0f} %", r["remainder_top_ms"]]
        for r in rows
    ]
    text = markdown_table(head, cells)
    for r in rows:  # files written before the ceiling was measured have no such fields
        ceiling, macs = r.get("ceiling_gmacs"), r.get("binary_macs")
        if r["target"] != "onnxruntime" or not ceiling or not macs or not r["binary_linear_ms"]:
            continue
        rate = macs / (r["binary_linear_ms"] / 1e3) / 1e9
        text += (
            f"\n\nThe onnxruntime target's binary nodes (BinaryLinear, and BinaryFeedForward "
            f"where the FFN is one node; otherwise the FFN's GELU is fused into its first node): "
            f"{macs / 1e9:.2f} G binary MACs per run in {r['binary_linear_ms']:.2f} ms of node "
            f"time = {rate:.0f} G binary MAC/s, **{rate / ceiling:.0%}** of this CPU's popcount "
            f"ceiling measured in the same run ({ceiling:.0f} G binary MAC/s on "
            f"{r['ceiling_threads']} threads: the fastest binary loop of bench_popcount_ceiling.py)."
        )
    return text


if __name__ == "__main__":
    main()

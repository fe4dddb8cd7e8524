#!/usr/bin/env python
"""Render results/*.json between <!-- results:NAME --> markers of the README and docs/results.md (never typed by hand).

    python scripts/render_results.py            # rewrite both files' tables and the plots
    python scripts/render_results.py --check    # CI: fail when either file lags the results files
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dualtvm.paper import (FIGURE4, TABLE4_BLEU, TABLE5_DENSE_MS, TABLE5_TIME,  # noqa: E402  (data only: no TVM)
                           TABLE7_PPL)
from dualtvm.results import load_results  # noqa: E402


def by_machine(doc: dict, rows: list[dict], table) -> str:
    """``table(rows)`` once per machine the rows were timed on, each under its machine's name when there are
    several (rows written before rows named their machine are the file's)."""
    from dualtvm.results import short_machine

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("machine", doc.get("machine", "?")), []).append(r)
    if len(groups) == 1:
        return table(rows)
    return "\n\n".join(f"On {short_machine(m)}:\n\n{table(g)}" for m, g in groups.items())


def latency(doc: dict) -> str:
    rows = [r for r in doc["rows"] if not r["engine"].startswith("tvm-dual") or r["insensitive_ratio"] in (0.5, 0.9)]
    return by_machine(doc, rows, _latency_table)


def _latency_rows(doc: dict) -> list[dict]:
    """The latency rows, each naming its machine, weights and run target (``-mcpu`` only: :func:`_run_target`), rows
    from before rows named them included: the keys the per-run tables group by."""
    from dualtvm.bench import weights_origin
    from dualtvm.results import doc_rows

    return [{**r, "weights_origin": weights_origin(r.get("weights", "")), "run_target": _run_target(r)}
            for r in doc_rows(doc)]


def latency_latest(doc: dict) -> str:
    """The machine of the latest run, one line per model, weights, target and cache: the dense step against the best
    peer, and the INT8 / INT4 dual steps at 50 % and 90 % (every ratio and engine: the full table); then the commands
    that made the lines."""
    from dualtvm.bench import cache_label
    from dualtvm.results import latest_machine, short_machine

    rows = _latency_rows(doc)
    machine = latest_machine(rows)
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["machine"] == machine:
            runs.setdefault((r["model"], r["weights_origin"], r["run_target"], cache_label(r)), []).append(r)
    commands = list(dict.fromkeys(r["command"] for rs in runs.values() for r in rs))

    def dual(rs: list[dict], engine: str, ratio: float, key: str = "speedup_vs_tvm_dense") -> str:
        found = [r for r in rs if r["engine"] == engine and abs(r["insensitive_ratio"] - ratio) < 1e-9]
        return _with_spread(found[0], key) if found and key.startswith("speedup") else (
            str(found[0].get(key, "")) if found else "–")

    lines = []
    for (model, weights, target, cache), rs in sorted(runs.items(), key=lambda kv: (*kv[0][:3], kv[0][3] != "warm")):
        dense = next((r for r in rs if r["engine"] == "tvm-dense"), {})
        peer = min((r for r in rs if not r["engine"].startswith("tvm")), key=lambda r: r["median_ms"], default=None)
        lines.append([model, weights, target, cache, f"{dense['median_ms']:.3f}" if dense else "–",
                      f"{peer['median_ms']:.3f} ({peer['engine']})" if peer else "–",
                      _with_spread(dense, "speedup_vs_best_peer") if dense else "–",
                      dual(rs, "tvm-dual", 0.5), dual(rs, "tvm-dual-int4", 0.5),
                      dual(rs, "tvm-dual", 0.5, "byte_bound_speedup"), dual(rs, "tvm-dual", 0.9),
                      f"[{commands.index(rs[0]['command']) + 1}]"])
    out = [f"{short_machine(machine)}:", ""]
    out += _table(["model", "weights", "run target", "cache", "dense TVM ms", "best peer ms", "dense × best peer",
                   "INT8 50 %: × dense (quartiles)", "INT4 50 %: × dense", "byte bound × at 50 %", "INT8 90 %: × dense",
                   "run"], lines)
    out += ["", "Runs:", ""] + [f"{i}. `{c}`" for i, c in enumerate(commands, 1)]
    return "\n".join(out)


def _latency_table(rows: list[dict]) -> str:
    from dualtvm.bench import cache_label, weights_origin

    out = ["| model | weights | run target | cache | engine | ratio | median ms | × TVM dense (quartiles over rounds) | "
           "× best peer (quartiles) | byte bound × |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {weights_origin(r.get('weights', ''))} | {_run_target(r)} | {cache_label(r)} | {r['engine']} | {r['insensitive_ratio']:.1f} | {r['median_ms']:.3f} | "
                   f"{_with_spread(r, 'speedup_vs_tvm_dense')} | {_with_spread(r, 'speedup_vs_best_peer')} | "
                   f"{r.get('byte_bound_speedup', '') or ''} |")
    return "\n".join(out)


def latency_goals(doc: dict) -> str:
    """Issue #5's goals at a glance, per machine: how many of the rows each goal judges meet it, the worst and the
    best."""
    from dualtvm.bench import weights_origin
    from dualtvm.goals import LATENCY_GOALS

    def which(r: dict) -> str:
        ratio = f", {100 * r['insensitive_ratio']:.0f} %" if r["engine"] != "tvm-dense" else ""
        weights = weights_origin(r.get("weights", ""))
        return f"{r['model']} ({weights}), {_run_target(r)}, {r['engine']}, {r['cache']}{ratio}"

    return by_machine(doc, doc["rows"], lambda rows: _goals_table(rows, LATENCY_GOALS, which))


def quality_goals(doc: dict) -> str:
    """Issue #3's goals at a glance, over the PTB quality and allocation rows."""
    from dualtvm.goals import QUALITY_GOALS

    def which(r: dict) -> str:
        return f"{r['model']}, {r['part']} {r.get('variant', '')}".strip()

    return _goals_table(doc["rows"], QUALITY_GOALS, which) + "\n\n" + quality_goals_by_model(doc["rows"])


def quality_goals_by_model(rows: list[dict]) -> str:
    """Each quality goal per model (one training each): its best row and that row's configuration, beside the rows
    made with the paper's own method — which options a model needs to meet the goal."""
    from dualtvm.goals import QUALITY_GOALS, goal_status_by_model, is_paper_method

    out = ["Per model (each training apart): the best row and its configuration; *paper's method*: the rows made as "
           "the paper makes its little module and mask (eq. 2 at ε = 0.5, eq. 5, INT8, one ratio for every gate)."]
    for goal in QUALITY_GOALS:
        lines = []
        for model, st in goal_status_by_model(rows, goal).items():
            paper = [goal.shown(r) for r in st.rows if is_paper_method(r)]
            best = st.best
            configuration = " ".join(v for v in ("" if best["part"] == "largest-within-1pct" else best["part"],
                                                 best.get("variant", "")) if v)
            lines.append([model, len(st.rows), st.met, f"{goal.shown(best)} ({configuration})", ", ".join(paper)])
        out += ["", f"{goal.text}:", "", *_table(["model", "rows", "met", "best row (configuration)",
                                                  "paper's method"], lines)]
    return "\n".join(out)


def _goals_table(rows: list[dict], goals, which) -> str:
    """One line per goal: rows judged, rows meeting it, and the worst and best of them (value, ``which(row)``)."""
    from dualtvm.goals import goal_status

    out = []
    for st in goal_status(rows, goals):
        def show(r: dict, goal=st.goal) -> str:
            own = f"limit {goal.show(goal.limit_of(r))}; " if callable(goal.limit) else ""  # a limit per row: say it
            return f"{goal.shown(r)} ({own}{which(r)})"

        out.append([st.goal.text, len(st.rows), st.met, show(st.worst) if st.rows else "no rows",
                    show(st.best) if st.rows else ""])
    return "\n".join(_table(["goal", "rows", "met", "worst row", "best row"], out))


def _run_target(r: dict) -> str:
    """The row's -mcpu ('broadwell' for rows written before rows named their target)."""
    return r.get("run_target", "llvm -mcpu=broadwell").removeprefix("llvm -mcpu=")


def breakdown(doc: dict) -> str:
    """Table 5's right half: each step's kernels timed inside the step, and what the VM (and the Python
    instrument that times it, two callbacks per VM call) add on top."""
    rows = [r for r in doc["rows"] if "breakdown_ms" in r and not (r["engine"].startswith("tvm-dual")
                                                                  and r["insensitive_ratio"] not in (0.5, 0.9))]
    return by_machine(doc, rows, _breakdown_table)


def _breakdown_table(rows: list[dict]) -> str:
    out = ["| model | run target | engine | cache | ratio | step ms (instrumented) | projection | little | mask | big | "
           "assembly | kernels Σ | VM + instrument |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["breakdown_ms"]
        out.append(f"| {r['model']} | {_run_target(r)} | {r['engine']} | {r['cache']} | {r['insensitive_ratio']:.1f} | "
                   f"{r.get('breakdown_step_ms', r['median_ms']):.3f} | {b['projection']} | "
                   f"{b['little']} | {b['mask']} | {b['big']} | {b['assembly']} | {r['kernels_ms']} | {r['overhead_ms']} |")
    return "\n".join(out)


def baselines(doc: dict) -> str:
    out = ["| model | epochs | metric | train | valid | test | wall s | command |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "finetune_batches" in r:  # older pruning rows lack their base's epochs: the base row has them
            base_epochs = r.get("epochs", next((b.get("epochs") for b in doc["rows"] if b["model"] == r.get("pruned_from")), "?"))
            epochs = f"{base_epochs} + {r['finetune_batches']} batches"
        else:
            epochs = r.get("epochs", "")
        metric = "BLEU" if "test_bleu" in r else "PPL"
        out.append(f"| {r['model']} | {epochs} | {metric} | {r.get('train_ppl', '')} | "
                   f"{r.get('valid_ppl', r.get('valid_bleu', ''))} | {r.get('test_ppl', r.get('test_bleu', ''))} | "
                   f"{r['wall_s']} | `{r['command']}` |")
    return "\n".join(out)


def _unpruned(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "-sparse" not in r["model"]]  # pruned models have their own table (7)


def _table(header: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: "" if v is None else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]


def lm_quality(doc: dict) -> str:
    """Tables 2/3, the per-gate allocation, and Tables 1, 5 and 6 (PTB test PPL), one table each."""
    rows = _unpruned(doc["rows"])
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r.get("variant", "") for r in rows))  # in the order the results file has them
    part = lambda name: sorted((r for r in rows if r["part"] == name),  # noqa: E731
                               key=lambda r: (models.index(r["model"]), r.get("variant") != "base",
                                              variants.index(r.get("variant", "")), r["insensitive_ratio"]))
    out = ["Tables 2/3, one insensitive ratio for every gate:", ""]
    out += _table(["model", "big epochs", "little module", "ratio asked", "measured", "PPL", "ΔPPL %", "paper PPL"],
                  [[r["model"], r.get("big_epochs"), r["variant"], r["insensitive_ratio"], r["measured_ratio"], r["ppl"],
                    r["delta_ppl_pct"], r.get("paper_ppl")] for r in part("uniform")])
    gates = lambda d: " ".join(f"{g} {v}" for g, v in d.items())  # noqa: E731
    out += ["", "Beyond the paper: the ratio allocated per gate (greedy on valid: *greedy-allocation* weighs each gate's "
            "squared activation error alike, *loss-aware* by the loss gradient at each output, a diagonal-Fisher estimate "
            "of the loss increase) for an overall ratio, and the largest overall ratio within +1 % PPL (chosen on valid, "
            "reported on test); *valid ΔPPL* is what picks between the two costs (marked *picked*); the last column is "
            "the measured ratio of each gate:", ""]
    out += _table(["model", "part", "how", "ratio", "measured", "PPL", "ΔPPL %", "valid ΔPPL %", "per gate"],
                  [[r["model"], r["part"], r["variant"], r["insensitive_ratio"], r["measured_ratio"], r["ppl"], r["delta_ppl_pct"],
                    _valid_delta(r), _gate_ratios(r)]
                   for r in part("per-gate") + part("largest-within-1pct")])
    out += ["", "Table 1, random error (relative std in the row) added to the pre-activations of one half of the rows "
            "(split by the little module's mask at 50 %): cosine similarity to the clean values before and after each gate's φ, "
            "and PPL:", ""]
    out += _table(["model", "errors in", "relative std", "cos before φ", "cos after φ", "PPL", "ΔPPL %"],
                  [[r["model"], r["variant"].removeprefix("errors in the "), r.get("relative_std"), gates(r["cos_before"]),
                    gates(r["cos_after"]), r["ppl"], r["delta_ppl_pct"]] for r in part("resilience")])
    out += ["", "Table 5 (quality half), ε of eq. 3 at 50 %:", ""]
    out += _table(["model", "ε", "k", "measured", "PPL", "ΔPPL %"],
                  [[r["model"], r["variant"].removeprefix("eps"), r.get("k"), r["measured_ratio"], r["ppl"], r["delta_ppl_pct"]]
                   for r in part("eps")])
    out += ["", "Table 6, W_LL precision at 50 % (thresholds recalibrated for each precision; INT2 scales searched per row "
            "for the least squared error, INT4's too in rows measured since session 34, and at INT4 and below W_LL's "
            "columns equalised onto the projection's row scales since session 35; *per-tensor*: one scale for the whole of "
            "W_LL instead of one per row (rows since session 43); MSE of the little "
            "pre-activations on valid; parameter sizes as the paper counts them, without those 2k row scales):", ""]
    out += _table(["model", "precision", "MSE", "little MB", "big MB", "little / big %", "measured", "PPL", "ΔPPL %"],
                  [[r["model"], r["variant"], r["mse"], r["little_param_mb"], r["big_param_mb"],
                    round(100 * r["little_param_mb"] / r["big_param_mb"], 1), r["measured_ratio"], r["ppl"], r["delta_ppl_pct"]]
                   for r in part("precision")])
    return "\n".join(out)


def _mean_mse(row: dict) -> float:
    """A row's little-module MSE (per layer and gate) as one number: the mean over gates and layers."""
    values = [v for layer in row["little_mse"] for v in layer.values()]
    return round(sum(values) / len(values), 4)


def _valid_delta(row: dict) -> str:
    """A per-gate row's validation ΔPPL, marked where the validation set picked its allocation cost."""
    if "valid_delta_ppl_pct" not in row:
        return ""
    return f"{row['valid_delta_ppl_pct']}" + (" (picked)" if row.get("valid_pick") else "")


def _gate_ratios(row: dict) -> str:
    """A row's measured insensitive ratio per gate, layer by layer ("i 0.34 f 0.90 … / …"); empty if it has none."""
    return " / ".join(" ".join(f"{g} {v:.2f}" for g, v in layer.items()) for layer in row.get("gate_ratios", []))


ALLOCATION_VARIANTS = (("greedy-allocation", "activation error"), ("loss-aware-allocation", "loss-aware"),
                       ("measured-allocation", "measured"))  # eval_lm's per-gate rows, one per allocation cost


# eval_lm's little modules beyond the paper's: the words its rows' variants end with (mask rules --sigmoid-tails
# both, --mask-rule contribution; the projection --projection learned; then --k and --little-bits), in that order
LITTLE_WORDS = {"sigmoid-both": "both sigmoid tails", "contribution": "contribution score", "learned": "learned projection"}


def little_module(variant: str) -> tuple[str, list[str], int]:
    """A row variant split into its method, its little module beyond the paper's in words, and its W_LL bits:
    ``per-gate loss-aware, chosen on valid contribution learned k128 int4`` → (``per-gate loss-aware, chosen on
    valid``, [contribution score, learned projection, k = 128], 4); a uniform row names k in its first word
    (``k128-int8 learned`` → (``k128-int8``, [learned projection, k = 128], 8)). The paper's module: no words."""
    words, notes, bits = variant.split(" "), [], 8
    while len(words) > 1:
        w = words[-1]
        if m := re.fullmatch(r"int(\d+)", w):
            bits = int(m.group(1))
        elif m := re.fullmatch(r"k(\d+)", w):
            notes.insert(0, f"k = {m.group(1)}")
        elif w in LITTLE_WORDS:
            notes.insert(0, LITTLE_WORDS[w])
        else:
            break
        words.pop()
    stem = " ".join(words)
    if m := re.fullmatch(r"(?:eps[\d.]+|k(\d+))-int(\d+)", stem):  # a uniform row: how k was set, the bits
        notes += [f"k = {m.group(1)}"] if m.group(1) else []
        bits = int(m.group(2))
    return stem, notes, bits


def _module_key(variant: str) -> tuple[str, str, int]:
    """What the tables group a row by: its method, its little module in words ("" for the paper's: eq. 5, eq. 2,
    eq. 3's k) and its W_LL bits."""
    stem, notes, bits = little_module(variant)
    return stem, ", ".join(notes), bits


def _little_tag(variant: str) -> str:
    """A row's little module in words, without its W_LL bits (:func:`_module_key`)."""
    return _module_key(variant)[1]


def _little_tags(rows: list[dict], part: str, bits: int = 8) -> list[str]:
    """The little modules with ``bits`` W_LL the rows of ``part`` were run with, in words: the paper's ("") first, then
    by how many things differ from it and in :data:`LITTLE_WORDS`' order (the tables' column order)."""
    order = [*LITTLE_WORDS.values(), "k = "]
    modules = {tuple(notes) for r in rows if r["part"] == part and r["variant"] != "base"
               for _, notes, b in [little_module(r["variant"])] if b == bits}
    ranked = sorted(modules, key=lambda notes: (len(notes), [next(i for i, o in enumerate(order) if n.startswith(o))
                                                             for n in notes], notes))
    return [", ".join(notes) for notes in ranked]


def search_method(variant: str) -> str:
    """A largest-ratio row's method in words: ``eval_lm`` appends the mask rule, the projection and k where they are
    not the paper's, then the W_LL bits where they are not INT8 (``per-gate loss-aware, chosen on valid contribution
    int4`` → ``per-gate loss-aware, chosen on valid (contribution score, INT4 W_LL)``)."""
    stem, notes, bits = little_module(variant)
    notes += [f"INT{bits} W_LL"] if bits != 8 else []
    return stem + (f" ({', '.join(notes)})" if notes else "")


def lm_allocation(doc: dict) -> str:
    """The per-gate allocation study: at each overall ratio, one ratio for all gates beside the greedy allocation
    under each cost the file has rows of, which one the validation set picked, and the largest overall ratio
    within +1 % PPL by each."""
    rows = doc["rows"]
    find = lambda m, part, variant, ratio: next((r for r in rows if (r["model"], r["part"], r["variant"]) ==  # noqa: E731
                                                 (m, part, variant) and r["insensitive_ratio"] == ratio), None)
    delta = lambda r: "" if r is None else f"{r['ppl']} ({r['delta_ppl_pct']:+.2f} %)"  # noqa: E731
    module = lambda r: _module_key(r["variant"])  # noqa: E731
    costs = [(v, tag, name + (f" ({tag})" if tag else "")) for tag in _little_tags(rows, "per-gate")
             for v, name in ALLOCATION_VARIANTS if any(module(r) == (v, tag, 8) for r in rows if r["part"] == "per-gate")]
    per_gate = lambda m, v, tag, ratio: next((r for r in rows if (r["model"], r["part"], r["insensitive_ratio"]) ==  # noqa: E731
                                              (m, "per-gate", ratio) and module(r) == (v, tag, 8)), None)
    uniform = lambda m, ratio, tag, bits=8: next((r for r in rows if r["variant"] != "base"  # noqa: E731
                                                  and (r["model"], r["part"], r["insensitive_ratio"]) == (m, "uniform", ratio)
                                                  and module(r)[1:] == (tag, bits)), None)
    # the study's W_LL is INT8; one-ratio INT4 rows (the compiled INT4 engines' quality) get columns after them
    rules = [(tag, 8) for tag in _little_tags(rows, "uniform") if tag] + \
        [(tag, 4) for tag in _little_tags(rows, "uniform", 4)]
    module_words = lambda tag, bits: ", ".join(filter(None, [tag, "INT4 W_LL" if bits == 4 else ""]))  # noqa: E731
    table = []
    for m in dict.fromkeys(r["model"] for r in rows):
        base = find(m, "uniform", "base", 0.0)
        for ratio in sorted({r["insensitive_ratio"] for r in rows if r["model"] == m and r["part"] in ("per-gate", "uniform")
                             and r["variant"] != "base"}):
            found = [(name, per_gate(m, v, tag, ratio)) for v, tag, name in costs]
            # each run flags its own pick; across runs (mask rules) the lower validation PPL wins
            picked = min(((name, r) for name, r in found if r and r.get("valid_pick")),
                         key=lambda p: p[1]["valid_delta_ppl_pct"], default=("", None))
            shown = picked[1] or dict(found).get("loss-aware")  # rows from before the validation pick: loss-aware's
            table.append([m, base and base["big_epochs"], base and base["ppl"], ratio, delta(uniform(m, ratio, "")),
                          *(delta(uniform(m, ratio, tag, bits)) for tag, bits in rules),
                          *(delta(r) for _, r in found), picked[0], shown and _gate_ratios(shown)])
    out = _table(["model", "big epochs", "base PPL", "ratio", "one ratio for all gates",
                  *(f"one ratio, {module_words(tag, bits)}" for tag, bits in rules),
                  *(f"per gate: {name}" for _, _, name in costs), "validation picks", "its ratio per gate"], table)
    out += ["", "The largest overall ratio within +1 % PPL (chosen on valid, reported on test):", ""]
    out += _table(["model", "how", "ratio", "measured", "PPL", "ΔPPL %", "per gate"],
                  [[r["model"], search_method(r["variant"]), r["insensitive_ratio"], r["measured_ratio"], r["ppl"],
                    r["delta_ppl_pct"], _gate_ratios(r)] for r in rows if r["part"] == "largest-within-1pct"])
    eps = [r for r in rows if r["part"] == "eps"]
    if eps:
        out += ["", "ε of eq. 3 at 50 % (k from it), by little module:", ""]
        out += _table(["model", "little module", "ε", "k", "measured", "PPL", "ΔPPL %"],
                      [[r["model"], _little_tag(r["variant"]) or "eq. 5, eq. 2",
                        r["variant"].split()[0].removeprefix("eps"), r.get("k"), r["measured_ratio"], r["ppl"],
                        r["delta_ppl_pct"]] for r in eps])
    by_k = [r for r in rows if r["part"] == "k"]
    if by_k:
        out += ["", "k set directly at 50 % (beyond eq. 3, whose distance bound says nothing about a learned "
                "projection), by little module; *eq. 3* marks the k of ε = 0.5; MSE: the little pre-activations' on "
                "valid, mean over gates and layers:", ""]
        out += _table(["model", "little module", "k", "eq. 3", "little MB", "MSE", "measured", "PPL", "ΔPPL %"],
                      [[r["model"], _little_tag(r["variant"]) or "eq. 5, eq. 2", r["k"],
                        "yes" if r.get("eq3") else "", r["little_param_mb"], _mean_mse(r), r["measured_ratio"],
                        r["ppl"], r["delta_ppl_pct"]]
                       for r in sorted(by_k, key=lambda r: (r["model"], r["variant"].split()[1:], r["k"]))])
    return "\n".join(out)


def plot_lm_quality(doc: dict, path: Path) -> None:
    """ΔPPL (% over each model's own base) vs insensitive ratio: ours beside the paper's Tables 2/3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in _unpruned(doc["rows"])})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        rows = [r for r in doc["rows"] if r["model"] == m]
        for bits, style in ((8, "o-"), (4, "^-")):  # the base row (ratio 0) starts both curves
            uni = sorted((r["measured_ratio"], r["delta_ppl_pct"]) for r in rows if r["part"] == "uniform"
                         and r.get("variant") in ("base", f"eps0.5-int{bits}"))
            if len(uni) > 1:
                ax.plot(*zip(*uni), style, label=f"dualtvm INT{bits}, one ratio for all gates")
        for variant, style, label in (("greedy-allocation", "s--", "per-gate, activation error"),
                                      ("loss-aware-allocation", "D--", "per-gate, loss-aware")):
            pg = sorted((r["measured_ratio"], r["delta_ppl_pct"]) for r in rows
                        if r["part"] == "per-gate" and r.get("variant") == variant)
            if pg:
                ax.plot(*zip(*pg), style, label=f"dualtvm INT8, {label}")
        paper = sorted((r["insensitive_ratio"], 100 * (r["paper_ppl"] / r["paper_base_ppl"] - 1))
                       for r in rows if r["part"] == "uniform" and r.get("paper_ppl"))
        if paper:
            ax.plot(*zip(*paper), "x:", color="gray", label="paper (Tables 2/3)")
        _delta_ppl_panel(ax, f"{m} (base PPL {rows[0]['base_ppl']})", 7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _delta_ppl_panel(ax, title: str, legend_size: int) -> None:
    """Axes of a ΔPPL-vs-ratio panel, the +1 % budget line included."""
    ax.axhline(1.0, lw=0.6, color="k", ls="--")
    ax.set_title(title)
    ax.set_xlabel("measured insensitive ratio")
    ax.set_ylabel("ΔPPL over base (%)")
    ax.legend(fontsize=legend_size)


def plot_lm_allocation(doc: dict, path: Path) -> None:
    """The allocation study as curves: ΔPPL vs measured ratio per model, one ratio for all gates under each mask rule
    (dashed: per gate, each cost and rule), so the rules and allocations compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, m in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == m]
        for tag in dict.fromkeys(_little_tags(mine, "uniform") + _little_tags(mine, "per-gate")):
            name = tag or "eq. 5"
            curves = [("uniform", None, "o-", f"one ratio, {name}")]
            curves += [("per-gate", v, "s--", f"per gate ({cost}), {name}") for v, cost in ALLOCATION_VARIANTS]
            for part, method, style, label in curves:
                pts = sorted((r["measured_ratio"], r["delta_ppl_pct"]) for r in mine if r["part"] == part
                             and r["variant"] != "base" and _module_key(r["variant"])[1:] == (tag, 8)
                             and method in (None, _module_key(r["variant"])[0]))
                if pts:
                    ax.plot(*zip(*[(0.0, 0.0), *pts]), style, label=label, ms=4)
        _delta_ppl_panel(ax, f"{m} (base PPL {mine[0]['base_ppl']})", 6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def lm_pruning(doc: dict) -> str:
    """Table 7: magnitude-pruned (AGP) LMs with and without dual-module inference at 50 %."""
    out = ["| model | sparsity % | little module | PPL w/o dual-module | PPL w/ dual-module (50 %) | Δ % | paper w/o | paper w/ |",
           "|---|---|---|---|---|---|---|---|"]
    at_half = [r for r in doc["rows"] if r["part"] == "uniform" and r["insensitive_ratio"] == 0.5]
    pruned = {r["model"]: re.fullmatch(r"(.+)-sparse(\d+)", r["model"]) for r in at_half}
    bases = {m.group(1) for m in pruned.values() if m}
    at_half.sort(key=lambda r: (r["model"] not in bases, int(pruned[r["model"]].group(2)) if pruned[r["model"]] else 0))
    for r in at_half:
        m = pruned[r["model"]]
        if r["model"] in bases:  # the model pruning started from, without the fine-tuning
            name, sparsity, paper = r["model"], "0 (before fine-tuning)", ("", "")
        elif m:
            name, sparsity, paper = m.group(1), m.group(2), TABLE7_PPL.get(int(m.group(2)), ("", ""))
        else:
            continue
        out.append(f"| {name} | {sparsity} | {r['variant']} | {r['base_ppl']} | {r['ppl']} | {r['delta_ppl_pct']} | {paper[0]} | {paper[1]} |")
    return "\n".join(out)


def nmt_quality(doc: dict) -> str:
    """Table 4: BLEU vs ratio (PyTorch dual-module decoder; teacher-forced reference PPL and agreement with
    the big model's translations where measured), then greedy decoding speed, batch 1."""
    out = ["| model | trained epochs | engine | ratio asked | measured | output ratio (measured) | BLEU | ΔBLEU "
           "| paper ΔBLEU (GNMT, WMT) | reference PPL | ΔPPL % | same translation % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    quality = [r for r in doc["rows"] if r["part"] == "quality"]
    models = list(dict.fromkeys(r["model"] for r in quality))
    for r in sorted(quality, key=lambda r: (models.index(r["model"]), r["engine"] != "torch", r["engine"],
                                            r["insensitive_ratio"])):
        paper = TABLE4_BLEU.get(r["insensitive_ratio"])
        out.append(f"| {r['model']} | {r.get('big_epochs', '')} | {r['engine']} | {r['insensitive_ratio']} | "
                   f"{r.get('measured_ratio', '')} | {_output_ratio(r)} | {r['bleu']} | {r['delta_bleu']} | "
                   f"{'' if paper is None else round(paper - 24.32, 2)} | {r.get('reference_ppl', '')} | "
                   f"{r.get('delta_reference_ppl_pct', '')} | "
                   f"{'' if 'same_as_big' not in r else round(100 * r['same_as_big'], 1)} |")
    speed = [r for r in doc["rows"] if r["part"] == "speed"]
    if speed:
        out += ["", by_machine(doc, speed, _nmt_speed_table)]
    return "\n".join(out)


def _output_ratio(r: dict) -> str:
    """The dual-module output projection's ratio (engines ``…+out``), asked and measured; empty for the others."""
    return f"{r['output_ratio']} ({r.get('output_measured_ratio', '')})" if "output_ratio" in r else ""


def _nmt_speed_table(speed: list[dict]) -> str:
    out = ["| model | trained epochs | engine | ratio | output ratio (measured) | tokens/s | decode-loop tokens/s "
           "| decoder layers ms/token | BLEU (subset) | × TVM dense (tokens/s; quarters' range) | × TVM dense (decode loop; quarters' range) "
           "| × TVM dense (layers) | × PyTorch (tokens/s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in speed:
        engine = r["engine"]
        if r.get("decode_step") == "fused":  # a run whose compiled engines ran the whole step as one build
            engine += " (fused step)" if engine.startswith("tvm") else " (fused-step run)"
        out.append(f"| {r['model']} | {r.get('big_epochs', '')} | {engine} | {r['insensitive_ratio']} | "
                   f"{_output_ratio(r)} | {r['tokens_per_s']} | "
                   f"{r.get('decoder_tokens_per_s', '')} | {r.get('decoder_layers_ms_per_token', '')} | {r['bleu']} | "
                   f"{_with_spread(r, 'speedup_vs_tvm_dense')} | {_with_spread(r, 'decoder_speedup_vs_tvm_dense')} | "
                   f"{r.get('layer_speedup_vs_tvm_dense', '')} | {r.get('speedup_vs_torch', '')} |")
    return "\n".join(out + ["", *amdahl(speed)])


def _with_spread(r: dict, key: str) -> str:
    """A speed-up with, where the row has them, the lowest and highest of its per-quarter values (``key_blocks``)
    or the quartiles of its per-round values (``key_quartiles``)."""
    spread = r.get(f"{key}_blocks") or r.get(f"{key}_quartiles")
    return f"{r.get(key, '') or ''}" + (f" ({min(spread)}–{max(spread)})" if spread else "")


def plot_nmt_quality(doc: dict, path: Path) -> None:
    """ΔBLEU vs insensitive ratio per model (eq. 5's masks at INT8 and INT4, the contribution scores at INT8) beside
    the paper's Table 4 and, on a second axis where measured, the teacher-forced reference perplexity's rise (BLEU
    moves only where a greedy argmax flips)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = [r for r in doc["rows"] if r["part"] == "quality"]
    models = list(dict.fromkeys(r["model"] for r in quality))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    paper = sorted((r, b - TABLE4_BLEU[0.0]) for r, b in TABLE4_BLEU.items())
    for ax, m in zip(axes[0], models):
        rows = [r for r in quality if r["model"] == m]
        base = next((r for r in rows if r["engine"] == "torch"), None)
        ppl_ax = None
        for engine, style in (("dual", "o-"), ("dual-int4", "^-"), ("dual-contribution", "s-")):
            mine = sorted([(0.0, 0.0, 0.0)] * (base is not None) + [
                (r["measured_ratio"], r["delta_bleu"], r.get("delta_reference_ppl_pct")) for r in rows
                if r["engine"] == engine])
            if len(mine) < 2:
                continue
            ax.plot([x for x, _, _ in mine], [b for _, b, _ in mine], style, label=f"dualtvm {engine} ΔBLEU")
            ppl = [(x, p) for x, _, p in mine if p is not None]
            if len(ppl) > 1:
                ppl_ax = ppl_ax or ax.twinx()
                ppl_ax.plot(*zip(*ppl), style, color="tab:red", alpha=0.6, label=f"{engine} reference ΔPPL %")
        ax.plot(*zip(*paper), "x:", color="gray", label="paper ΔBLEU (GNMT, WMT)")
        ax.axhline(-0.6, lw=0.6, color="k", ls="--")
        ax.set_ylim(max(-13, ax.get_ylim()[0]), ax.get_ylim()[1])
        epochs = rows[0].get("big_epochs")
        ax.set_title(f"{m}" + (f", {epochs} epochs" if epochs else "") + (f" (BLEU {base['bleu']})" if base else ""))
        ax.set_xlabel("measured insensitive ratio")
        ax.set_ylabel("ΔBLEU")
        handles = ax.get_legend_handles_labels()
        if ppl_ax is not None:
            ppl_ax.set_ylabel("reference ΔPPL (%)", color="tab:red")
            handles = tuple(a + b for a, b in zip(handles, ppl_ax.get_legend_handles_labels()))
        ax.legend(*handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def amdahl(speed: list[dict]) -> list[str]:
    """What the decoder layers can buy, per model: the rest of a token in the decode loop (embedding, attention,
    output projection, search) is work the dual-module layers do not shorten (the ``+out`` engines' output
    projection does: see their rows).  Rows without the decode-loop rate
    (made before the encoder was timed apart) count the encoder in the rest."""
    lines = []
    for dense in (r for r in speed if r["engine"] == "tvm-dense" and "decoder_layers_ms_per_token" in r):
        loop = "decoder_tokens_per_s" in dense
        token_ms = 1000 / dense["decoder_tokens_per_s" if loop else "tokens_per_s"]
        layers_ms = dense["decoder_layers_ms_per_token"]
        rest_ms = token_ms - layers_ms
        need_ms = token_ms / 1.5 - rest_ms
        line = (f"Where a dense token's time goes ({dense['model']}, {'decode loop' if loop else 'encoder included'}): "
                f"{token_ms:.2f} ms, of which the compiled decoder layers {layers_ms:.2f} ms ({layers_ms / token_ms:.0%}) "
                f"and everything else {rest_ms:.2f} ms. Even with free layers (and a dense output projection) the dual-module decoder could reach "
                f"{token_ms / rest_ms:.2f}× the dense tokens/s")
        if need_ms > 0:
            line += (f"; 1.5× needs its layers at {need_ms:.2f} ms/token, {layers_ms / need_ms:.2f}× faster than the "
                     "dense layers.")
        else:
            line += ": 1.5× is out of reach at this model size."
        lines += [line, ""]
    return lines[:-1]


def fixed_cost(doc: dict) -> str:
    """The dual step's time split, per run, into the little side's fixed cost and the big rows' share
    (:mod:`dualtvm.fixed_cost`): the models issue #5 sets a speed-up goal for, the INT8 eq. 5 engine."""
    from dualtvm.bench import cache_label
    from dualtvm.fixed_cost import fixed_cost_fits, goal_model, run_key

    rows = _latency_rows(doc)
    all_fits = [f for f in fixed_cost_fits(rows, ("tvm-dual",)) if goal_model(f)]

    def table(mine: list[dict]) -> str:
        fits = [f for f in all_fits if f.key[0] == mine[0]["machine"]]
        cache = {run_key(r): cache_label(r) for r in mine}
        return "\n".join(_table(
            ["model", "weights", "run target", "cache", "dense ms", "fixed ms (fitted)", "ratio 1 ms",
             "its bytes' ms", "rows ÷ dense", "largest residual", "× at 50 %: measured (fitted)",
             "fixed ms the goal allows"],
            [[f.key[1], f.key[2], f.key[3], cache[f.key], f"{f.dense_ms:.3f}", f"{f.fixed_ms:.3f}",
              "–" if f.no_rows_ms is None else f"{f.no_rows_ms:.3f}",
              f"{f.fixed_bytes_ms:.3f}", f"{f.rows_vs_dense:.2f}", f"{f.max_residual_pct:.1f} %",
              f"{'–' if f.speedup_at_half is None else f'{f.speedup_at_half:.2f}'} ({f.fitted_speedup_at_half:.2f})",
              f"{f.fixed_allowed_ms:.3f} (for {f.goal:g}×)"] for f in fits]))

    timed = {f.key[0] for f in all_fits}  # machines with such runs
    return by_machine(doc, [r for r in rows if r["engine"] in ("tvm-dense", "tvm-dual") and r["machine"] in timed],
                      table)


def phases(doc: dict) -> str:
    """:func:`phases_all` of the models issue #5 sets a speed-up goal for (the README's table)."""
    return phases_all(doc, goal_models_only=True)


def phases_all(doc: dict, goal_models_only: bool = False) -> str:
    """Table 5's right half beside the paper's: each phase of the INT8 / INT4 dual steps at 50 %, timed inside the
    step (the big GEMV: the rest of the timed step), in % of the dense step and, in brackets, as a multiple of its
    bytes' time at the dense rate (:func:`dualtvm.fixed_cost.phase_costs`); then the paper's LSTM-1500 rows (cold)."""
    from dualtvm.bench import cache_label
    from dualtvm.fixed_cost import goal_at_half, phase_costs, phase_pairs
    from dualtvm.traffic import PARTS

    pairs = [(d, dense) for d, dense in phase_pairs(_latency_rows(doc), ("tvm-dual", "tvm-dual-int4"))
             if not goal_models_only or goal_at_half(d) is not None]
    dense_of = {id(d): dense for d, dense in pairs}  # by_machine groups the dual rows; each keeps its dense row

    def table(duals: list[dict]) -> str:
        mine = [(d, dense_of[id(d)]) for d in duals]
        body = [[d["model"], d["run_target"], d["engine"], cache_label(d), f"{dense['median_ms']:.3f}",
                 f"{100 * d['median_ms'] / dense['median_ms']:.1f} %", *(c.label for c in phase_costs(d, dense)),
                 f"{d['speedup_vs_tvm_dense']:.2f}"] for d, dense in mine]
        paper = [[f"paper: lstm-1500, k = {k} (ε = {eps:g})", "Xeon E5-2698 v4", "INT8 (MKL)", "cold",
                  f"{TABLE5_DENSE_MS:.3f}", f"{100 * ms / TABLE5_DENSE_MS:.1f} %", f"{srp} %", f"{little} %", "–",
                  f"{big} %", "–", f"{TABLE5_DENSE_MS / ms:.2f}"] for k, (eps, ms, srp, little, big) in TABLE5_TIME.items()]
        return "\n".join(_table(["model", "run target", "engine", "cache", "dense ms", "dual step",
                                 *(f"{p} (the rest)" if p == "big" else p for p in PARTS), "× at 50 % (paired)"],
                                body + paper))

    return by_machine(doc, [d for d, _ in pairs], table)


def kernels(doc: dict) -> str:
    """Issue #4's kernel table: each kernel alone (caches flushed), untuned and as tuned, beside numpy/PyTorch."""
    return by_machine(doc, doc["rows"], lambda rows: "\n".join(_table(
        ["kernel", "untuned ms", "MetaSchedule tuned ms", "loop-nest grid ms", "build uses", "numpy ms", "torch ms",
         "numpy / torch compute"],
        [[r["kernel"], r["default_ms"], r["metaschedule_ms"], r["nest_ms"], r["use"], r["numpy_ms"], r["torch_ms"],
          r["reference"]] for r in rows])))


def traffic(doc: dict) -> str:
    """Figure 4: per model, bytes and operations of the dense step against its little module's, and the dual step's
    share at 50 %; then each variant's mean shares over the models beside the paper's averages."""

    rows = doc["rows"]
    half = lambda r, key: r[key].get("0.5", "")  # noqa: E731
    out = _table(["model", "little module", "k", "W_LL", "dense MB", "little MB (% of dense)", "dense Mops",
                  "little Mops (% of dense)", "break-even ratio", "dual step at 50 %: bytes % / ops % of dense"],
                 [[r["model"], r["little_module"], r["k"], f"INT{r['little_bits']}", r["base_mb"],
                   f"{r['little_mb']} ({r['little_bytes_pct']} %)", r["base_mops"],
                   f"{r['little_mops']} ({r['little_ops_pct']} %)", r["break_even_ratio"],
                   f"{half(r, 'dual_bytes_pct')} / {half(r, 'dual_ops_pct')}"] for r in rows])
    out += ["", f"Mean over these models, the little module in % of the dense layer (the paper's Figure 4: "
                f"~{FIGURE4['little_bytes_pct']:g} % of the bytes, ~{FIGURE4['little_ops_pct']:g} % of the "
                f"operations, on average over its layers):", ""]
    variants = list(dict.fromkeys((r["little_module"], r["little_bits"]) for r in rows))
    mean = lambda v, key: round(sum(r[key] for r in rows if (r["little_module"], r["little_bits"]) == v)  # noqa: E731
                                / sum((r["little_module"], r["little_bits"]) == v for r in rows), 1)
    out += _table(["little module", "W_LL", "bytes %", "operations %"],
                  [[v, f"INT{bits}", mean((v, bits), "little_bytes_pct"), mean((v, bits), "little_ops_pct")]
                   for v, bits in variants])
    return "\n".join(out)


DOCUMENTS = ("README.md", "docs/results.md")
"""The files whose <!-- results:NAME --> blocks are rendered: the README's summary, and every table in docs/."""

RENDERERS = {  # README marker -> (results file or files, renderer)
    "latency": ("latency", latency), "latency-goals": ("latency", latency_goals),
    "latency-latest": ("latency", latency_latest),
    "lm-quality-goals": (("lm-quality-ptb", "lm-allocation-ptb"), quality_goals),
    "latency-breakdown": ("latency", breakdown), "latency-fixed-cost": ("latency", fixed_cost),
    "latency-phases": ("latency", phases), "latency-phases-all": ("latency", phases_all),
    "baselines": ("baselines", baselines),
    "lm-quality-ptb": ("lm-quality-ptb", lm_quality), "lm-pruning": ("lm-quality-ptb", lm_pruning),
    "lm-pruning-wikitext-2": ("lm-quality-wikitext-2", lm_pruning),
    "lm-allocation-ptb": ("lm-allocation-ptb", lm_allocation),
    "nmt-quality": ("nmt-quality", nmt_quality), "kernels": ("kernels", kernels), "traffic": ("traffic", traffic),
}


def render(text: str) -> str:
    """``text`` (the README or docs/results.md) with every <!-- results:NAME --> block regenerated from its results
    file (or files)."""
    for name, (sources, fn) in RENDERERS.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /results:{re.escape(name)} -->)",
                             re.S)
        if not pattern.search(text):  # a block of the other document: nothing to read or render here
            continue
        sources = (sources,) if isinstance(sources, str) else sources
        files = [REPO / "results" / f"{source}.json" for source in sources]
        if not all(f.exists() for f in files):
            continue
        docs = [load_results(f) for f in files]
        made = []
        for source, doc in zip(sources, docs):
            runs = dict.fromkeys((r.get("git", doc["git"]), r.get("machine", doc.get("machine", "?")))
                                 for r in doc["rows"])
            where = "; ".join(f"at {git} on {machine}" for git, machine in runs) or f"at {doc['git']}"
            made.append(f"`results/{source}.json` (made by `{doc['command']}` {where})")
        if len(docs) > 1:  # one document of every file's rows, each naming its own machine and revision
            docs[0] = {**docs[0], "rows": [r for d in docs for r in d["rows"]]}
        doc = docs[0]
        body = f"Generated by `python scripts/render_results.py` from {' and '.join(made)}.\n\n{fn(doc)}"
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the tables of the README or docs/results.md differ from what the "
                        "results files give")
    a = p.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        path = REPO / doc
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(doc)
            if not a.check:
                path.write_text(rendered)
    if a.check:
        if stale:
            print(f"{', '.join(stale)} out of date with results/*.json: run python scripts/render_results.py",
                  file=sys.stderr)
        return 1 if stale else 0
    latency_json = REPO / "results" / "latency.json"
    if latency_json.exists():
        from dualtvm.bench import write_plots

        write_plots(load_results(latency_json)["rows"], latency_json)
    quality = REPO / "results" / "lm-quality-ptb.json"
    if quality.exists():
        plot_lm_quality(load_results(quality), quality.with_suffix(".png"))
    allocation = REPO / "results" / "lm-allocation-ptb.json"
    if allocation.exists():
        plot_lm_allocation(load_results(allocation), allocation.with_suffix(".png"))
    traffic_json = REPO / "results" / "traffic.json"
    if traffic_json.exists():
        from dualtvm.traffic import plot_traffic

        plot_traffic(load_results(traffic_json)["rows"], str(traffic_json.with_suffix(".png")))
    nmt = REPO / "results" / "nmt-quality.json"
    if nmt.exists():
        plot_nmt_quality(load_results(nmt), nmt.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

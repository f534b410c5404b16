"""What ``scale calibrate`` reports: per difficulty bin P(correct | System 1/2) and token costs,
the τ that maximises accuracy and the one that maximises accuracy per token, a plot, the labels.

Only *paired* sub-problems count (both systems' outcomes known, both graded). For a sub-problem
i, "correct on System m" is the final answer's correctness when i is solved on m and everything
else is as SCALE did it (the sub-problems before i as in the original run, the later ones routed
by its τ). A τ is scored by routing every paired sub-problem by its assessed difficulty (Eq. 4)
and taking that system's outcome: a one-sub-problem-at-a-time estimate of the accuracy and the
run tokens (Tok) τ would give — an estimate, since changing several routes of one run at once
is not what a single fork measures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from scale_graph.nodes.route import system_for

if TYPE_CHECKING:
    from scale_graph.calibrate import Labelled


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _bin_of(difficulty: float, width: float, count: int) -> int:
    return min(count - 1, max(0, math.floor(difficulty / width + 1e-9)))


def report(labels: list[Labelled], bin_width: float) -> dict[str, Any]:
    """Bins, the τ grid (the bin edges) with estimated accuracy and Tok, and the two best τ."""
    paired = [label for label in labels if label.paired()]
    count = max(1, math.ceil(1.0 / bin_width - 1e-9))
    bins = []
    for number in range(count):
        members = [l for l in paired if _bin_of(l.difficulty, bin_width, count) == number]
        row: dict[str, Any] = {"low": round(number * bin_width, 6), "high": round(min(1.0, (number + 1) * bin_width), 6),
                               "n": len(members)}
        for system in (1, 2):
            row[f"p_correct_s{system}"] = _mean([float(l.sides[system].correct) for l in members])
            row[f"tokens_s{system}"] = _mean([float(l.sides[system].subproblem_tokens) for l in members])
            row[f"run_tokens_s{system}"] = _mean([float(l.sides[system].run_tokens) for l in members])
        both = members and row["p_correct_s1"] is not None
        row["gain_s2"] = row["p_correct_s2"] - row["p_correct_s1"] if both else None
        row["extra_tokens_s2"] = row["tokens_s2"] - row["tokens_s1"] if both else None
        bins.append(row)
    taus = []
    for step in range(count + 1):
        tau = round(min(1.0, step * bin_width), 6)
        chosen = [l.sides[system_for(l.difficulty, tau)] for l in paired]
        accuracy = _mean([float(side.correct) for side in chosen])
        tokens = _mean([float(side.run_tokens) for side in chosen])
        taus.append({"tau": tau, "accuracy": accuracy, "run_tokens": tokens,
                     "accuracy_per_1k_tokens": accuracy / tokens * 1000 if accuracy is not None and tokens else None,
                     "system2_share": _mean([float(side.system == 2) for side in chosen])})
    scored = [t for t in taus if t["accuracy"] is not None]
    # ties: the cheaper τ (fewer tokens), then the higher τ (fewer System 2 calls)
    best_accuracy = max(scored, key=lambda t: (t["accuracy"], -(t["run_tokens"] or 0), t["tau"]), default=None)
    efficient = [t for t in scored if t["accuracy_per_1k_tokens"] is not None]
    best_efficiency = max(efficient, key=lambda t: (t["accuracy_per_1k_tokens"], t["tau"]), default=None)
    return {"bin_width": bin_width, "labelled": len(labels), "paired": len(paired), "bins": bins, "taus": taus,
            "best_tau_accuracy": best_accuracy["tau"] if best_accuracy else None,
            "best_tau_accuracy_per_token": best_efficiency["tau"] if best_efficiency else None}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(shown: dict[str, Any]) -> str:
    lines = [f"# Routing calibration of {shown.get('eval_run', '')}", "",
             f"{shown['paired']} paired sub-problems of {shown['labelled']} labelled.", "",
             "| difficulty | n | P(correct \\| S1) | P(correct \\| S2) | S2 gain | tokens S1 | tokens S2 | extra tokens S2 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in shown["bins"]:
        lines.append(f"| {row['low']:.2f}–{row['high']:.2f} | {row['n']} | {_fmt(row['p_correct_s1'])} | "
                     f"{_fmt(row['p_correct_s2'])} | {_fmt(row['gain_s2'])} | {_fmt(row['tokens_s1'], 0)} | "
                     f"{_fmt(row['tokens_s2'], 0)} | {_fmt(row['extra_tokens_s2'], 0)} |")
    lines += ["", "| τ | accuracy (est.) | Tok (est.) | accuracy per 1k tokens | System 2 share |", "|---|---|---|---|---|"]
    for tau in shown["taus"]:
        lines.append(f"| {tau['tau']:.2f} | {_fmt(tau['accuracy'], 3)} | {_fmt(tau['run_tokens'], 0)} | "
                     f"{_fmt(tau['accuracy_per_1k_tokens'], 4)} | {_fmt(tau['system2_share'])} |")
    best = (f"τ maximising accuracy: {_fmt(shown['best_tau_accuracy'])}; "
            f"τ maximising accuracy per token: {_fmt(shown['best_tau_accuracy_per_token'])}")
    lines += ["", best, ""]
    return "\n".join(lines)


def plot(shown: dict[str, Any], path: Path) -> None:
    """Difficulty on x; System 2's accuracy gain (bars, left) and extra tokens (line, right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in shown["bins"] if row["gain_s2"] is not None]
    figure, gain_axis = plt.subplots(figsize=(7, 4))
    centres = [(row["low"] + row["high"]) / 2 for row in rows]
    gain_axis.bar(centres, [row["gain_s2"] for row in rows], width=shown["bin_width"] * 0.8, color="tab:blue",
                  label="accuracy gain of System 2")
    gain_axis.axhline(0, color="grey", linewidth=0.8)
    gain_axis.set_xlim(0, 1)
    gain_axis.set_xlabel("assessed difficulty")
    gain_axis.set_ylabel("P(correct | S2) − P(correct | S1)")
    token_axis = gain_axis.twinx()
    token_axis.plot(centres, [row["extra_tokens_s2"] for row in rows], color="tab:red", marker="o",
                    label="extra tokens of System 2")
    token_axis.set_ylabel("extra completion tokens per sub-problem")
    for tau, style in ((shown["best_tau_accuracy"], "--"), (shown["best_tau_accuracy_per_token"], ":")):
        if tau is not None:
            gain_axis.axvline(tau, color="black", linestyle=style, linewidth=0.8)
    gain_axis.set_title(f"Where System 2 pays off ({shown['paired']} paired sub-problems)")
    handles = gain_axis.get_legend_handles_labels()[0] + token_axis.get_legend_handles_labels()[0]
    gain_axis.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(shown: dict[str, Any], labels: list[Labelled], folder: Path) -> list[Path]:
    """calibration.md, calibration.json, calibration.png and labels.jsonl in ``folder``."""
    from scale_graph.calibrate import label_rows, write_jsonl
    from scale_graph.runner import InputError

    paths = [folder / name for name in ("calibration.md", "calibration.json", "calibration.png", "labels.jsonl")]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(markdown(shown), encoding="utf-8")
        paths[1].write_text(json.dumps({k: v for k, v in shown.items() if k != "written"}, indent=1), encoding="utf-8")
        plot(shown, paths[2])
        write_jsonl(paths[3], label_rows(labels, shown.get("eval_run", "")))
    except OSError as exc:
        raise InputError(f"cannot write {exc.filename or folder}: {exc.strerror or exc}") from None
    return paths


def print_calibration(shown: dict[str, Any], console: Console) -> None:
    table = Table(title=f"routing calibration of {shown['eval_run']} ({shown['paired']} paired sub-problems)")
    for column in ("difficulty", "n", "P(ok|S1)", "P(ok|S2)", "S2 gain", "tok S1", "tok S2", "extra tok S2"):
        table.add_column(column, justify="right")
    for row in shown["bins"]:
        if row["n"]:
            table.add_row(f"{row['low']:.2f}–{row['high']:.2f}", str(row["n"]), _fmt(row["p_correct_s1"]),
                          _fmt(row["p_correct_s2"]), _fmt(row["gain_s2"]), _fmt(row["tokens_s1"], 0),
                          _fmt(row["tokens_s2"], 0), _fmt(row["extra_tokens_s2"], 0))
    console.print(table)
    counts = shown["counts"]
    console.print(f"τ maximising accuracy: {_fmt(shown['best_tau_accuracy'])}; τ maximising accuracy per token: "
                  f"{_fmt(shown['best_tau_accuracy_per_token'])}", highlight=False)
    console.print(f"forks: {counts['forks']} ({counts['made']} run now, {counts['reused']} already finished, "
                  f"{counts['skipped_budget']} over the token budget, {counts['failed']} failed); "
                  f"{shown['generated_tokens']} tokens generated by forks", highlight=False)
    console.print(f"wrote {', '.join(shown['written'])}", highlight=False, soft_wrap=True)

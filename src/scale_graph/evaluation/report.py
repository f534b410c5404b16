"""Reports of stored runs: the paper's Table 1 (method × dataset: Acc, Tpi, Tok) and Table 2
(threshold: Acc, Tok, Hard) in the terminal (rich) or as Markdown, Figure-2-style plots
(PNG, matplotlib Agg), and CSV/JSON exports of every run's metrics.

Rows are labelled by method, plus whichever of model, τ, System 2 budget, votes and
iterations differ between the runs of that method shown together.

"generated" beside Tok is the mean of the completion tokens generated for a run's samples: its
calls not reused from another run of the same reuse group (:mod:`scale_graph.reuse`), so a
run's Tok is what it would cost alone and the sweep's generated total what it cost together;
the line under the tables sums both over the runs shown.

Acc is over every attempted sample; failed and ungraded samples are shown beside it. Notes
under the tables state the forced-answer policy of the runs (and say so when runs shown
together differ), runs compared on one dataset whose denominators differ, ungraded samples,
degradations and runs made without the thinking switch, and the model behind each endpoint
(vLLM's ``root``, :mod:`scale_graph.servers.identity`) — one line when every run shown shares them,
else one per run; the JSON export carries them per run (``models``).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table as RichTable

from scale_graph.evaluation import frontier
from scale_graph.evaluation.metrics import RunMetrics, run_metrics


@dataclass
class Table:
    """A table independent of how it is shown."""

    title: str
    headers: list[str]
    rows: list[list[str]]


def report(runs: Iterable[Any], *, console: Console, out_dir: Path | None = None, markdown: bool = False,
           csv_path: Path | None = None, json_path: Path | None = None) -> list[Path]:
    """Print the tables of stored ``runs``; write plots and ``report.md`` to ``out_dir`` and the
    exports; return the files written."""
    runs = list(runs)
    metrics = [run_metrics(run) for run in runs]
    generated = [generated_of(run) for run in runs]
    budgeted = frontier.budget_points(runs)  # equal-compute comparison (scale_graph.evaluation.frontier)
    tables = [t for t in (runs_table(metrics, [g[0] / g[2] if g else None for g in generated]), comparison_table(metrics),
                          threshold_table(metrics), Table(*frontier.equal_budget_rows(budgeted))) if t.rows]
    models = [getattr(run, "models", None) for run in runs]
    remarks = notes(metrics) + model_lines([m.name for m in metrics], models) + ([frontier.RULE] if budgeted else [])
    recorded = [g for g in generated if g is not None]
    if recorded:
        remarks.append(generated_line(sum(g[0] for g in recorded), sum(g[1] for g in recorded), "for the runs shown"))
    for table in tables:
        if markdown:
            console.print(to_markdown(table), markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(to_rich(table))
    for remark in remarks:
        console.print(remark, markup=False, highlight=False, soft_wrap=True)
    written: list[Path] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = out_dir / "report.md"
        summary.write_text("\n".join(to_markdown(t) for t in tables) + "".join(f"\n{r}\n" for r in remarks),
                           encoding="utf-8")
        written += [summary, *plots(metrics, out_dir), *frontier.frontier_plot(budgeted, out_dir)]
    if csv_path is not None:
        written.append(export_csv(metrics, csv_path))
    if json_path is not None:
        written.append(export_json(metrics, json_path, models))
    return written


# ---- tables --------------------------------------------------------------------------------
def runs_table(metrics: Sequence[RunMetrics], generated: Sequence[float | None] = ()) -> Table:
    """Every run on one line, with sample counts, failures, policy and degradations (parameters
    are in the exports); ``generated``: each run's mean generated tokens per completed sample."""
    shown = list(generated) + [None] * (len(metrics) - len(generated))
    rows = [[m.name, str(m.problems), str(m.samples), str(m.failed), str(m.ungraded), _acc(m), _num(m.tpi),
             _num(m.tok), _num(made), _num(m.tok_overhead), _num(m.hard, "{:.1f}"), _num(m.iterations, "{:.1f}"),
             _policy(m.force_answer), m.thinking or "?", str(m.degraded)] for m, made in zip(metrics, shown)]
    return Table("Runs", ["run", "problems", "samples", "failed", "ungraded", "Acc (%)", "Tpi", "Tok", "generated",
                          "overhead", "Hard (%)", "iters/problem", "forced answer", "thinking", "degraded"], rows)


def generated_of(run: Any) -> tuple[int, int, int] | None:
    """(tokens generated, tokens counted in Tok, samples) over a run's completed samples that recorded
    what was generated; None when none did (results from before reuse existed)."""
    recorded = [r for r in run.results if r.error is None and getattr(r, "generated_tokens", None) is not None]
    if not recorded:
        return None
    return sum(r.generated_tokens for r in recorded), sum(r.completion_tokens for r in recorded), len(recorded)


def generated_line(generated: int, tokens: int, when: str) -> str:
    """The sweep's cost beside the runs' own: tokens generated vs the sum of what each run counts."""
    saved = f" (reuse saved {100 * (1 - generated / tokens):.0f}%)" if tokens and generated < tokens else ""
    return (f"tokens generated {when}: {generated:,} of the {tokens:,} completion tokens the runs count in Tok"
            f"{saved}")


def notes(metrics: Sequence[RunMetrics]) -> list[str]:
    """What a reader must know to compare the runs: one line each."""
    lines = []
    policies = {_policy(m.force_answer) for m in metrics}
    if len(policies) == 1:
        lines.append(f"forced-answer policy: {policies.pop()} for every run shown")
    elif policies:
        by_policy = {policy: [m.name for m in metrics if _policy(m.force_answer) == policy] for policy in sorted(policies)}
        lines.append("note: the runs differ in forced-answer policy (" +
                     "; ".join(f"{policy}: {', '.join(names)}" for policy, names in by_policy.items()) +
                     "): their Acc and Tok are not comparable")
    for dataset in dict.fromkeys(m.dataset for m in metrics):
        same = [m for m in metrics if m.dataset == dataset]
        if len({(m.problems, m.samples) for m in same}) > 1:
            lines.append(f"note: on {dataset} the runs have different denominators (" +
                         ", ".join(f"{m.name}: {m.samples} samples of {m.problems} problems" for m in same) +
                         "): re-run the evaluations with the same --samples/--limit to compare them")
    failed, ungraded = sum(m.failed for m in metrics), sum(m.ungraded for m in metrics)
    if failed or ungraded:
        lines.append(f"Acc counts every attempted sample: failed {failed}, ungraded {ungraded} — in the denominator, "
                     "never correct (re-run `scale eval` to retry failed samples)")
    degraded = [m.name for m in metrics if m.degraded]
    if degraded:
        lines.append(f"note: degraded samples (a feature the server refused) in {', '.join(degraded)}")
    without = [m.name for m in metrics if m.thinking in ("off", "mixed")]
    if without:
        lines.append(f"note: run without the thinking switch (thinking_flag off) for some samples: {', '.join(without)}")
    return lines


def model_lines(names: Sequence[str], models: Sequence[dict[str, Any] | None]) -> list[str]:
    """The models the runs ran on: one line when they share them, else one per run."""
    from scale_graph.servers.identity import ModelIdentity

    def described(found: dict[str, Any] | None) -> str:
        if not found:
            return "not recorded (a run from before model identities were)"
        return ", ".join(f"{system} {ModelIdentity(**entry).describe()}" for system, entry in found.items())

    shown = [described(found) for found in models]
    if len(set(shown)) == 1:
        return [f"models: {shown[0]} for every run shown"] if shown else []
    return [f"models of {name}: {line}" for name, line in zip(names, shown)]


def comparison_table(metrics: Sequence[RunMetrics]) -> Table:
    """Table 1: one row per method variant, Acc/Tpi/Tok per dataset, average accuracy."""
    datasets = list(dict.fromkeys(m.dataset for m in metrics))
    cells: dict[str, dict[str, RunMetrics]] = defaultdict(dict)
    for m, label in zip(metrics, labels(metrics)):
        cells[label][m.dataset] = m
    headers = ["method"] + [f"{d} {column}" for d in datasets for column in ("Acc (%)", "Tpi", "Tok")]
    rows = []
    for label, by_dataset in cells.items():
        row = [label]
        for dataset in datasets:
            m = by_dataset.get(dataset)
            row += [_acc(m, losses=True), _num(m.tpi if m else None), _num(m.tok if m else None)]
        accuracies = [m.accuracy for m in by_dataset.values() if m.accuracy is not None]
        if len(datasets) > 1:
            row.append(_num(sum(accuracies) / len(accuracies) if len(accuracies) == len(datasets) else None, "{:.2f}"))
        rows.append(row)
    if len(datasets) > 1:
        headers.append("Avg. Acc (%)")
    return Table("Comparison (paper Table 1)", headers, rows)


def threshold_table(metrics: Sequence[RunMetrics]) -> Table:
    """Table 2: SCALE by threshold τ — Acc, Tok and Hard per dataset."""
    scale = [m for m in metrics if m.method == "scale"]
    datasets = list(dict.fromkeys(m.dataset for m in scale))
    settings = labels(scale, ignore=("threshold",))
    cells: dict[tuple[str, float], dict[str, RunMetrics]] = defaultdict(dict)
    for m, setting in zip(scale, settings):
        cells[setting, m.threshold][m.dataset] = m
    shown_setting = len(set(settings)) > 1
    headers = ["τ"] + (["setting"] if shown_setting else []) + [
        f"{d} {column}" for d in datasets for column in ("Acc (%)", "Tok", "Hard (%)")]
    rows = []
    for (setting, threshold), by_dataset in sorted(cells.items(), key=lambda item: (item[0][0], item[0][1])):
        row = [_num(threshold, "{:g}")] + ([setting] if shown_setting else [])
        for dataset in datasets:
            m = by_dataset.get(dataset)
            row += [_acc(m), _num(m.tok if m else None), _num(m.hard if m else None, "{:.2f}")]
        rows.append(row)
    return Table("SCALE by difficulty threshold τ (paper Table 2)", headers, rows)


VARIANT_FIELDS = (("model", "{}"), ("threshold", "τ={:g}"), ("budget", "S2 {}"))


def labels(metrics: Sequence[RunMetrics], ignore: tuple[str, ...] = ()) -> list[str]:
    """Row label of each run: its method plus the parameters that vary among that method's runs;
    runs that would still share a label on one dataset are told apart by name."""
    varying: dict[str, list[str]] = {}
    for method in {m.method for m in metrics}:
        same = [m for m in metrics if m.method == method]
        varying[method] = [name for name, _ in VARIANT_FIELDS
                           if name not in ignore and len({getattr(m, name) for m in same}) > 1]
    result = []
    for m in metrics:
        parts = [fmt.format(getattr(m, name)) for name, fmt in VARIANT_FIELDS
                 if name in varying[m.method] and getattr(m, name) is not None]
        result.append(m.method + (f" ({', '.join(parts)})" if parts else ""))
    identity = [(label, m.dataset, *(getattr(m, name) for name in ignore)) for m, label in zip(metrics, result)]
    shared = Counter(identity)
    return [f"{label} [{m.name}]" if shared[key] > 1 else label for m, label, key in zip(metrics, result, identity)]


def to_rich(table: Table) -> RichTable:
    shown = RichTable(title=table.title)
    for index, header in enumerate(table.headers):
        shown.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
    for row in table.rows:
        shown.add_row(*row)
    return shown


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _acc(m: RunMetrics | None, losses: bool = False) -> str:
    """Acc ± its standard error; with ``losses``, the failed and ungraded samples beside it."""
    if m is None or m.accuracy is None:
        return "–"
    shown = f"{m.accuracy:.2f}" + (f" ± {m.accuracy_se:.2f}" if m.accuracy_se is not None else "")
    lost = [f"{count} {what}" for count, what in ((m.failed, "failed"), (m.ungraded, "ungraded")) if count]
    return shown + (f" ({', '.join(lost)})" if losses and lost else "")


def _policy(force_answer: bool | None) -> str:
    return "not recorded" if force_answer is None else "on" if force_answer else "off"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


# ---- plots ---------------------------------------------------------------------------------
def plots(metrics: Sequence[RunMetrics], out_dir: Path) -> list[Path]:
    """PNG figures for whatever the runs cover: accuracy (and Hard %) vs τ, accuracy vs the
    System 2 budget, accuracy vs tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graded = [m for m in metrics if m.accuracy is not None]
    figures = {"accuracy_vs_threshold.png": _threshold_plot(plt, [m for m in graded if m.method == "scale"]),
               "accuracy_vs_budget.png": _budget_plot(plt, [m for m in graded if m.budget is not None]),
               "accuracy_vs_tokens.png": _tokens_plot(plt, graded)}
    written = []
    for name, figure in figures.items():
        if figure is not None:
            figure.tight_layout()
            figure.savefig(out_dir / name, dpi=120)
            plt.close(figure)
            written.append(out_dir / name)
    return written


def _threshold_plot(plt: Any, scale: Sequence[RunMetrics]) -> Any:
    if not scale:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    hard_axis = axis.twinx()
    for (setting, dataset), points in _series(scale, "threshold").items():
        name = dataset + (f" {setting}" if setting != "scale" else "")
        thresholds = [p.threshold for p in points]
        line, = axis.plot(thresholds, [p.accuracy for p in points], marker="o", label=f"{name} Acc")
        hard_axis.plot(thresholds, [p.hard for p in points], marker="x", linestyle="--", color=line.get_color(),
                       alpha=0.6, label=f"{name} Hard")
    axis.set(xlabel="difficulty threshold τ", ylabel="Acc (%)", ylim=(0, 100),
             title="SCALE: accuracy and Hard % vs threshold (paper Table 2)")
    hard_axis.set(ylabel="Hard (% of sub-problems on System 2)", ylim=(0, 100))
    lines, names = axis.get_legend_handles_labels()
    hard_lines, hard_names = hard_axis.get_legend_handles_labels()
    axis.legend(lines + hard_lines, names + hard_names, fontsize="small")
    return figure


def _budget_plot(plt: Any, budgeted: Sequence[RunMetrics]) -> Any:
    if not budgeted:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (label, dataset), points in _series(budgeted, "budget").items():
        axis.plot([p.budget for p in points], [p.accuracy for p in points], marker="o", label=f"{label} · {dataset}")
    axis.set_xscale("log", base=2)
    axis.set(xlabel="System 2 token budget", ylabel="Acc (%)", ylim=(0, 100),
             title="Accuracy vs System 2 budget (paper Figure 2)")
    axis.legend(fontsize="small")
    return figure


def _tokens_plot(plt: Any, graded: Sequence[RunMetrics]) -> Any:
    if not graded:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(m.method for m in graded):
        points = [m for m in graded if m.method == method]
        axis.scatter([p.tok for p in points], [p.accuracy for p in points], label=method)
        for p in points:
            axis.annotate(p.dataset, (p.tok, p.accuracy), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    axis.set(xlabel="Tok (response tokens per problem)", ylabel="Acc (%)", ylim=(0, 100), title="Accuracy vs tokens")
    axis.legend(fontsize="small")
    return figure


def _series(metrics: Sequence[RunMetrics], x: str) -> dict[tuple[str, str], list[RunMetrics]]:
    """Runs grouped into lines (label without the ``x`` parameter, dataset), sorted along ``x``."""
    lines: dict[tuple[str, str], list[RunMetrics]] = defaultdict(list)
    for m, label in zip(metrics, labels(metrics, ignore=(x,))):
        lines[label, m.dataset].append(m)
    return {key: sorted(points, key=lambda p: getattr(p, x)) for key, points in lines.items()}


# ---- exports -------------------------------------------------------------------------------
def export_csv(metrics: Sequence[RunMetrics], path: Path) -> Path:
    names = [f.name for f in fields(RunMetrics)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(m.to_dict() for m in metrics)
    return path


def export_json(metrics: Sequence[RunMetrics], path: Path, models: Sequence[dict[str, Any] | None] = ()) -> Path:
    """Every run's metrics, and the models it ran on (``models``: per system id, root, max_model_len, source)."""
    shown = list(models) + [None] * (len(metrics) - len(models))
    rows = [{**m.to_dict(), "models": found} for m, found in zip(metrics, shown)]
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

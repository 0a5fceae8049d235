"""The experiment's outputs: results.csv (one row per cell and task), report.md and the plots.

Retention is measured against the dense model (1.0 = nothing lost; see `cola.evaluate.retention`), a
capability's retention is the mean over its tasks, and strategies are compared to the baseline by the
paired difference of retention at the same seed, so seed-to-seed noise shared by both cancels.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.data.schemas import DEFAULT_CAPABILITY as GENERAL
from cola.errors import ColaError
from cola.evaluate import retention
from cola.evaluate.builtins import current_name
from cola.atomic import read_json, write_text
from cola.experiment.store import inside
from cola.experiment.tables import capability_retention, paired_differences

if TYPE_CHECKING:
    import pandas as pd

    from cola.experiment.config import ExperimentConfig
    from cola.experiment.store import WorkDir

log = logging.getLogger(__name__)
COLUMNS = ("strategy", "method", "seed", "status", "task", "capability", "metric", "value", "stderr", "n",
           "tokens", "higher_is_better", "retention", "bits_per_parameter", "sparsity", "calibration_tokens",
           "curate_seconds", "compress_seconds", "eval_seconds", "error")


def result_rows(records: list[dict[str, Any]], dense: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Long rows: one per (cell, task) for finished cells, one per failed cell, plus the dense model's."""
    rows: list[dict[str, Any]] = []
    if dense:
        for result in dense.get("results", []):
            rows.append({"strategy": "dense", "method": "dense", "seed": "", "status": "ok",
                         **_task_columns(result), "retention": 1.0})
    for record in records:
        cell = {key: record.get(key) for key in ("strategy", "method", "seed", "status", "bits_per_parameter",
                                                 "sparsity", "calibration_tokens", "curate_seconds",
                                                 "compress_seconds", "eval_seconds", "error")}
        if record.get("status") != "ok":
            rows.append(cell)
            continue
        ratios = retention(record.get("results", []), dense.get("results", []))["tasks"] if dense else {}
        for columns in map(_task_columns, record.get("results", [])):
            rows.append({**cell, **columns, "retention": ratios.get(columns["task"])})
    return rows


def _task_columns(result: dict[str, Any]) -> dict[str, Any]:
    return {"task": current_name(result["task"], result.get("kind")), "capability": result["capability"],
            "metric": result["metric"], "value": result["value"], "stderr": result.get("stderr"), "n": result.get("n"),
            "tokens": result.get("tokens"), "higher_is_better": result["higher_is_better"]}


def included_rows(paths: Sequence[str | Path], rows: list[dict[str, Any]],
                  config: ExperimentConfig | None = None) -> list[dict[str, Any]]:
    """The cells of other runs' results.csv files (`cola experiment --include_results`: a grid split over
    machines, or a work directory that was lost) that `rows` (the work directory's own) lack, with retention
    recomputed against the dense results in `rows` (a file's own dense rows are used only where `rows` has
    none), so that every cell of one report compares with one dense evaluation. A cell found in two files
    comes from the first. Returns the rows to append, as strings the way the file holds them.

    Raises ColaError for a missing file, one without results.csv's columns, and (with `config`) a cell whose
    strategy or method label is not in the grid."""
    have = {(str(r["strategy"]), str(r["method"]), str(r["seed"])) for r in rows}
    dense = [r for r in rows if r["strategy"] == "dense"]
    labels = None if config is None else (set(config.strategies), {r.label for r in config.methods})
    added: list[dict[str, Any]] = []
    for path in map(Path, paths):
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                found = [{**row, "task": current_name(row["task"])} if "task" in row else row
                         for row in csv.DictReader(handle)]  # a file written before a proxy was renamed
        except OSError as exc:
            raise ColaError(f"--include_results: cannot read {path}: {exc.strerror or exc}") from exc
        missing = {"strategy", "method", "seed", "status", "task"} - set(found[0] if found else ())
        if missing:
            raise ColaError(f"--include_results: {path} is not an experiment's results.csv (no column "
                            f"{', '.join(sorted(missing))})")
        own_dense = [r for r in found if r["strategy"] == "dense"]
        if not dense and own_dense:
            dense, added = own_dense, [*added, *own_dense]
        _warn_if_dense_differs(path, dense, own_dense)
        cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for row in found:
            key = (row["strategy"], row["method"], row["seed"])
            if row["strategy"] != "dense" and key not in have:
                cells.setdefault(key, []).append(row)
        for (strategy, method, seed), cell in cells.items():
            if labels and (strategy not in labels[0] or method not in labels[1]):
                raise ColaError(f"--include_results: {path} has cell {strategy} × {method} × seed {seed}, "
                                f"which is not in this grid (strategies {', '.join(sorted(labels[0]))}; "
                                f"methods {', '.join(sorted(labels[1]))})")
            ratios = retention([_result(r) for r in cell if r["status"] == "ok"],
                               [_result(r) for r in dense])["tasks"] if dense else {}
            added += [{**r, "retention": ratios.get(r["task"], "") if r["status"] == "ok" else ""} for r in cell]
        have |= set(cells)
    return added


def _result(row: dict[str, Any]) -> dict[str, Any]:
    """A results.csv row as the task result `cola.evaluate.retention` reads."""
    def number(text: Any) -> Any:
        return None if text in ("", None) else float(text)

    n = number(row.get("n"))
    return {"task": row["task"], "capability": row["capability"], "metric": row["metric"],
            "value": float(row["value"]), "n": None if n is None else int(n),
            "higher_is_better": str(row["higher_is_better"]) == "True"}


def _warn_if_dense_differs(path: Path, dense: list[dict[str, Any]], own: list[dict[str, Any]]) -> None:
    ours = {r["task"]: float(r["value"]) for r in dense}
    differ = [r["task"] for r in own if r["task"] in ours and not math.isclose(float(r["value"]), ours[r["task"]],
                                                                              rel_tol=1e-6)]
    if differ:
        log.warning("%s: its dense results differ from this report's on %s; its cells' retention is recomputed "
                    "against this report's", path, ", ".join(differ))


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The long rows as CSV at `path`, written atomically (another run may be reading it)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    write_text(path, buffer.getvalue())
    return path


def _mean_std(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _digits(value: float) -> int:
    """Enough decimals for 3-4 significant figures."""
    if not math.isfinite(value) or value == 0:
        return 3
    return max(0, 3 - int(math.floor(math.log10(abs(value)))))


def render_markdown(frame: pd.DataFrame, experiment: WorkDir, *, command: str | None,
                    plots: list[str]) -> str:
    config = experiment.config
    ok = frame[(frame.status == "ok") & (frame.strategy != "dense")].copy()
    ok["seed"] = ok["seed"].astype(int)
    cells = frame[frame.strategy != "dense"].drop_duplicates(["strategy", "method", "seed"])
    total = len(config.seeds) * len(config.strategies) * len(config.methods)
    failed = cells[cells.status != "ok"]
    seconds = (cells.compress_seconds.sum() + cells.eval_seconds.sum()   # a curated set serves every method
               + cells.drop_duplicates(["strategy", "seed"]).curate_seconds.sum())
    lines = [f"# Experiment `{config.name}`", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    calib = config.calibration
    lines += [f"Model `{config.model}` ({config.dtype}); {calib.num_samples} samples × {calib.sequence_length} "
              f"tokens per calibration set; seeds {', '.join(map(str, config.seeds))}; "
              f"cells: {len(cells) - len(failed)} finished, {len(failed)} failed, "
              f"{total - len(cells)} not run of {total}; summed cell time {seconds / 3600:.2f} h.",
              "", "Values are mean ± std over the seeds that finished (n seeds in brackets). Perplexity and NLL: "
              "lower is better; accuracy: higher. Retention is dense/compressed for lower-is-better metrics and "
              "compressed/dense otherwise (1.0 = nothing lost), averaged over a capability's tasks. Each cell's "
              "standard errors (sampling over items or windows) are in results.csv; the dense model's are below.",
              ""]
    dense = frame[frame.strategy == "dense"]
    if not dense.empty:
        lines += ["## Dense model", "", "| task | capability | metric | value | ± stderr | n |",
                  "|---|---|---|---|---|---|"]
        for _, row in dense.iterrows():
            d = _digits(float(row.value))
            stderr = f"{float(row.stderr):.{d}f}" if row.stderr == row.stderr and row.stderr is not None else "—"
            lines.append(f"| {row.task} | {row.capability} | {row.metric} | {float(row.value):.{d}f} | {stderr} | "
                         f"{int(row.n) if row.n == row.n else '—'} |")
        lines.append("")
    lines += _calibration_sets(ok, list(config.strategies))
    caps = capability_retention(ok) if not ok.empty else None
    for run in config.methods:
        options = ", ".join(f"{k}={v}" for k, v in run.options.items())
        lines += [f"## {run.label}: {run.method} ({options})", ""]
        sub = ok[ok.method == run.label]
        if sub.empty:
            lines += ["No finished cell yet.", ""]
            continue
        tasks = list(dict.fromkeys(sub.task))
        capabilities = list(dict.fromkeys(sub.capability))
        head = ["strategy", "seeds", *[f"{t} {sub[sub.task == t].metric.iloc[0]}" for t in tasks],
                *[f"retention {c}" for c in capabilities]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for strategy in config.strategies:
            rows = sub[sub.strategy == strategy]
            if rows.empty:
                continue
            cells_ = [strategy, str(rows.seed.nunique())]
            for task in tasks:
                values = rows[rows.task == task].value.astype(float)
                cells_.append(_mean_std(values, _digits(values.mean()) if len(values) else 3))
            cap_rows = caps[(caps.method == run.label) & (caps.strategy == strategy)]
            cells_ += [_mean_std(cap_rows[cap_rows.capability == c].retention, 3) for c in capabilities]
            lines.append("| " + " | ".join(cells_) + " |")
        lines.append("")
        for baseline in (config.baseline, *config.compare_to):
            lines += _paired_table(caps[caps.method == run.label], baseline, list(config.strategies), capabilities)
        for baseline in config.compare_to:
            lines += _selection_table(caps[caps.method == run.label], sub, baseline, experiment)
    if not failed.empty:
        lines += ["## Failed cells", ""]
        lines += [f"- {r.strategy} × {r.method} × seed {int(r.seed)}: {r.error}" for _, r in failed.iterrows()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _paired_table(caps: pd.DataFrame, baseline: str, strategies: list[str], capabilities: list[str]) -> list[str]:
    """Markdown lines: each strategy's paired difference in retention against `baseline` per capability."""
    diffs = paired_differences(caps, baseline)
    diffs = diffs[diffs.strategy != baseline]
    if diffs.empty:
        return []
    lines = [f"Paired difference in retention against `{baseline}` at the same seed "
             "(positive: the strategy kept more), mean ± std over seeds [n]:", "",
             "| strategy | " + " | ".join(capabilities) + " |", "|---|" + "---|" * len(capabilities)]
    for strategy in strategies:
        s = diffs[diffs.strategy == strategy]
        if s.empty:
            continue
        values = []
        for c in capabilities:
            d = s[s.capability == c].difference
            values.append(f"{_signed(d)} [{len(d)}]" if len(d) else "—")
        lines.append(f"| {strategy} | " + " | ".join(values) + " |")
    return [*lines, ""]


def _selection_table(caps: pd.DataFrame, cells: pd.DataFrame, baseline: str, experiment: WorkDir) -> list[str]:
    """Markdown lines: each strategy against `baseline` (a random pick of the same pool, issue 19) at the same
    seed: its set size; the relative change of its mean retention over the targeted capabilities (every one but
    general), per seed and on average, and whether that sign held on every seed; the paired difference on
    general text; whether it *matches* the baseline (on every capability its mean retention is at least the
    baseline's mean minus the baseline's seed-to-seed std); the mean Δ targeted against the baseline's own
    variant of the same set size (`random_mixed_n8` for an 8-sample set), with whether its sign held on every
    seed; and its mean compression seconds. Only seeds both finished count."""
    config = experiment.config
    targeted = sorted(set(caps.capability) - {GENERAL})  # every capability but general text
    base = caps[caps.strategy == baseline]
    if not targeted or base.empty:
        return []
    spread = base.groupby("capability").retention.agg(["mean", "std"]).fillna(0.0)
    seconds = cells.drop_duplicates(["strategy", "seed"]).groupby("strategy").compress_seconds.mean()
    diffs = paired_differences(caps, baseline)  # only seeds both finished pair up
    general = diffs[diffs.capability == GENERAL]
    lines = [f"Against `{baseline}` (the same seeds): Δ targeted = relative change of the mean retention over "
             f"{', '.join(targeted)} per seed, in %; general = paired difference in general-text retention; "
             f"matches = on every capability the mean retention is at least `{baseline}`'s mean minus its "
             f"seed-to-seed std; same size = mean Δ targeted against `{baseline}`'s variant with as many samples "
             "(same sign on every seed?):", "",
             "| strategy | samples | Δ targeted per seed (%) | mean | same sign | general | matches | same size | "
             "compress s |", "|---|---|---|---|---|---|---|---|---|"]
    for strategy in config.strategies:
        own = caps[caps.strategy == strategy]
        changes = _targeted_changes(own, base, targeted)
        if strategy == baseline or not changes:
            continue
        own_general = general[general.strategy == strategy].difference
        means = own[own.seed.isin(base.seed)].groupby("capability").retention.mean()
        matches = all(means.get(c, -math.inf) >= spread.loc[c, "mean"] - spread.loc[c, "std"]
                      for c in spread.index)
        peer = _same_size(config, baseline, strategy)
        versus = _targeted_changes(own, caps[caps.strategy == peer], targeted) if peer else []
        lines.append(f"| {strategy} | {config.num_samples(strategy)} | "
                     f"{' / '.join(f'{c:+.1f}' for c in changes)} | {sum(changes) / len(changes):+.1f} | "
                     f"{_same_sign(changes)} | {_signed(own_general) if len(own_general) else '—'} | "
                     f"{'yes' if matches else 'no'} | "
                     f"{f'{sum(versus) / len(versus):+.1f} ({_same_sign(versus)})' if versus else '—'} | "
                     f"{seconds.get(strategy, math.nan):.0f} |")
    return [*lines, ""] if len(lines) > 4 else []


def _targeted_changes(own: pd.DataFrame, base: pd.DataFrame, targeted: list[str]) -> list[float]:
    """Per seed both finished: the relative change (%) of `own`'s mean retention over the `targeted` capabilities
    against `base`'s."""
    changes = []
    for seed in sorted(set(own.seed) & set(base.seed)):
        mine = own[(own.seed == seed) & own.capability.isin(targeted)].retention.mean()
        theirs = base[(base.seed == seed) & base.capability.isin(targeted)].retention.mean()
        changes.append(100.0 * (mine / theirs - 1.0))
    return changes


def _same_sign(changes: list[float]) -> str:
    """"yes" when every seed's change has one sign (over two seeds or more), "no" when not, "—" for one seed."""
    signs = {math.copysign(1.0, c) for c in changes}
    return "yes" if len(signs) == 1 and len(changes) > 1 else "no" if len(signs) > 1 else "—"


def _same_size(config: ExperimentConfig, baseline: str, strategy: str) -> str | None:
    """The strategy among the experiment's that runs `baseline`'s recipe unchanged at `strategy`'s set size (the
    variant `random_mixed_n8` for an 8-sample set), or None: there is none, or it is `baseline` itself or
    `strategy`."""
    recipe = config.recipe(baseline)[:2]
    size = config.num_samples(strategy)
    peer = next((s for s in config.strategies if config.recipe(s)[:2] == recipe and config.num_samples(s) == size),
                None)
    return None if peer in (None, baseline, strategy) else peer


def _calibration_sets(ok: pd.DataFrame, strategies: list[str]) -> list[str]:
    """How many tokens each strategy's sets hold (they differ: cut texts, generated text) and what curating
    cost; nothing for a results.csv from before the column existed."""
    if "calibration_tokens" not in ok or ok.calibration_tokens.isna().all():
        return []
    sets = ok.drop_duplicates(["strategy", "seed"])
    lines = ["## Calibration sets", "", "Tokens per set and curation time (one set per strategy and seed, shared by "
             "every method), mean with the range over seeds:", "",
             "| strategy | seeds | tokens per set | curate seconds |", "|---|---|---|---|"]
    for strategy in strategies:
        rows = sets[sets.strategy == strategy]
        if rows.empty:
            continue
        cells = [_mean_range(rows[column].dropna().astype(float)) for column in ("calibration_tokens",
                                                                                "curate_seconds")]
        lines.append(f"| {strategy} | {len(rows)} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def _mean_range(values: pd.Series) -> str:
    if values.empty:
        return "—"
    low, high = f"{values.min():,.0f}", f"{values.max():,.0f}"
    return f"{values.mean():,.0f}" if low == high else f"{values.mean():,.0f} ({low}–{high})"


def _signed(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:+.3f}"
    return f"{values.mean():+.3f} ± {values.std(ddof=1):.3f}"


def write_report(experiment: WorkDir, out_dir: str | Path, *, command: str | None = None,
                 plots: bool = True, include: Sequence[str | Path] = ()) -> dict[str, Path]:
    """results.csv, report.md and (with `plots`) the PNGs in `out_dir`; returns their paths. Each path is
    checked to stay inside `out_dir` (a linked results.csv pointing elsewhere is refused). `include`: other
    runs' results.csv files whose cells the work directory lacks (`included_rows`; the spectrum plot, drawn
    from the cells' records, shows only the work directory's own)."""
    import pandas as pd

    out_dir = inside(out_dir)
    dense = read_json(experiment.dense_file())
    rows = result_rows(experiment.records(), dense if dense and dense.get("status") == "ok" else None)
    rows += included_rows(include, rows, experiment.config)  # read before results.csv is written: it may be one
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results_csv": write_results_csv(rows, inside(out_dir, "results.csv"))}
    frame = pd.read_csv(paths["results_csv"])
    made: list[str] = []
    if plots:
        from cola.experiment.plots import make_plots

        made = [p.relative_to(out_dir).as_posix() for p in make_plots(experiment, frame, inside(out_dir, "plots"))]
    report = inside(out_dir, "report.md")
    write_text(report, render_markdown(frame, experiment, command=command, plots=made))
    paths["report"] = report
    return paths

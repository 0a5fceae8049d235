"""The experiment's plots (matplotlib, headless): retention per capability, the pool's activation map, and the
FFN weight spectrum of dense vs compressed models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.atomic import read_json
from cola.plots import pca_2d, pool_map_panel, pyplot
from cola.experiment.store import inside
from cola.experiment.tables import capability_retention, paired_differences

if TYPE_CHECKING:
    import pandas as pd

    from cola.experiment.store import WorkDir


def _save_with_legend(fig: Any, axes: Any, path: Path) -> Any:
    """One legend for the figure's labelled artists below the panels, wrapped to the figure's width (about 1.5
    inches per entry) so that no entry is cut off, then save and close; returns the legend."""
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    width, height = fig.get_size_inches()
    columns = max(1, min(len(handles), int(width // 1.5)))
    rows = -(-len(handles) // columns)
    legend = fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=columns, fontsize=8)
    fig.tight_layout(rect=(0, min(0.4, (0.1 + 0.2 * rows) / height), 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return legend


def strategy_colors(strategies: list[str]) -> dict[str, Any]:
    """One colour per strategy, distinct for up to 20 (tab20 for more than 10), fixed by the strategy's place."""
    cmap = pyplot().get_cmap("tab10" if len(strategies) <= 10 else "tab20")
    return {strategy: cmap(i % cmap.N) for i, strategy in enumerate(strategies)}


def plot_retention(caps: pd.DataFrame, strategies: list[str], methods: list[str], capabilities: list[str],
                   baseline: str, path: Path) -> Path | None:
    """One column per method: retention per capability on an axis from 0 (one bar per strategy, its mean over
    seeds; whiskers ± one std over seeds), and below it each strategy's paired difference in retention against
    the baseline (same seed; mean and ± std), where differences of a few hundredths show."""
    if caps.empty:
        return None
    plt = pyplot()
    present = [s for s in strategies if s in set(caps.strategy)]
    diffs = paired_differences(caps, baseline)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.5 * len(methods), 7.0), squeeze=False)
    width = 0.8 / max(1, len(present))
    x = np.arange(len(capabilities))
    colors = strategy_colors(strategies)
    seeds = caps.groupby(["method", "strategy", "capability"]).retention.count()
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        for i, strategy in enumerate(present):
            offset = (i - (len(present) - 1) / 2) * width
            for ax, frame, field in ((top, caps, "retention"), (bottom, diffs, "difference")):
                rows = frame[(frame.method == method) & (frame.strategy == strategy)]
                stats = [rows[rows.capability == c][field] for c in capabilities]
                ax.bar(x + offset, [v.mean() if len(v) else np.nan for v in stats], width,
                       yerr=[v.std(ddof=1) if len(v) > 1 else 0.0 for v in stats], capsize=2,
                       color=colors[strategy], label=strategy, error_kw={"elinewidth": 0.8})
        finite = caps[caps.method == method].retention.dropna()
        top.set_ylim(0.0, max(1.05, finite.max() + 0.03) if len(finite) else 1.05)
        top.axhline(1.0, color="black", linewidth=0.8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set_title(method)
        for ax in (top, bottom):
            ax.set_xticks(x, capabilities)
    counts = sorted(set(seeds.tolist()))
    seeds_note = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    axes[0][0].set_ylabel("retention vs dense (1 = nothing lost)")
    axes[1][0].set_ylabel(f"retention − {baseline} (same seed)")
    fig.suptitle(f"bars: mean over seeds ({seeds_note} per bar); whiskers: ± one standard deviation over seeds",
                 fontsize=9)
    _save_with_legend(fig, axes.flat, path)
    return path


def _pool(experiment: WorkDir, strategy: str, seed: int) -> pd.DataFrame | None:
    import pandas as pd

    path = experiment.pool_file(strategy, seed)
    return pd.read_parquet(path) if path.is_file() else None


def plot_activation_map(experiment: WorkDir, path: Path) -> Path | None:
    """The candidate pool's activation features in 2-D (PCA), coloured by dataset, with each strategy's picks
    marked: one panel per strategy that selected from the same pool (same seed, same processed candidates)."""
    config = experiment.config
    seed = config.seeds[0]
    pool = _pool(experiment, config.plots.activation_map_strategy, seed)
    if pool is None or not len(pool) or not len(pool.feature.iloc[0]):
        return None
    xy = pca_2d(np.stack(pool.feature.to_numpy()))
    panels = []
    for strategy in config.strategies:
        other = _pool(experiment, strategy, seed)
        if (other is not None and len(other) == len(pool)
                and other.num_tokens.tolist() == pool.num_tokens.tolist()
                and other.dataset_name.tolist() == pool.dataset_name.tolist()):
            panels.append((strategy, other.selected.to_numpy(bool)))
    plt = pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    for ax, (strategy, selected) in zip(axes.flat, panels):
        pool_map_panel(ax, xy, pool.dataset_name.tolist(), selected,
                       f"{strategy} (seed {seed}): {int(selected.sum())} of {len(pool)}")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, markerscale=2, loc="best")
    fig.suptitle("candidate pool in activation space\n(PCA of the projected layer activations)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spectrum(experiment: WorkDir, dense: dict[str, Any] | None, path: Path) -> Path | None:
    """Singular values of one FFN matrix, one column per method, each strategy's compressed model (first
    finished seed) against the dense model's: on top its ratio to the dense spectrum; below, that ratio minus the
    mean ratio of all strategies drawn (a moving average over 15 singular values), which is where strategies
    differ: their ratios to dense overlap within a few thousandths."""
    config = experiment.config
    records = [r for r in experiment.records() if r.get("status") == "ok" and r.get("spectrum")]
    if not records or not dense:
        return None
    plt = pyplot()
    methods = [m.label for m in config.methods]
    fig, axes = plt.subplots(2, len(methods), figsize=(4.8 * len(methods), 6.6), squeeze=False, sharex=True)
    reference = np.asarray(dense["spectrum"]["singular_values"])
    colors = strategy_colors(list(config.strategies))
    styles = ("-", "--", ":", "-.")
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        ratios = {}
        for strategy in config.strategies:
            found = [r for r in records if r["method"] == method and r["strategy"] == strategy]
            if found:
                ratios[strategy] = np.asarray(found[0]["spectrum"]["singular_values"]) / reference
        mean = np.mean(list(ratios.values()), axis=0) if ratios else None
        for i, (strategy, ratio) in enumerate(ratios.items()):
            style = {"color": colors[strategy], "linestyle": styles[i % len(styles)], "linewidth": 1.0}
            top.plot(ratio, label=strategy, **style)
            width = min(15, len(ratio) - 1 + len(ratio) % 2)  # odd, at most the spectrum's length
            window = np.ones(width) / width
            half = width // 2  # a centred average, drawn where the whole window fits
            bottom.plot(np.arange(half, len(ratio) - half), np.convolve(ratio - mean, window, mode="valid"),
                        **style)
        top.axhline(1.0, color="black", linewidth=0.8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set_title(method)
        bottom.set_xlabel("singular value index (largest first)")
    module = dense["spectrum"]["module"].split(".", 1)[-1]
    axes[0][0].set_ylabel(f"compressed / dense\n{module}")
    axes[1][0].set_ylabel("ratio − mean ratio of the strategies\n(moving average over 15)")
    _save_with_legend(fig, axes[0], path)
    return path


def make_plots(experiment: WorkDir, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = frame[(frame.status == "ok") & (frame.strategy != "dense")]
    config = experiment.config
    made = [plot_retention(capability_retention(ok), list(config.strategies), [m.label for m in config.methods],
                           list(dict.fromkeys(ok.capability)), config.baseline, inside(out_dir, "retention.png")),
            plot_activation_map(experiment, inside(out_dir, "activation_map.png")),
            plot_spectrum(experiment, read_json(experiment.dense_file()),
                          inside(out_dir, "ffn_spectrum.png"))]
    return [p for p in made if p is not None]

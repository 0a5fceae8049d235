"""The experiment's plots (matplotlib, headless): retention per capability, the pool's activation map, and the
FFN weight spectrum of dense vs compressed models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.atomic import read_json
from cola.experiment.store import inside
from cola.experiment.tables import capability_retention, paired_differences

if TYPE_CHECKING:
    import pandas as pd

    from cola.experiment.store import WorkDir


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    _pyplot().close(fig)
    return legend


def plot_retention(caps: pd.DataFrame, strategies: list[str], methods: list[str], capabilities: list[str],
                   baseline: str, path: Path) -> Path | None:
    """One column per method: retention per capability, one bar per strategy (± std over seeds), and below it
    each strategy's paired difference in retention against the baseline (same seed)."""
    if caps.empty:
        return None
    plt = _pyplot()
    present = [s for s in strategies if s in set(caps.strategy)]
    diffs = paired_differences(caps, baseline)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.5 * len(methods), 7.0), squeeze=False)
    width = 0.8 / max(1, len(present))
    x = np.arange(len(capabilities))
    colors = plt.get_cmap("tab10")
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        for i, strategy in enumerate(present):
            offset = (i - (len(present) - 1) / 2) * width
            for ax, frame, field in ((top, caps, "retention"), (bottom, diffs, "difference")):
                rows = frame[(frame.method == method) & (frame.strategy == strategy)]
                stats = [rows[rows.capability == c][field] for c in capabilities]
                ax.bar(x + offset, [v.mean() if len(v) else np.nan for v in stats], width,
                       yerr=[v.std(ddof=1) if len(v) > 1 else 0.0 for v in stats], capsize=2,
                       color=colors(strategies.index(strategy) % 10), label=strategy)
        finite = caps[caps.method == method].retention.dropna()
        if len(finite):
            top.set_ylim(max(0.0, finite.min() - 0.05), min(1.1, max(1.02, finite.max() + 0.03)))
        top.axhline(1.0, color="black", linewidth=0.8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set_title(method)
        for ax in (top, bottom):
            ax.set_xticks(x, capabilities)
    axes[0][0].set_ylabel("retention vs dense (1 = nothing lost)")
    axes[1][0].set_ylabel(f"retention − {baseline} (same seed)")
    _save_with_legend(fig, axes.flat, path)
    return path


def _pool(experiment: WorkDir, strategy: str, seed: int) -> pd.DataFrame | None:
    import pandas as pd

    path = experiment.pool_file(strategy, seed)
    return pd.read_parquet(path) if path.is_file() else None


def plot_activation_map(experiment: WorkDir, path: Path) -> Path | None:
    """The candidate pool's activation features in 2-D (PCA), coloured by dataset, with each strategy's picks
    marked: one panel per strategy that selected from the same pool (same seed, same processed candidates)."""
    from sklearn.decomposition import PCA

    config = experiment.config
    seed = config.seeds[0]
    pool = _pool(experiment, config.plots.activation_map_strategy, seed)
    if pool is None or not len(pool) or not len(pool.feature.iloc[0]):
        return None
    xy = PCA(n_components=2, random_state=0).fit_transform(np.stack(pool.feature.to_numpy()))
    panels = []
    for strategy in config.strategies:
        other = _pool(experiment, strategy, seed)
        if (other is not None and len(other) == len(pool)
                and other.num_tokens.tolist() == pool.num_tokens.tolist()
                and other.dataset_name.tolist() == pool.dataset_name.tolist()):
            panels.append((strategy, other.selected.to_numpy(bool)))
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    names = list(dict.fromkeys(pool.dataset_name))
    colors = plt.get_cmap("tab10")
    for ax, (strategy, selected) in zip(axes.flat, panels):
        for j, name in enumerate(names):
            rows_ = (pool.dataset_name == name).to_numpy()
            ax.scatter(xy[rows_, 0], xy[rows_, 1], s=5, alpha=0.35, color=colors(j % 10), label=name)
        ax.scatter(xy[selected, 0], xy[selected, 1], s=22, facecolors="none", edgecolors="black",
                   linewidths=0.9, label="selected")
        ax.set_title(f"{strategy} (seed {seed}): {int(selected.sum())} of {len(pool)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, markerscale=2, loc="best")
    fig.suptitle("candidate pool in activation space\n(PCA of the projected layer activations)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spectrum(experiment: WorkDir, dense: dict[str, Any] | None, path: Path) -> Path | None:
    """Singular values of one FFN matrix, one column per method: the dense model and each strategy's compressed
    model (first finished seed) on top, each one's ratio to the dense spectrum below (where strategies differ)."""
    config = experiment.config
    records = [r for r in experiment.records() if r.get("status") == "ok" and r.get("spectrum")]
    if not records or not dense:
        return None
    plt = _pyplot()
    methods = [m.label for m in config.methods]
    fig, axes = plt.subplots(2, len(methods), figsize=(4.5 * len(methods), 6.4), squeeze=False, sharex=True)
    reference = np.asarray(dense["spectrum"]["singular_values"])
    colors = plt.get_cmap("tab10")
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        top.plot(reference, color="black", linewidth=1.6, label="dense")
        for i, strategy in enumerate(config.strategies):
            found = [r for r in records if r["method"] == method and r["strategy"] == strategy]
            if found:
                values = np.asarray(found[0]["spectrum"]["singular_values"])
                top.plot(values, linewidth=0.9, color=colors(i % 10), label=strategy)
                bottom.plot(values / reference, linewidth=0.9, color=colors(i % 10))
        top.set_yscale("log")
        top.set_title(method)
        bottom.axhline(1.0, color="black", linewidth=0.8)
        bottom.set_xlabel("singular value index")
    axes[0][0].set_ylabel(f"singular value\n{dense['spectrum']['module'].split('.', 1)[-1]}")
    axes[1][0].set_ylabel("compressed / dense")
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

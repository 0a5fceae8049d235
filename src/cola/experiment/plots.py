"""The experiment's plots (matplotlib, headless): retention per capability, the pool's activation map, and the
FFN weight spectrum of dense vs compressed models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from cola.experiment.runner import Experiment


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_retention(caps: pd.DataFrame, strategies: list[str], methods: list[str], path: Path) -> Path | None:
    """One panel per method: grouped bars of retention per capability, one bar per strategy (± std over seeds)."""
    if caps.empty:
        return None
    plt = _pyplot()
    capabilities = list(dict.fromkeys(caps.capability))
    present = [s for s in strategies if s in set(caps.strategy)]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.8), squeeze=False, sharey=False)
    width = 0.8 / max(1, len(present))
    for ax, method in zip(axes[0], methods):
        sub = caps[caps.method == method]
        for i, strategy in enumerate(present):
            stats = [sub[(sub.strategy == strategy) & (sub.capability == c)].retention for c in capabilities]
            means = [v.mean() if len(v) else np.nan for v in stats]
            errs = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in stats]
            ax.bar(np.arange(len(capabilities)) + (i - (len(present) - 1) / 2) * width, means, width, yerr=errs,
                   label=strategy, capsize=2)
        ax.set_xticks(np.arange(len(capabilities)), capabilities)
        ax.set_title(method)
        ax.axhline(1.0, color="black", linewidth=0.8)
        finite = sub.retention.dropna()
        if len(finite):
            ax.set_ylim(max(0.0, finite.min() - 0.05), min(1.1, max(1.02, finite.max() + 0.03)))
    axes[0][0].set_ylabel("retention vs dense (1 = nothing lost)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pool(experiment: Experiment, strategy: str, seed: int) -> pd.DataFrame | None:
    import pandas as pd

    path = experiment.calibration_dir(strategy, seed) / "pool.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def plot_activation_map(experiment: Experiment, path: Path) -> Path | None:
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
    fig.suptitle("candidate pool in activation space (PCA of the projected layer activations)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spectrum(experiment: Experiment, dense: dict[str, Any] | None, path: Path) -> Path | None:
    """Singular values of one FFN matrix: the dense model against each strategy's compressed model (first
    finished seed), one panel per method."""
    config = experiment.config
    records = [r for r in experiment.records() if r.get("status") == "ok" and r.get("spectrum")]
    if not records or not dense:
        return None
    plt = _pyplot()
    methods = [m.label for m in config.methods]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
    reference = dense["spectrum"]
    for ax, method in zip(axes[0], methods):
        ax.plot(reference["singular_values"], color="black", linewidth=1.6, label="dense")
        for strategy in config.strategies:
            found = [r for r in records if r["method"] == method and r["strategy"] == strategy]
            if found:
                ax.plot(found[0]["spectrum"]["singular_values"], linewidth=0.9, label=strategy)
        ax.set_yscale("log")
        ax.set_title(method)
        ax.set_xlabel("index")
    axes[0][0].set_ylabel(f"singular value of {reference['module'].split('.', 1)[-1]}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(experiment: Experiment, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    from cola.experiment.report import capability_retention
    from cola.experiment.runner import DENSE_FILE, read_json

    out_dir.mkdir(parents=True, exist_ok=True)
    ok = frame[(frame.status == "ok") & (frame.strategy != "dense")]
    config = experiment.config
    made = [plot_retention(capability_retention(ok), list(config.strategies), [m.label for m in config.methods],
                           out_dir / "retention.png"),
            plot_activation_map(experiment, out_dir / "activation_map.png"),
            plot_spectrum(experiment, read_json(experiment.work_dir / DENSE_FILE), out_dir / "ffn_spectrum.png")]
    return [p for p in made if p is not None]

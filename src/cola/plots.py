"""Pictures of one curation (`cola curate --plots`, `COLA.run(plots=True)`), drawn from the set's own files into
its `cola_plots/` folder (matplotlib, headless):

- stage1.png: Stage 1's score of every dataset for every probed capability (a heatmap), with each dataset's quota;
- activation_map.png: the pool's activation features in 2-D (PCA), coloured by dataset, the picks circled;
- pick_distances.png: each candidate's distance to its nearest pick (the candidates not picked), for the picks
  made and for a seeded random pick of the same size (lower: the picks represent the pool better).

A figure whose data the run did not compute is skipped with the reason: Stage 1's table needs Stage 1, the other
two the pool's activation features (a model-based Stage 3, or Stage 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cola.atomic import atomic_path

if TYPE_CHECKING:
    import pandas as pd



def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, **kwargs: Any) -> Path:
    """Save `fig` at `path` (PNG, 110 dpi) atomically and close it."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png", **kwargs)
    pyplot().close(fig)
    return path


def pca_2d(features: np.ndarray) -> np.ndarray:
    """(N, 2): the first two principal components of (N, P) features (deterministic)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(np.asarray(features, np.float64))


def pool_map_panel(ax: Any, xy: np.ndarray, dataset_names: list[str], selected: np.ndarray, title: str) -> None:
    """One panel of the pool in 2-D: (N, 2) points coloured by dataset, the (N,) bool `selected` circled."""
    colors = pyplot().get_cmap("tab10")
    names = np.asarray(dataset_names)
    for j, name in enumerate(dict.fromkeys(dataset_names)):
        rows = names == name
        ax.scatter(xy[rows, 0], xy[rows, 1], s=5, alpha=0.35, color=colors(j % 10), label=name)
    ax.scatter(xy[selected, 0], xy[selected, 1], s=22, facecolors="none", edgecolors="black", linewidths=0.9,
               label="selected")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_stage1(stage1: dict[str, Any], path: Path) -> Path:
    """Heatmap of Stage 1's scores (datasets × probed capabilities, 0–1), each cell labelled, and each dataset's
    quota (samples Stage 3 picks from it) beside its row."""
    coverage, quotas = stage1["coverage"], stage1.get("quotas", {})
    datasets = list(coverage)
    capabilities = list(dict.fromkeys(c for row in coverage.values() for c in row))
    scores = np.array([[coverage[d].get(c, {}).get("score", np.nan) for c in capabilities] for d in datasets])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(capabilities) + 3.6, 0.5 * len(datasets) + 1.6))
    image = ax.imshow(scores, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (row, column), value in np.ndenumerate(scores):
        ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(capabilities)), capabilities)
    ax.set_yticks(range(len(datasets)), [f"{d}  (quota {quotas.get(d, 0)})" for d in datasets], fontsize=8)
    weights = stage1.get("capability_weights", {})
    ax.set_xlabel("probed capability (weight " + ", ".join(f"{c} {weights[c]:g}" for c in capabilities
                                                           if c in weights) + ")", fontsize=8)
    fig.colorbar(image, ax=ax, label="Stage 1 score")
    ax.set_title("Stage 1: how well each dataset matches each capability", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_activation_map(pool: pd.DataFrame, path: Path) -> Path:
    """The pool's projected activation features in 2-D (PCA), coloured by dataset, the picks circled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    selected = pool.selected.to_numpy(bool)
    pool_map_panel(ax, pca_2d(np.stack(pool.feature.to_numpy())), pool.dataset_name.tolist(), selected,
                   f"{int(selected.sum())} picks of {len(pool)} candidates in activation space (PCA)")
    ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    return save(fig, path)


def plot_pick_distances(pool: pd.DataFrame, path: Path, seed: int, method: str = "") -> Path:
    """Histograms of each candidate's distance to its nearest pick, over the candidates not picked: the run's
    picks (made by `method`) against a seeded random pick of the same size from the same pool, with each one's
    mean. Where the run's picks were random too, the comparison is with another random pick."""
    from cola.cluster import nearest_selected_distance

    features = np.stack(pool.feature.to_numpy())
    selected = pool.selected.to_numpy(bool)
    random_pick = np.random.default_rng([seed, 1]).choice(len(pool), int(selected.sum()), replace=False)
    others = np.ones(len(pool), bool)
    others[random_pick] = False
    made = pool.distance_to_nearest_selected.to_numpy(np.float64)[~selected]  # what the run recorded
    chance = nearest_selected_distance(features, random_pick)[others]
    if not len(made) or not len(chance):  # every candidate picked: nothing left to represent
        made = chance = np.zeros(1)
    ours = f"the picks ({method})" if method else "the picks"
    theirs = "another random pick" if method == "random" else "a random pick"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    bins = np.linspace(0.0, max(made.max(), chance.max()) * 1.02 or 1.0, 40)
    for values, label, color in ((made, ours, "tab:blue"), (chance, theirs, "tab:gray")):
        ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{label}: mean {values.mean():.3f}")
        ax.axvline(values.mean(), color=color, linewidth=1.2)
    ax.set_xlabel("distance to the nearest pick (projected activation features)")
    ax.set_ylabel("candidates not picked")
    ax.set_title(f"how well {int(selected.sum())} picks represent {len(pool)} candidates (lower is better)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def write_plots(output_dir: str | os.PathLike[str], seed: int) -> tuple[list[Path], list[str]]:
    """Draw the figures of the set in `output_dir` (a `cola curate` output) into its cola_plots/ folder; returns
    (the figures written, a reason for each one skipped)."""
    import pandas as pd

    from cola.atomic import read_json
    from cola.export import MANIFEST_FILE, PLOTS_DIR, POOL_PARQUET

    directory = Path(output_dir)
    manifest = read_json(directory / MANIFEST_FILE) or {}
    pool = pd.read_parquet(directory / POOL_PARQUET)
    plots = directory / PLOTS_DIR
    written: list[Path] = []
    skipped: list[str] = []
    if manifest.get("stage1", {}).get("coverage"):
        written.append(plot_stage1(manifest["stage1"], plots / "stage1.png"))
    else:
        skipped.append("stage1.png: Stage 1 did not run (it runs with --stage1 or a targeted deployment)")
    if len(pool) and len(pool.feature.iloc[0]):
        written.append(plot_activation_map(pool, plots / "activation_map.png"))
        method = str(manifest.get("stages", {}).get("selection_method", ""))
        written.append(plot_pick_distances(pool, plots / "pick_distances.png", seed, method))
    else:
        skipped.append("activation_map.png, pick_distances.png: the run computed no activation features (they "
                       "come with --selection_method activations, moments or outlier_coverage, or with --stage1)")
    return written, skipped

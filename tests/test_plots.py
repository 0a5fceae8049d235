"""The figures: `cola curate --plots` draws what the run computed and says why it skipped the rest; the experiment's
retention bars start at 0 with their whiskers explained, and its spectrum panel separates the strategies."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cola.api import COLA
from cola.config import SelectionConfig
from cola.export import MANIFEST_FILE, POOL_PARQUET

from tests.conftest import byte_tokenizer, tiny_llama

PNG = b"\x89PNG\r\n\x1a\n"


def curate(pool_files, out, **settings) -> COLA:
    plots = settings.pop("plots", True)
    cola = COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), available_datasets=[
        str(p) for p in pool_files.values()], output_dir=out, quiet=True, candidates_per_source=8, reference_size=8,
        **settings)
    cola.run(num_samples=4, sequence_length=32, plots=plots)
    return cola


def test_curate_plots_draw_each_figure_the_run_has_data_for(tmp_path, pool_files) -> None:
    full = curate(pool_files, tmp_path / "full", stage1=True, selection=SelectionConfig(method="activations"))
    names = ["activation_map.png", "pick_distances.png", "stage1.png"]
    assert sorted(p.name for p in (tmp_path / "full" / "cola_plots").iterdir()) == names
    assert all((tmp_path / "full" / "cola_plots" / n).read_bytes().startswith(PNG) for n in names)
    assert full.plots_report == [f"drew {tmp_path / 'full' / 'cola_plots' / n}" for n in
                                 ("stage1.png", "activation_map.png", "pick_distances.png")]

    # the default random pick with no Stage 1 never runs the model: only the reasons
    bare = curate(pool_files, tmp_path / "bare", stage1=False)
    assert not (tmp_path / "bare" / "cola_plots").exists() or not any((tmp_path / "bare" / "cola_plots").iterdir())
    assert [line.split(":")[0] for line in bare.plots_report] == [
        "not drawn", "not drawn"] and "--stage1" in bare.plots_report[0]

    # a random pick within Stage 1's quotas keeps the features Stage 1 computed: all three figures
    quotas = curate(pool_files, tmp_path / "quotas", stage1=True)
    pool = pd.read_parquet(tmp_path / "quotas" / POOL_PARQUET)
    assert len(pool.feature.iloc[0]) > 0 and (pool.distance_to_nearest_selected[pool.selected] == 0).all()
    assert len(quotas.plots_report) == 3 and all(line.startswith("drew") for line in quotas.plots_report)


def test_a_later_run_without_plots_drops_the_old_figures(tmp_path, pool_files) -> None:
    curate(pool_files, tmp_path / "out", stage1=True)
    assert (tmp_path / "out" / "cola_plots" / "stage1.png").is_file()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    (tmp_path / "out" / "plots").mkdir()
    (tmp_path / "out" / "plots" / "mine.png").write_bytes(PNG)
    curate(pool_files, tmp_path / "out", stage1=True, plots=False)
    assert not (tmp_path / "out" / "cola_plots").exists()  # figures of another set would mislead
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # the user's own files are kept
    assert (tmp_path / "out" / "plots" / "mine.png").read_bytes() == PNG
    assert "stage1" in json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())


def test_plots_must_be_a_bool(tmp_path, pool_files) -> None:
    from cola.errors import ColaError

    cola = COLA(model=tiny_llama(), tokenizer=byte_tokenizer(), available_datasets=[
        str(p) for p in pool_files.values()], output_dir=tmp_path / "out", quiet=True)
    with pytest.raises(ColaError, match="COLA.run: plots must be True or False, got 'yes'"):
        cola.run(num_samples=4, sequence_length=32, plots="yes")
    assert not (tmp_path / "out").exists()


def test_fifteen_strategies_get_fifteen_colours() -> None:
    from cola.experiment.plots import strategy_colors

    colors = strategy_colors([f"s{i}" for i in range(15)])
    assert len(set(colors.values())) == 15


def captured_figure(monkeypatch) -> dict:
    import cola.experiment.plots as plots

    seen: dict = {}
    monkeypatch.setattr(plots, "_save_with_legend", lambda fig, axes, path: seen.update(fig=fig))
    return seen


def test_retention_bars_start_at_zero_and_say_what_the_whiskers_are(tmp_path, monkeypatch) -> None:
    from cola.experiment.plots import plot_retention

    seen = captured_figure(monkeypatch)
    caps = pd.DataFrame([{"method": "wanda50", "strategy": s, "seed": seed, "capability": c,
                          "retention": 0.8 + 0.01 * seed + (0.05 if s == "b" else 0.0)}
                         for s in ("a", "b") for seed in range(3) for c in ("math", "code")])
    plot_retention(caps, ["a", "b"], ["wanda50"], ["math", "code"], "a", tmp_path / "r.png")
    top, bottom = seen["fig"].axes[:2]
    assert top.get_ylim()[0] == 0.0 and top.get_ylim()[1] >= 1.0
    assert "whiskers: ± one standard deviation over seeds" in seen["fig"]._suptitle.get_text()
    assert "(3 per bar)" in seen["fig"]._suptitle.get_text()
    heights = sorted(round(p.get_height(), 6) for p in bottom.patches)
    assert heights == [0.0, 0.0, 0.05, 0.05]  # b − a, paired by seed


def test_spectrum_panel_shows_each_strategy_against_the_strategies_mean(tmp_path, monkeypatch) -> None:
    from cola.experiment.plots import plot_spectrum

    seen = captured_figure(monkeypatch)
    dense = np.linspace(3.0, 0.2, 64)
    records = [{"status": "ok", "method": "wanda50", "strategy": s, "spectrum": {"singular_values": list(dense * f)}}
               for s, f in (("low", 0.99), ("high", 1.01))]
    experiment = SimpleNamespace(config=SimpleNamespace(methods=[SimpleNamespace(label="wanda50")],
                                                        strategies=["low", "high"]),
                                 records=lambda: records)
    plot_spectrum(experiment, {"spectrum": {"singular_values": list(dense), "module": "model.layers.9.mlp.down"}},
                  tmp_path / "s.png")
    top, bottom = seen["fig"].axes[:2]
    assert [round(float(np.mean(line.get_ydata())), 6) for line in bottom.lines[:2]] == [-0.01, 0.01]
    assert [round(float(np.mean(line.get_ydata())), 6) for line in top.lines[:2]] == [0.99, 1.01]
    assert len(bottom.lines[0].get_ydata()) == 64 - 14  # the centred average where its 15 values fit

"""Output sets switch at once: a writer killed at any step leaves one complete set whose hashes verify, the next
run removes its leftovers, readers refuse a set that does not match its manifest, foreign folders are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cola.cli import main
from cola.compress.calibration import load_calibration
from cola.errors import ColaError
from cola.export import (DATASET_DIR, DATASET_PARQUET, MANIFEST_FILE, POOL_PARQUET, SAMPLES_FILE, _lock,
                         check_curate_output, clean_stale, output_directory)

from tests.conftest import REPO, byte_tokenizer
from tests.compress.test_api import truncate_half, write_calibration

LENGTHS = (32, 32, 20, 32)  # write_calibration's samples


def set_ids(seed: int) -> list[list[int]]:
    """The token ids write_calibration(…, seed) writes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n).tolist() for n in LENGTHS]


def assert_one_complete_set(out: Path, seed: int) -> None:
    """`out` holds exactly the set of `seed`: no file more or less than its manifest lists, each matching it."""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == set(manifest["outputs"]) | {MANIFEST_FILE}
    assert {name.split("/")[0] for name in files} == {SAMPLES_FILE, DATASET_DIR, DATASET_PARQUET, POOL_PARQUET,
                                                      MANIFEST_FILE}
    assert [x.tolist() for x in load_calibration(out, byte_tokenizer()).input_ids] == set_ids(seed)


def leftovers(out: Path, mark: str = ".cola-") -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}{mark}"))


def kill_mid_write(tmp_path: Path, patch: str, run: str) -> None:
    """Run `patch` then `run` in a child Python process; `patch` makes some write step call `pause()`, which
    marks the file `reached` and sleeps; the child is killed with SIGKILL there."""
    marker = tmp_path / "reached"
    script = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path

        def pause(*_args, **_kwargs):
            Path({marker!r}).write_text("paused")
            time.sleep(600)

    """).format(marker=str(marker)) + textwrap.dedent(patch) + "\n" + textwrap.dedent(run)
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": path},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the writer ended before the pause: {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the writer never reached the pause")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL


WRITE_SEED_1 = """
from tests.conftest import byte_tokenizer
from tests.compress.test_api import write_calibration
write_calibration(Path({out!r}), byte_tokenizer(), seed=1)
"""


@pytest.mark.parametrize("step, patch", [
    ("while the dataset is being staged", "import datasets\ndatasets.Dataset.save_to_disk = pause"),
    ("with the whole set staged, before the swap", "import cola.export\ncola.export._fsync_tree = pause"),
])
def test_a_writer_killed_mid_write_leaves_the_earlier_set_whole(tmp_path: Path, step: str, patch: str) -> None:
    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    kill_mid_write(tmp_path, patch, WRITE_SEED_1.format(out=str(out)))
    assert_one_complete_set(out, seed=0)
    assert len(leftovers(out, ".cola-staging-")) == 1  # the killed run's staging, beside the set
    write_calibration(out, byte_tokenizer(), seed=2)  # the next run removes it and switches to its own set
    assert_one_complete_set(out, seed=2)
    assert leftovers(out) == []


def test_killed_between_the_two_renames_of_the_fallback_the_next_run_puts_the_set_back(tmp_path: Path) -> None:
    """Where directories cannot be exchanged, the old set is renamed aside first: a kill right then leaves it
    there, complete, and the next run restores it before anything else."""
    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    patch = """
        import cola.export
        cola.export._exchange = lambda a, b: False
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            if ".cola-old-" in os.fspath(dst):
                pause()

        os.rename = rename
    """
    kill_mid_write(tmp_path, patch, WRITE_SEED_1.format(out=str(out)))
    assert not out.exists()
    aside = leftovers(out, ".cola-old-")
    assert len(aside) == 1 and len(leftovers(out, ".cola-staging-")) == 1
    assert_one_complete_set(out.parent / aside[0], seed=0)
    clean_stale(out)
    assert_one_complete_set(out, seed=0)
    assert leftovers(out) == []


def test_the_fallback_swap_writes_the_new_set(tmp_path: Path, monkeypatch) -> None:
    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    monkeypatch.setattr("cola.export._exchange", lambda a, b: False)
    write_calibration(out, byte_tokenizer(), seed=1)
    assert_one_complete_set(out, seed=1)
    assert leftovers(out) == []


def test_killed_cola_curate_over_an_earlier_run_leaves_that_run_whole(tiny_model_dir, pool_files, tmp_path):
    """The issue's case: `cola curate` killed while writing its outputs over an earlier run's."""
    out = tmp_path / "out"
    args = ["curate", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--quiet",
            "--dtype", "float32", "--device", "cpu", "--num_samples", "4", "--sequence_length", "32",
            "--datasets", *map(str, pool_files.values()), "--candidates_per_source", "8", "--no_stage1"]
    assert main(args) == 0
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    kill_mid_write(tmp_path, "import pyarrow.parquet\npyarrow.parquet.write_table = pause",
                   f"from cola.cli import main\nmain({[*args, '--seed', '9']!r})")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(load_calibration(out)) == 4  # the hashes verify
    assert main([*args, "--seed", "9"]) == 0
    assert leftovers(out) == [] and json.loads((out / MANIFEST_FILE).read_text())["seed"] == 9


def test_a_rewrite_swaps_the_directory_keeps_user_files_and_drops_old_leftovers(tmp_path: Path) -> None:
    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    (out / "notes.txt").write_text("my notes")
    (out / "plots").mkdir()
    (out / "plots" / "a.txt").write_text("plot")
    for old_format in (".cola-staging-abc", ".cola-old-def"):  # what cola versions before the swap left inside
        (out / old_format).mkdir()
        (out / old_format / SAMPLES_FILE).write_text("[]")
    inode = out.stat().st_ino
    write_calibration(out, byte_tokenizer(), seed=1)
    assert out.stat().st_ino != inode  # a new directory, swapped in whole
    assert (out / "notes.txt").read_text() == "my notes" and (out / "plots" / "a.txt").read_text() == "plot"
    assert not list(out.glob(".cola-*")) and leftovers(out) == []
    assert [x.tolist() for x in load_calibration(out).input_ids] == set_ids(1)


def test_a_symlinked_output_directory_keeps_its_link(tmp_path: Path) -> None:
    real = write_calibration(tmp_path / "real", byte_tokenizer(), seed=0)
    link = tmp_path / "latest"
    link.symlink_to(real)
    write_calibration(link, byte_tokenizer(), seed=1)
    assert link.is_symlink() and link.resolve() == real
    assert_one_complete_set(real, seed=1)


def test_leftovers_of_killed_runs_are_removed_but_a_live_writers_are_kept(tmp_path: Path) -> None:
    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    dead = tmp_path / ".calib.cola-staging-1-dead"
    live = tmp_path / ".calib.cola-staging-2-live"
    other = tmp_path / ".other.cola-staging-3-x"  # another output directory's: not ours to touch
    for folder in (dead, live, other):
        (folder / DATASET_DIR).mkdir(parents=True)
    fd = _lock(live)  # as its writer holds it while it runs
    try:
        write_calibration(out, byte_tokenizer(), seed=1)
        assert not dead.exists() and live.is_dir() and other.is_dir()
    finally:
        os.close(fd)
    clean_stale(out)
    assert not live.exists() and other.is_dir()


def test_a_failed_write_leaves_no_directory_it_made(tmp_path: Path, monkeypatch) -> None:
    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("cola.export.file_sha256", boom)  # fails after every artefact is staged
    out = tmp_path / "a" / "b" / "calib"
    with pytest.raises(OSError, match="disk full"):
        write_calibration(out, byte_tokenizer())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / SAMPLES_FILE).write_text("[]"),
     f"does not match its manifest.json: {SAMPLES_FILE} changed after it was written (sha256 differs)"),
    (lambda out: truncate_half(next((out / DATASET_DIR).glob("*.arrow"))),
     f"does not match its manifest.json: {DATASET_DIR}/data-00000-of-00001.arrow changed"),
    (lambda out: (out / POOL_PARQUET).unlink(),
     f"is incomplete: {POOL_PARQUET}, listed in its manifest.json, is missing"),
    (lambda out: (out / MANIFEST_FILE).write_text('{"outputs": {"a": '),
     "manifest.json is not valid JSON (Expecting value at line 1 column 19)"),
    (lambda out: (out / MANIFEST_FILE).write_text("[1, 2]"), "manifest.json holds a JSON list, not an object"),
    (lambda out: (out / MANIFEST_FILE).write_text('{"tokenizer": {}}'),
     "manifest.json lists no output hashes, so the set cannot be checked"),
], ids=["changed file", "truncated arrow", "missing file", "malformed manifest", "manifest not an object",
        "manifest without hashes"])
def test_a_reader_refuses_a_set_that_does_not_match_its_manifest(tmp_path: Path, damage, message) -> None:
    out = write_calibration(tmp_path / "calib", byte_tokenizer())
    damage(out)
    with pytest.raises(ColaError) as info:
        load_calibration(out)
    assert message in str(info.value) and "curate again" in str(info.value) and "\n" not in str(info.value)


def test_a_set_swapped_in_while_being_read_is_read_again_whole(tmp_path: Path, monkeypatch) -> None:
    """A reader that read the old manifest then the new dataset retries, so it returns one set, never a mix."""
    import cola.compress.calibration as calibration

    out = write_calibration(tmp_path / "calib", byte_tokenizer(), seed=0)
    real_read = calibration._read_token_ids
    calls = []

    def read_while_a_writer_swaps(path: Path):
        calls.append(path)
        if len(calls) == 1:
            write_calibration(out, byte_tokenizer(), seed=1)
        return real_read(path)

    monkeypatch.setattr(calibration, "_read_token_ids", read_while_a_writer_swaps)
    loaded = load_calibration(out)
    assert len(calls) == 2
    assert [x.tolist() for x in loaded.input_ids] == set_ids(1)
    assert loaded.manifest == json.loads((out / MANIFEST_FILE).read_text())


def test_output_directory_checks(tmp_path: Path, monkeypatch) -> None:
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    for name in ("chapter1.tex", "chapter2.tex", "figures", "refs.bib"):
        (foreign / name).write_text("x")
    with pytest.raises(ColaError, match=r"holds files that are not a `cola curate` output \(chapter1.tex, "
                                        r"chapter2.tex, figures, \.\.\.\); cola replaces"):
        check_curate_output(foreign)
    with pytest.raises(ColaError, match=r"holds files that are not a `cola curate` output"):
        write_calibration(foreign, byte_tokenizer())
    assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex", "chapter2.tex", "figures", "refs.bib"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".cola-staging-old").mkdir()  # only an older cola's leftovers: counts as empty
    check_curate_output(empty)
    monkeypatch.chdir(empty)
    with pytest.raises(ColaError, match="is or contains the current directory"):
        check_curate_output(Path("."))
    with pytest.raises(ColaError, match="is or contains the current directory"):
        check_curate_output(tmp_path)
    with pytest.raises(ColaError, match=r"^--output_dir is empty: name the directory to write to \(an empty name would "
                                        r"mean the current directory\)$"):
        output_directory("")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ColaError, match=f"output directory {blocker} is a file"):
        check_curate_output(blocker)
    with pytest.raises(ColaError, match=f"output directory {blocker / 'out'} is not writable: {blocker} is a file"):
        check_curate_output(blocker / "out")
    assert not (tmp_path / "new").exists()
    check_curate_output(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    volume = tmp_path / "volume"
    volume.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == volume)  # as a Docker volume is
    with pytest.raises(ColaError, match="is a mount point, and cola replaces its output directory as a whole by "
                                        "renaming it; name a subdirectory of it"):
        check_curate_output(volume)


def test_the_typed_builders_give_one_key_order_and_leave_out_what_a_writer_lacks() -> None:
    from cola.export import Manifest, PoolTable, SampleRecord

    record = SampleRecord(text="t", dataset_name="d", capability_scores={"math": 1.0}, format_enhanced=False,
                          selection_index=3, selection_method="random")
    assert list(record.as_dict()) == ["text", "dataset_name", "capability_scores", "format_enhanced",
                                      "selection_index", "selection_method"]
    table = PoolTable(dataset_name=["a", "b"], capability=["general"] * 2, num_tokens=[4, 5], selected=[True, False],
                      extra={"perplexity": [1.5, 2.5]})
    columns = table.columns()
    assert list(columns) == ["pool_index", "dataset_name", "capability", "num_tokens", "selected", "perplexity"]
    assert {name: list(values) for name, values in columns.items()} == {
        "pool_index": [0, 1], "dataset_name": ["a", "b"], "capability": ["general"] * 2, "num_tokens": [4, 5],
        "selected": [True, False], "perplexity": [1.5, 2.5]}
    with pytest.raises(ValueError, match=r"pool columns \['perplexity'\] do not have one value for each of the 2"):
        PoolTable(dataset_name=["a", "b"], capability=["g"] * 2, num_tokens=[1, 2], selected=[True, False],
                  extra={"perplexity": [1.0]}).columns()
    common = dict(model={"model": "m"}, seed=1, settings={}, stages={}, sources=[], stage2={}, num_samples=1,
                  sample_tokens=4, timings={"load": 0.12345}, extra={"strategy": "cola"})
    curate = Manifest(command="curate", target_capabilities=["math"], stage1={}, diagnostics={}, **common).as_dict()
    assert [k for k in curate if k not in ("libraries", "cpu", "torch_threads")] == [
        "tool", "command", "model", "seed", "settings", "target_capabilities", "stages", "sources", "stage1",
        "stage2", "num_samples", "sample_tokens", "diagnostics", "timings", "strategy"]
    generated = Manifest(command="curate_strategy", generation_settings={}, generation={}, **common).as_dict()
    assert [k for k in generated if k not in ("libraries", "cpu", "torch_threads")] == [
        "tool", "command", "model", "seed", "settings", "generation_settings", "stages", "sources", "stage2",
        "generation", "num_samples", "sample_tokens", "timings", "strategy"]
    assert generated["timings"] == {"load": 0.123}


def test_pool_table_columns_from_arrays_write_as_lists_would(tmp_path) -> None:
    """Numpy columns (a 2-D feature array among them) give the same parquet schema and values as Python lists."""
    import pyarrow.parquet as pq

    from cola.spill import arrow_column

    features = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    labels, distance = np.array([0, 1, 1, -1], dtype=np.int32), np.array([0.5, 0.25, 0.0, 1.0])
    for name, array, as_list in (("f", features, features.tolist()), ("l", labels, labels.tolist()),
                                 ("d", distance, distance.tolist()), ("e", np.zeros((4, 0)), [[]] * 4)):
        pq.write_table(pa.table({name: arrow_column(array)}), tmp_path / "a.parquet")
        pq.write_table(pa.table({name: as_list}), tmp_path / "b.parquet")
        a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
        assert a.schema == b.schema and a.to_pylist() == b.to_pylist()


def test_pool_columns_are_written_a_row_group_at_a_time_with_the_same_content(tmp_path: Path) -> None:
    """Row groups of 4 rows hold what one table of all rows holds; a group whose optional column is all null
    takes the column's type from the first group."""
    import pyarrow.parquet as pq

    from cola.spill import write_columns

    rows = 10
    columns = {"pool_index": np.arange(rows), "name": [f"d{i % 3}" for i in range(rows)],
               "feature": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3),
               "perplexity": [1.5, 2.5, 3.0, 4.0] + [None] * 6}
    write_columns(tmp_path / "grouped.parquet", columns, row_group=4)
    write_columns(tmp_path / "whole.parquet", columns, row_group=rows)
    grouped, whole = pq.ParquetFile(tmp_path / "grouped.parquet"), pq.ParquetFile(tmp_path / "whole.parquet")
    assert (grouped.num_row_groups, whole.num_row_groups) == (3, 1)
    assert grouped.read().equals(whole.read())
    assert grouped.read().column("feature").to_pylist()[9] == [27.0, 28.0, 29.0]

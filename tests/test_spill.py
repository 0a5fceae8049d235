"""cola.spill: rows kept on disk, read back a batch at a time, equal to what was written."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pyarrow as pa
import pytest

from cola.spill import RowStore, Subset, int_lists, object_store, subset, text_store


def _texts(count: int, batch_rows: int = 4) -> RowStore[str]:
    store = RowStore(pa.schema([("text", pa.large_string())]), lambda rows: {"text": rows},
                     lambda batch: batch.column(0).to_pylist(), batch_rows=batch_rows)
    store.extend(f"row {i}" for i in range(count))
    return store.close()


def test_rows_come_back_in_order_by_index_slice_and_iteration() -> None:
    store = _texts(10)  # batches of 4: 4 + 4 + 2, the last one partial
    expected = [f"row {i}" for i in range(10)]
    assert len(store) == 10
    assert list(store) == expected
    assert [store[i] for i in range(10)] == expected
    assert store[-1] == "row 9" and store[3:7] == expected[3:7] and store[8:20] == expected[8:]
    assert store == tuple(expected) and store == expected and store != expected[:-1]
    with pytest.raises(IndexError):
        store[10]


def test_take_returns_rows_in_the_order_asked() -> None:
    store = _texts(10)
    assert store.take([9, 0, 5, 5, 2]) == ["row 9", "row 0", "row 5", "row 5", "row 2"]
    assert store.take(np.array([], dtype=np.int64)) == []


def test_reading_before_close_and_writing_after_it_raise() -> None:
    store = text_store()
    store.append("a")
    with pytest.raises(RuntimeError, match="close"):
        store[0]
    store.close()
    assert store.close() is store  # idempotent
    with pytest.raises(RuntimeError, match="read-only"):
        store.extend(["x"] * store.batch_rows)


def test_the_folder_goes_with_the_store() -> None:
    store = _texts(3)
    folder = store.folder
    assert (folder / "rows.arrow").is_file()
    del store
    gc.collect()
    assert not folder.exists()


def test_objects_and_pickling() -> None:
    records = [{"q": "1 + 1", "a": 2, "nested": {"k": [1, None]}}, {"text": "b"}]
    store = object_store()
    store.extend(records)
    store.close()
    assert list(store) == records
    assert pickle.loads(pickle.dumps(store)) == records  # another process gets a plain list


def test_int_lists_round_trip_as_writable_int32_arrays() -> None:
    rows = [np.array([5, 6, 7], np.int32), np.array([], np.int32), np.array([1], np.int32)]
    array = pa.ListArray.from_arrays(pa.array([0, 3, 3, 4], pa.int32()), pa.array(np.concatenate(rows)))
    out = int_lists(array.slice(1))  # a slice: offsets do not start at 0
    assert [a.tolist() for a in out] == [[], [1]]
    assert all(a.dtype == np.int32 and a.flags.writeable for a in int_lists(array))


def test_column_view_and_subset() -> None:
    store = _texts(9)
    column = store.column("text")
    assert len(column) == 9 and column[4] == "row 4" and list(column) == list(store)
    assert column[7:] == ["row 7", "row 8"]
    picked = subset(column, np.array([1, 4, 8]))
    assert isinstance(picked, Subset) and list(picked) == ["row 1", "row 4", "row 8"]
    assert picked[1:] == ["row 4", "row 8"]
    assert subset(column, np.arange(9)) is column  # all rows: no view


def test_a_killed_process_s_scratch_folders_are_swept_by_the_next_store(tmp_path, monkeypatch) -> None:
    import os
    import subprocess
    import sys
    import tempfile

    from cola.stages.dedup import DuplicateIndex
    from cola.stages.filters import character_shingles

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that has exited: its folders can never be cleaned up by it
    stale = [tmp_path / f"cola-rows-pid{gone.pid}-x1", tmp_path / f"cola-dedup-pid{gone.pid}-x2"]
    alive = [tmp_path / f"cola-rows-pid{os.getppid()}-x3", tmp_path / "cola-rows-other"]  # a live process; not ours
    for folder in stale + alive:
        (folder / "rows.arrow").parent.mkdir()
        (folder / "rows.arrow").write_bytes(b"x")
    store = text_store()
    assert store.folder.parent == tmp_path and store.folder.name.startswith(f"cola-rows-pid{os.getpid()}-")
    assert not stale[0].exists() and stale[1].exists()  # each prefix sweeps its own
    with DuplicateIndex(None, threshold=0.8, num_perm=16, seed=0, bands=4, rows=4,
                        shingle=character_shingles) as index:
        assert index.path.parent.name.startswith(f"cola-dedup-pid{os.getpid()}-")
    assert not stale[1].exists() and not index.path.parent.exists()
    assert all(folder.exists() for folder in alive)
    folder = store.folder
    del store
    gc.collect()
    assert not folder.exists()

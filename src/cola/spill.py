"""Rows and columns kept on disk: what grows with the pool (sampled records, their texts, the candidates' texts
and token ids) written once, a batch at a time, to an Arrow IPC file, and read back a batch at a time (issue 23:
flat-memory pools; Arrow's IPC file format reads one record batch without the others); and the parquet column
writers (`arrow_column`, `write_columns`: pool.parquet a row group at a time).

A `RowStore` is a read-only `Sequence` once written: `len`, `store[i]`, `store[a:b]` (a list), iteration in
order, `take(indices)` and `column(name)` (one column as a lazy sequence). At most one decoded batch is held
(`SPILL_BATCH` rows), so holding a store of 10^6 candidates costs about what holding 4,096 of them does.

The file lives in a folder of its own under `root` (a run's work directory: `cola.api.COLA.process` puts the
pool there) or else the system's temporary folder (`TMPDIR` chooses the disk; sources are sampled before a run
has a work directory), removed when the store is garbage-collected or the process exits, with `root` where the
store made it and nothing else is left in it (a step-by-step caller's work directory); a temporary folder left by
a killed process is removed by the next store made (`scratch_folder`). An open store keeps
reading its file after its folder is removed (the work directory of a finished run): the file is held open.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")
SPILL_BATCH = 4096  # rows per record batch: what one read decodes


def scratch_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, named `prefix` + this process's id; folders of the same
    prefix whose process is gone (killed before it could clean up) are removed first, so a SIGKILLed run's
    spilled rows do not pile up in $TMPDIR."""
    temporary = Path(tempfile.gettempdir())
    for stale in temporary.glob(f"{prefix}pid*-*"):
        pid = stale.name[len(prefix) + 3:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}pid{os.getpid()}-", dir=temporary))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _folder_under(root: Path, prefix: str) -> Path:
    """A new folder in `root`, made with its parents; tried twice, since another store's cleanup may remove an
    empty `root` (`_remove`) between the two steps."""
    for attempt in range(2):
        root.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        except FileNotFoundError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _remove(folder: Path, root: Path | None) -> None:
    """A store's folder removed; then `root` too if nothing else is in it (a work directory the store made)."""
    shutil.rmtree(folder, ignore_errors=True)
    if root is not None:
        try:
            root.rmdir()
        except OSError:  # something else is in it, or it is gone
            pass


class _Batched(Sequence[T], Generic[T]):
    """A read-only sequence read a batch of `batch_rows` rows at a time (`_read(batch index) -> rows`), holding
    the last batch read; what `RowStore` and its `ColumnView`s share."""

    batch_rows: int
    _cached: tuple[int, list[T]] | None = None  # (batch index, its rows)

    def _read(self, index: int) -> list[T]:
        raise NotImplementedError

    def _batch(self, index: int) -> list[T]:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._read(index))
        return self._cached[1]

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} rows")
        return self._batch(index // self.batch_rows)[index % self.batch_rows]

    def __iter__(self) -> Iterator[T]:
        for index in range(0, len(self), self.batch_rows):
            yield from self._batch(index // self.batch_rows)

    def take(self, indices: Iterable[int]) -> list[T]:
        """The rows at `indices`, in that order; each batch read once however the indices are ordered."""
        indices = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        out: list[Any] = [None] * len(indices)
        for position in np.argsort(indices // self.batch_rows, kind="stable"):
            out[position] = self[int(indices[position])]
        return out

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (to another process) as the plain list of its rows
        return list, (list(self),)

    def __eq__(self, other: object) -> bool:
        """Equal to any list, tuple or store holding equal rows in the same order."""
        if not isinstance(other, (list, tuple, _Batched)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = object.__hash__  # a store is one object on disk; equality compares the rows


class RowStore(_Batched[T]):
    """Rows of one kind, written with `append`/`extend` and then `close()`d, read back as a sequence; the file
    goes in a new folder under `root` (None: the temporary folder).

    `schema`: the Arrow schema of a batch; `encode(rows) -> {column: values}` turns up to SPILL_BATCH rows into
    the columns `pa.record_batch` takes; `decode(batch) -> rows` turns a record batch back into rows. Reading
    before `close()` raises RuntimeError; so does writing after it.
    """

    def __init__(self, schema: pa.Schema, encode: Callable[[list[T]], dict[str, Any]],
                 decode: Callable[[pa.RecordBatch], list[T]], *, batch_rows: int = SPILL_BATCH,
                 prefix: str = "cola-rows-", root: str | os.PathLike[str] | None = None) -> None:
        self.schema, self._encode, self._decode, self.batch_rows = schema, encode, decode, batch_rows
        made = root is not None and not Path(root).exists()  # then removed with the last store in it, if empty
        self.folder = scratch_folder(prefix) if root is None else _folder_under(Path(root), prefix)
        self._cleanup = weakref.finalize(self, _remove, self.folder, Path(root) if made else None)
        self.path = self.folder / "rows.arrow"
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)
        self._pending: list[T] = []
        self._rows = 0
        self._file: pa.ipc.RecordBatchFileReader | None = None

    # writing
    def append(self, row: T) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def extend(self, rows: Iterable[T]) -> None:
        for row in rows:
            self.append(row)

    def _flush(self) -> None:
        if self._writer is None:
            raise RuntimeError("this row store is closed: it is read-only")
        if self._pending:
            self._writer.write_batch(pa.record_batch(self._encode(self._pending), schema=self.schema))
            self._rows += len(self._pending)
            self._pending = []

    def close(self) -> RowStore[T]:
        """Finish writing (idempotent); the store is then readable. Returns itself."""
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._sink.close()
            self._writer = None
            self._file = pa.ipc.open_file(pa.OSFile(str(self.path), "rb"))
        return self

    # reading
    def _reader(self) -> pa.ipc.RecordBatchFileReader:
        """The file, open for reading; RuntimeError while the store is being written."""
        if self._file is None:
            raise RuntimeError("this row store is still being written: close() it first")
        return self._file

    def _read(self, index: int) -> list[T]:
        return self._decode(self._reader().get_batch(index))

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: int | slice) -> T | list[T]:
        self._reader()  # reading before close() raises, whatever the index
        return super().__getitem__(index)

    def column(self, name: str, convert: Callable[[pa.Array], list[Any]] | None = None) -> ColumnView:
        """Column `name` alone, as a lazy sequence (`convert` turns its Arrow array into values; default
        `to_pylist`)."""
        self._reader()  # a column of a store being written raises
        return ColumnView(self, name, convert or (lambda array: array.to_pylist()))

    def batches(self, column: str) -> Iterator[pa.Array]:
        """Column `column` one record batch at a time, as Arrow arrays (no Python objects made)."""
        reader = self._reader()
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index).column(column)

    def column_array(self, column: str, convert: Callable[[pa.Array], np.ndarray], dtype: Any) -> np.ndarray:
        """Column `column` as one numpy array of `dtype`, each batch's Arrow array turned by `convert`."""
        parts = [np.asarray(convert(array), dtype=dtype) for array in self.batches(column)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class ColumnView(_Batched[Any]):
    """One column of a `RowStore` as a read-only sequence; holds at most one batch's values."""

    def __init__(self, store: RowStore[Any], name: str, convert: Callable[[pa.Array], list[Any]]) -> None:
        self.store, self.name, self.convert, self.batch_rows = store, name, convert, store.batch_rows

    def __len__(self) -> int:
        return len(self.store)

    def _read(self, index: int) -> list[Any]:
        return self.convert(self.store._reader().get_batch(index).column(self.name))


def text_store() -> RowStore[str]:
    """A store of strings."""
    return RowStore(pa.schema([("text", pa.large_string())]), lambda rows: {"text": rows},
                    lambda batch: batch.column(0).to_pylist())


def object_store() -> RowStore[Any]:
    """A store of any picklable Python objects (raw records of any schema), one pickle per row."""
    return RowStore(pa.schema([("pickle", pa.large_binary())]),
                    lambda rows: {"pickle": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in rows]},
                    lambda batch: [pickle.loads(b) for b in batch.column(0).to_pylist()])


def int_lists(array: pa.Array) -> list[np.ndarray]:
    """A list<int32> Arrow array as one int32 numpy array per row (views of one buffer, made in one step)."""
    flat = np.array(array.flatten().to_numpy(zero_copy_only=False))  # writable: torch reads it
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()
    return np.split(flat, offsets[1:-1])


class Subset(Sequence[T]):
    """The rows of `rows` at the sorted `indices`, read as they are needed (slices give lists)."""

    def __init__(self, rows: Sequence[T], indices: np.ndarray) -> None:
        self.rows, self.indices = rows, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.rows[i] for i in self.indices[index].tolist()]
        return self.rows[int(self.indices[index])]


def subset(rows: Sequence[T], indices: np.ndarray) -> Sequence[T]:
    """`rows` itself where `indices` are all of its rows in order, else a lazy `Subset`."""
    return rows if len(indices) == len(rows) else Subset(rows, indices)


def arrow_column(values: Sequence[Any] | np.ndarray) -> pa.Array:
    """One table column for parquet: lists as Arrow infers them; a 1-D array as its dtype (integers as int64,
    floats as double, as Python values would be); a 2-D (rows, d) array as lists of doubles, built from the flat
    array (a 100k-row list of Python float lists took 250 MB more to write)."""
    if not isinstance(values, np.ndarray) or values.ndim == 2 and values.shape[1] == 0:
        return pa.array(values if not isinstance(values, np.ndarray) else values.tolist())  # [] rows: list<null>
    if values.ndim == 2:
        rows, width = values.shape
        offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32) if rows * width < 2**31
                           else np.arange(0, (rows + 1) * width, width, dtype=np.int64))
        flat = pa.array(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))
        array_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        return array_type.from_arrays(offsets, flat)
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int64))
    if values.dtype.kind == "f":
        return pa.array(values.astype(np.float64))
    return pa.array(values)


POOL_ROW_GROUP = 16_384  # pool.parquet rows converted and written at a time: the export's memory does not grow


def write_columns(path: Path, columns: Mapping[str, Sequence[Any] | np.ndarray],
                  row_group: int = POOL_ROW_GROUP) -> None:
    """Write equal-length columns (`arrow_column` each) to parquet `path`, `row_group` rows at a time
    (one row group each), so that only a row group's Arrow arrays are held."""
    rows = len(next(iter(columns.values()))) if columns else 0
    writer = None
    try:
        for start in range(0, max(rows, 1), row_group):
            table = pa.table({name: arrow_column(values[start:start + row_group])
                              for name, values in columns.items()})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            elif table.schema != writer.schema:  # e.g. a row group whose optional column is all null
                table = table.cast(writer.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()

"""Read a `cola curate` output directory back as the exact token sequences to calibrate on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError, first_line
from cola.export import DATASET_DIR, MANIFEST_FILE, read_index, tokenizer_fingerprint, verify_outputs


@dataclass
class CalibrationSet:
    """The curated samples in their curated order, each a 1-D LongTensor of token ids (no padding)."""

    input_ids: list[torch.Tensor]
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def sequence_length(self) -> int:
        """The longest sample: llm-compressor's max_seq_length, so that nothing is truncated."""
        return max(len(x) for x in self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def batches(self, max_batch_tokens: int) -> list[list[int]]:
        """Sample indices in batches: consecutive samples of one length, each batch within
        `max_batch_tokens` (a longer sample still gets one). Order is kept and nothing is padded; packed
        curated sets are all one length, so they batch fully."""
        return ordered_batches([len(x) for x in self.input_ids], max_batch_tokens)

    def dataset(self) -> Any:
        """A `datasets.Dataset` with input_ids and attention_mask, one row per sample, in order."""
        from datasets import Dataset

        ids = [x.tolist() for x in self.input_ids]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})

    def check_vocabulary(self, tokenizer: Any) -> None:
        """Refuse (ColaError) a tokenizer whose vocabulary differs from the one the set was curated with."""
        made_with, ours = self.manifest.get("tokenizer") or {}, tokenizer_fingerprint(tokenizer)
        if not isinstance(made_with, dict) or made_with.get("vocab_sha256") != ours["vocab_sha256"]:
            made_with = made_with if isinstance(made_with, dict) else {}
            raise ColaError(f"calibration set {self.path} was tokenized with a different vocabulary "
                            f"({made_with.get('name_or_path') or '?'}, {made_with.get('vocab_size', '?')} tokens) "
                            f"than this model's tokenizer ({ours['name_or_path'] or '?'}, {ours['vocab_size']} "
                            "tokens); curate again with this model")

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "num_samples": len(self),
                "num_tokens": self.num_tokens, "sequence_length": self.sequence_length}


CURATE_AGAIN = "curate again (`cola curate`) to rebuild it"


def load_calibration(path: str | Path, tokenizer: Any | None = None) -> CalibrationSet:
    """Load `calibration_dataset/` of a curate output directory, after checking every file of the set against
    the sha256 its manifest recorded; with `tokenizer`, refuse a vocabulary mismatch.

    Raises ColaError (one line) for a missing directory, a malformed manifest, a file missing, changed or
    truncated since `cola curate` wrote it, an unreadable dataset, an empty sample, another vocabulary. A set
    replaced by another `cola curate` while it is being read is read again, whole.
    """
    path = Path(path)
    manifest_path, dataset_path = path / MANIFEST_FILE, path / DATASET_DIR
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ColaError(f"calibration directory {path} {what} (make one with `cola curate`)")
    if not manifest_path.is_file() or not dataset_path.is_dir():
        raise ColaError(f"{path} is not a cola calibration directory: it lacks {MANIFEST_FILE} or {DATASET_DIR}/ "
                        "(make one with `cola curate`)")
    for _attempt in range(3):
        before = _read_bytes(manifest_path)
        try:
            manifest = read_index(manifest_path, what="calibration directory", remedy=CURATE_AGAIN)
            verify_outputs(path, manifest, index_name=MANIFEST_FILE, what="calibration directory",
                           remedy=CURATE_AGAIN)
            ids = _read_token_ids(dataset_path)
        except ColaError:
            if _read_bytes(manifest_path) != before:
                continue  # a new set was swapped in while this one was read: read the new one
            raise
        if _read_bytes(manifest_path) == before:
            break
    else:
        raise ColaError(f"calibration directory {path} kept changing while it was read (is a `cola curate` "
                        "writing to it?); try again when it has finished")
    if not ids or any(len(x) == 0 for x in ids):
        raise ColaError(f"calibration set {path} is empty or holds an empty sample")
    calibration = CalibrationSet(input_ids=ids, path=path, manifest=manifest)
    if tokenizer is not None:
        calibration.check_vocabulary(tokenizer)
    return calibration


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _read_token_ids(dataset_path: Path) -> list[torch.Tensor]:
    """The input_ids column of a saved `datasets` dataset, one LongTensor per row."""
    import pyarrow as pa
    from datasets import load_from_disk

    try:
        rows = load_from_disk(str(dataset_path))["input_ids"]
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        first = first_line(exc)
        raise ColaError(f"cannot read the calibration set in {dataset_path}: {first}; {CURATE_AGAIN}") from exc
    return [torch.tensor(row, dtype=torch.long) for row in rows]


def ordered_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of equal lengths, each batch within `max_batch_tokens`: see CalibrationSet.batches."""
    batches: list[list[int]] = []
    for index, length in enumerate(lengths):
        current = batches[-1] if batches else None
        if (current and lengths[current[0]] == length
                and (len(current) + 1) * length <= max(max_batch_tokens, length)):
            current.append(index)
        else:
            batches.append([index])
    return batches

"""Read a `cola curate` output directory back as the exact token sequences to calibrate on, and hand them on
in the forms toolkits take: a DataLoader, padded tensors, the texts (`cola.handoff` writes them to files)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError, first_line
from cola.export import DATASET_DIR, MANIFEST_FILE, SAMPLES_FILE, read_index, tokenizer_fingerprint, verify_outputs


@dataclass
class CalibrationSet:
    """The curated samples in their curated order, each a 1-D LongTensor of token ids (no padding)."""

    input_ids: list[torch.Tensor]
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    sample_texts: list[str] | None = None  # calibration_samples.json's texts, in the same order

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

    @property
    def equal_lengths(self) -> bool:
        """Whether every sample has the same number of tokens (`--length pack` and `window` sets do)."""
        return len({len(x) for x in self.input_ids}) == 1

    def texts(self) -> list[str]:
        """The samples' texts (calibration_samples.json), in curated order: what a toolkit that tokenizes for
        itself takes. A packed sample's text is its window decoded, so tokenizing it again can differ from
        `input_ids` at a few boundary tokens; hand over the ids where the toolkit takes them. Raises ColaError
        for a set built in memory, which has no texts."""
        if self.sample_texts is None:
            raise ColaError("this calibration set holds token ids only (it was not read from a `cola curate` "
                            "directory): it has no texts")
        return list(self.sample_texts)

    def tensors(self, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
        """The whole set as one batch: "input_ids" and "attention_mask", each (N, T) LongTensor, T the longest
        sample; shorter samples are padded on the right with `pad_token_id` and masked 0. Curated order."""
        ids = torch.full((len(self), self.sequence_length), pad_token_id, dtype=torch.long)  # (N, T)
        mask = torch.zeros_like(ids)
        for row, sample in enumerate(self.input_ids):
            ids[row, :len(sample)], mask[row, :len(sample)] = sample, 1
        return {"input_ids": ids, "attention_mask": mask}

    def dataloader(self, max_batch_tokens: int = 4096) -> torch.utils.data.DataLoader:
        """Every sample once, whole and in curated order: batches of consecutive samples of one length
        (`batches`), each a dict of "input_ids" and "attention_mask" (B, T) LongTensors; nothing padded or
        truncated. llm-compressor's `oneshot(dataset=...)` takes it as it is."""
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset(), batch_sampler=self.batches(max_batch_tokens), collate_fn=_stack)

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
            texts = _read_texts(path / SAMPLES_FILE)
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
    if texts is not None and len(texts) != len(ids):
        raise ColaError(f"calibration set {path}: {SAMPLES_FILE} holds {len(texts)} samples, {DATASET_DIR}/ "
                        f"{len(ids)}; {CURATE_AGAIN}")
    calibration = CalibrationSet(input_ids=ids, path=path, manifest=manifest, sample_texts=texts)
    if tokenizer is not None:
        calibration.check_vocabulary(tokenizer)
    return calibration


def _stack(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Samples of one length stacked into a batch: no truncation, no padding."""
    ids = torch.stack([torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows])  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _read_texts(samples_file: Path) -> list[str] | None:
    """The "text" of every record in calibration_samples.json, in order; None where the set has no such file."""
    if not samples_file.is_file():
        return None
    try:
        records = json.loads(samples_file.read_text(encoding="utf-8"))
        texts = [record["text"] for record in records]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ColaError(f"cannot read the sample texts in {samples_file}: {first_line(exc)}; {CURATE_AGAIN}") from exc
    if not all(isinstance(text, str) for text in texts):
        raise ColaError(f"{samples_file} holds a sample whose text is not a string; {CURATE_AGAIN}")
    return texts


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

"""Hand a curated set to the toolkit that compresses with it (`cola export`): each target writes what its
library takes natively, and the exact call that feeds it every sample once, whole and in curated order.

- llmcompressor: a `datasets` dataset on disk (input_ids, attention_mask), fed through a DataLoader of batch size
  1. Handed the Dataset itself, llm-compressor 0.14 sorts it by length (`shuffle_calibration_samples=False` does
  not stop it), moving every sample of an equal-length set and sorting a set of varying lengths.
- gptqmodel: JSON lines of {"input_ids", "attention_mask"}, GPTQModel's list-of-dicts input (7.6). It sorts by
  length by default (`calibration_sort="desc"`): the call turns that off. It also drops samples of 10 tokens or
  fewer, and in 7.6 `quantize(calibration_data_min_length=...)` does not reach its data preparation, so the
  export warns where the set has such samples.
- autoround: a torch file holding one (1, T) LongTensor per sample, which auto-round 0.15 iterates as its
  dataloader. It skips every sample shorter than `seqlen`, so the call sets `seqlen` to the shortest sample; it
  batches cached block inputs, so a set of varying lengths needs `batch_size=1`.
- jsonl-text: JSON lines of {"text"} for a toolkit that tokenizes for itself (`CalibrationSet.texts`).
- pt: a torch file of {"input_ids", "attention_mask"}, (N, T) LongTensors, right-padded with 0 and masked
  (`CalibrationSet.tensors`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cola.errors import ColaError, unknown_choice

if TYPE_CHECKING:  # importing this module (the CLI's parser does) loads no torch
    from cola.compress.calibration import CalibrationSet


@dataclass(frozen=True)
class Target:
    """One toolkit's way in: what is written, by which function, and the code that feeds it to the library."""

    name: str
    description: str
    suffix: str                                     # the default output: CALIBRATION_DIR + suffix
    write: Callable[[CalibrationSet, Path], None]   # (set, path): write the file or folder at path
    call: Callable[[CalibrationSet, Path], str]     # (set, path): Python that hands it to the library
    warnings: Callable[[CalibrationSet], tuple[str, ...]] = lambda calibration: ()


@dataclass(frozen=True)
class Export:
    """What `export_calibration` wrote: the target, the path, the set's size and the code to run."""

    target: str
    path: Path
    num_samples: int
    num_tokens: int
    call: str
    warnings: tuple[str, ...] = ()  # what the library will do to the set that the call cannot prevent


def _write_dataset(calibration: CalibrationSet, path: Path) -> None:
    calibration.dataset().save_to_disk(str(path))


def _llmcompressor_call(calibration: CalibrationSet, path: Path) -> str:
    return (f"from datasets import load_from_disk\n"
            f"from llmcompressor import oneshot\n"
            f"from torch.utils.data import DataLoader\n\n"
            f"calibration = load_from_disk({str(path)!r}).with_format(\"torch\")  # {len(calibration)} samples\n"
            f"loader = DataLoader(calibration, batch_size=1, shuffle=False)  # whole, in curated order\n"
            f"oneshot(model=model, recipe=recipe, dataset=loader)")


def _write_json_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_token_lines(calibration: CalibrationSet, path: Path) -> None:
    _write_json_lines(path, ({"input_ids": x.tolist(), "attention_mask": [1] * len(x)} for x in calibration.input_ids))


def _gptqmodel_call(calibration: CalibrationSet, path: Path) -> str:
    return (f"import json\n\n"
            f"with open({str(path)!r}) as f:\n"
            f"    calibration = [json.loads(line) for line in f]  # {len(calibration)} samples, in curated order\n"
            f"model.quantize(calibration, batch_size=1, calibration_sort=None)")


GPTQMODEL_MIN_TOKENS = 11  # GPTQModel 7.6 drops calibration samples of 10 tokens or fewer


def _gptqmodel_warnings(calibration: CalibrationSet) -> tuple[str, ...]:
    short = sum(len(x) < GPTQMODEL_MIN_TOKENS for x in calibration.input_ids)
    if not short:
        return ()
    return (f"GPTQModel 7.6 drops the {short} samples of {GPTQMODEL_MIN_TOKENS - 1} tokens or fewer (its "
            "calibration_data_min_length does not reach its data preparation): curate with a larger --min_length "
            "to keep the set whole",)


def _write_tensor_list(calibration: CalibrationSet, path: Path) -> None:
    import torch

    torch.save([sample[None].clone() for sample in calibration.input_ids], path)  # each (1, T)


def _autoround_call(calibration: CalibrationSet, path: Path) -> str:
    shortest = min(len(x) for x in calibration.input_ids)
    batch = "" if calibration.equal_lengths else ", batch_size=1"
    return (f"import torch\n"
            f"from auto_round import AutoRound\n\n"
            f"calibration = torch.load({str(path)!r})  # {len(calibration)} tensors of shape (1, T), in curated "
            f"order\n"
            f"autoround = AutoRound(model, tokenizer, dataset=calibration, nsamples={len(calibration)}, "
            f"seqlen={shortest}{batch})\n"
            f"autoround.quantize_and_save(output_dir)")


def _write_texts(calibration: CalibrationSet, path: Path) -> None:
    _write_json_lines(path, ({"text": text} for text in calibration.texts()))


def _texts_call(calibration: CalibrationSet, path: Path) -> str:
    return (f"from datasets import load_dataset\n\n"
            f"texts = load_dataset(\"json\", data_files={str(path)!r}, split=\"train\")[\"text\"]  "
            f"# {len(calibration)} texts, in curated order\n"
            f"# tokenizing a packed window's text again can differ from the set's ids at a few boundary tokens")


def _write_tensors(calibration: CalibrationSet, path: Path) -> None:
    import torch

    torch.save(calibration.tensors(), path)


def _tensors_call(calibration: CalibrationSet, path: Path) -> str:
    return (f"import torch\n\n"
            f"batch = torch.load({str(path)!r})  # input_ids, attention_mask: ({len(calibration)}, "
            f"{calibration.sequence_length}) LongTensors\n"
            f"model(**batch)")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("llmcompressor", "a datasets dataset on disk, for llm-compressor's oneshot through a DataLoader",
           ".llmcompressor", _write_dataset, _llmcompressor_call),
    Target("gptqmodel", "JSON lines of input_ids and attention_mask, for GPTQModel's quantize",
           ".gptqmodel.jsonl", _write_token_lines, _gptqmodel_call, _gptqmodel_warnings),
    Target("autoround", "a torch file of (1, T) token tensors, for auto-round's AutoRound",
           ".autoround.pt", _write_tensor_list, _autoround_call),
    Target("jsonl-text", "JSON lines of the samples' texts, for a toolkit that tokenizes for itself",
           ".texts.jsonl", _write_texts, _texts_call),
    Target("pt", "a torch file of right-padded (N, T) input_ids and attention_mask",
           ".pt", _write_tensors, _tensors_call),
)}


def export_path(calibration_dir: str | os.PathLike[str], target: str) -> Path:
    """The default output of `target` for a set: beside the set's directory, its name plus the target's suffix."""
    directory = Path(calibration_dir)
    return directory.parent / (directory.name + _target(target).suffix)


def _target(name: str) -> Target:
    if name not in TARGETS:
        raise unknown_choice("export target", name, TARGETS)
    return TARGETS[name]


def export_calibration(calibration_dir: str | os.PathLike[str], target: str,
                       output: str | os.PathLike[str] | None = None, *, overwrite: bool = False) -> Export:
    """Write the set in `calibration_dir` (a `cola curate` output, checked against its manifest's hashes) in the
    form `target` (one of TARGETS) takes, at `output` (default: `export_path`); return what was written and
    the code that hands it to the library.

    The file or folder appears whole or not at all (written beside, then renamed). Raises ColaError for an
    unknown target, a set that fails its checks, an `output` that exists (unless `overwrite`) or lies inside
    the set's directory, and a target that needs texts when the set has none.
    """
    from cola.compress.calibration import load_calibration

    spec = _target(target)
    calibration = load_calibration(calibration_dir)
    path = Path(output) if output is not None else export_path(calibration_dir, target)
    source = Path(calibration_dir).resolve()
    if path.resolve() == source or source in path.resolve().parents:
        raise ColaError(f"export output {path} lies inside the calibration directory {calibration_dir}, whose "
                        "files its manifest checks: write it elsewhere")
    if path.exists() and not overwrite:
        raise ColaError(f"export output {path} already exists: remove it, choose another --output or add "
                        "--overwrite")
    if target == "jsonl-text":
        calibration.texts()  # a set without texts fails here, before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        spec.write(calibration, staging / path.name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Export(target=target, path=path, num_samples=len(calibration), num_tokens=calibration.num_tokens,
                  call=spec.call(calibration, path), warnings=spec.warnings(calibration))

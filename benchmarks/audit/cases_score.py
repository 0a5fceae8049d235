"""What `cola score` (and `cola.score.score_calibration`) meets from real users: sets that are missing, damaged or
made with another vocabulary, references that are malformed or unreadable, a manifest naming no model. A refused
run leaves the set's manifest.json as it was."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from audit.case import Case, Fixtures


def _references(tmp: Path) -> Path:
    path = tmp / "general.jsonl"
    path.write_text("".join(json.dumps({"text": f"Record {i}. The mill stood by the river. " * 2}) + "\n"
                            for i in range(6)), encoding="utf-8")
    return path


def _copy(tmp: Path, fx: Fixtures, change: Callable[[Path], None] | None = None) -> Path:
    """A copy of the audit's curated set (the case may damage or score it), changed by `change`."""
    target = tmp / "calibration"
    shutil.copytree(fx.calibration_dir, target)
    if change is not None:
        change(target)
    if (target / "manifest.json").is_file():
        (tmp / "manifest.before").write_bytes((target / "manifest.json").read_bytes())
    return target


def _score(*extra: str, change: Callable[[Path], None] | None = None, copy: bool = True,
           ) -> Callable[[Path, Fixtures], list[str]]:
    """`cola score` of a copy of the curated set (or of `tmp/missing` without `copy`) with one reference."""
    def build(tmp: Path, fx: Fixtures) -> list[str]:
        target = _copy(tmp, fx, change) if copy else tmp / "missing"
        return ["score", str(target), "--reference", f"general={_references(tmp)}", "--quiet", *extra]
    return build


def _unchanged(tmp: Path) -> str | None:
    """The refused run left manifest.json byte for byte as it was."""
    manifest = tmp / "calibration" / "manifest.json"
    return None if manifest.read_bytes() == (tmp / "manifest.before").read_bytes() else f"{manifest} was rewritten"


def _recorded(tmp: Path) -> str | None:
    manifest = json.loads((tmp / "calibration" / "manifest.json").read_text())
    entry = manifest.get("quality_score", {}).get("capabilities", {})
    return None if list(entry) == ["general"] else f"manifest.json's quality_score is {entry!r}"


def _other_vocabulary(tmp: Path, fx: Fixtures) -> list[str]:
    from transformers import AutoTokenizer

    model = tmp / "other-model"
    shutil.copytree(fx.model_dir, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(model)
    return [*_score()(tmp, fx), "--model", str(model)]


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(target: Path) -> None:
        manifest = json.loads((target / "manifest.json").read_text())
        edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return change


def _truncate_arrow(target: Path) -> None:
    arrow = next((target / "calibration_dataset").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])


def _api(references: str) -> Callable[[Path, Fixtures], str]:
    def build(tmp: Path, fx: Fixtures) -> str:
        target = _copy(tmp, fx)
        return (f"from cola.score import score_calibration\n"
                f"score_calibration({str(target)!r}, {references}, quiet=True)\n")
    return build


CASES = [
    Case("score: a set scored and recorded in its manifest", _score(), expect="ok", check=_recorded),
    Case("score: the calibration directory does not exist", _score(copy=False), match="does not exist"),
    Case("score: a directory without manifest.json", _score(change=lambda t: (t / "manifest.json").unlink()),
         match="lacks manifest.json"),
    Case("score: a calibration file changed after curate", _score(change=_truncate_arrow),
         match="does not match its manifest.json", check=_unchanged),
    Case("score: --reference to a missing file", lambda tmp, fx: [
        "score", str(_copy(tmp, fx)), "--reference", f"general={tmp / 'nope.jsonl'}", "--quiet"],
        match="--reference general=", check=_unchanged),
    Case("score: a capability given twice", lambda tmp, fx: [
        *_score()(tmp, fx), "--reference", f"general={_references(tmp)}"], match="'general' given twice",
        check=_unchanged),
    Case("score: --reference_size 0", _score("--reference_size", "0"), match="reference_size must be at least 1",
         check=_unchanged),
    Case("score: --dtype float8", _score("--dtype", "float8"), match="unknown dtype 'float8'", check=_unchanged),
    Case("score: a model with another vocabulary", _other_vocabulary, match="different vocabulary",
         check=_unchanged),
    Case("score: a manifest naming no model", _score(change=_edit_manifest(lambda m: m.pop("model"))),
         match="names no model: give one with --model", check=_unchanged),
    Case("score: API references given as one string", _api("'general=x.jsonl'"), api=True,
         match="references must map each capability to its source", check=_unchanged),
    Case("score: API a blank source", _api("{'general': ' '}"), api=True,
         match="--reference general= : write CAPABILITY=SOURCE", check=_unchanged),
]

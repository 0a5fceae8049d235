"""Bad devices, damaged model and calibration files, outputs on top of their inputs, models needing their own code:
what `cola compress` (and the model loading it shares with curate and evaluate) meets from real users."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from audit.case import Case, Fixtures, run_cola

NO_CUDA = "import torch\ntorch.cuda.is_available = lambda: False  # the case holds on a machine with CUDA too\n"


def _cli(argv: list[str], before: str = "") -> str:
    """API source running the real CLI in the child, after `before` (e.g. hiding CUDA)."""
    return f"{before}from cola.cli import main\nsys.exit(main({argv!r}))\n"


def _copy(source: Path, tmp: Path, name: str, damage: Callable[[Path], None] | None = None) -> Path:
    target = tmp / name
    shutil.copytree(source, target)
    if damage is not None:
        damage(target)
    return target


def _halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(8, 40):  # inside the JSON header after its 8-byte length
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _arrow(calibration: Path) -> Path:
    return next((calibration / "calibration_dataset").glob("*.arrow"))


def _text(tmp: Path) -> Path:
    path = tmp / "t.jsonl"
    path.write_text('{"text": "The river ran past the old mill and the town."}\n', encoding="utf-8")
    return path


def _custom_code_model(tmp: Path, fx: Fixtures) -> Path:
    def declare(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        config.update(model_type="mything", auto_map={"AutoConfig": "configuration_mything.MyThingConfig",
                                                      "AutoModelForCausalLM": "modeling_mything.MyThing"})
        (model / "config.json").write_text(json.dumps(config))
        (model / "configuration_mything.py").write_text(
            "from transformers import LlamaConfig\n\n\nclass MyThingConfig(LlamaConfig):\n    model_type = 'mything'\n")

    return _copy(fx.model_dir, tmp, "mything", declare)


def _pickled_model(tmp: Path, fx: Fixtures) -> Path:
    """A model whose pytorch_model.bin makes a call while unpickling, as a malicious checkpoint does."""
    import torch
    from safetensors.torch import load_file

    model = _copy(fx.model_dir, tmp, "pickled")
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    torch.save({"payload": Payload(), **weights}, model / "pytorch_model.bin")
    return model


def _compressed(tmp: Path, fx: Fixtures, damage: Callable[[Path], None]) -> Path:
    out = tmp / "rtn"
    run_cola(["compress", "--model", str(fx.model_dir), "--method", "rtn", "--output_dir", str(out), "--quiet"],
             cwd=tmp, check=True)
    damage(out / "model.safetensors")
    return out


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _unchanged(path_of: Callable[[Path], Path], names: list[str]) -> Callable[[Path], str | None]:
    """A check that the folder still holds exactly `names` (the refused run wrote nothing into it)."""
    def check(tmp: Path) -> str | None:
        found = sorted(p.name for p in path_of(tmp).iterdir())
        return None if found == sorted(names) else f"{path_of(tmp)} now holds {found}"
    return check


CALIBRATION_NAMES = ["calibration_dataset", "calibration_dataset.parquet", "calibration_samples.json", "manifest.json",
                     "pool.parquet"]


def _compress(tmp: Path, fx: Fixtures, output: str | Path, *extra: str, calibration: Path | None = None,
              model: Path | None = None) -> list[str]:
    return ["compress", "--model", str(model or fx.model_dir), "--calibration", str(calibration or fx.calibration_dir),
            "--method", "ria", "--output_dir", str(output), "--quiet", *extra]


CASES = [
    # devices, checked in models.py before any model loads
    Case("compress: --device tpu", lambda tmp, fx: _compress(tmp, fx, tmp / "out", "--device", "tpu"),
         match="unknown device 'tpu'"),
    Case("compress: --device cuda without CUDA", lambda tmp, fx: _cli(
        _compress(tmp, fx, tmp / "out", "--device", "cuda"), NO_CUDA), api=True,
        match="device 'cuda' is not available"),
    Case("compress: --device cuda:x", lambda tmp, fx: _compress(tmp, fx, tmp / "out", "--device", "cuda:x"),
         match="unknown device 'cuda:x'"),
    Case("curate: --device tpu", lambda tmp, fx: [
        "curate", "--model_name_or_path", str(fx.model_dir), "--output_dir", str(tmp / "out"), "--datasets",
        str(fx.texts_file), "--device", "tpu", "--quiet"], match="unknown device 'tpu'"),
    Case("curate: --device cuda without CUDA", lambda tmp, fx: _cli([
        "curate", "--model_name_or_path", str(fx.model_dir), "--output_dir", str(tmp / "out"), "--datasets",
        str(fx.texts_file), "--device", "cuda", "--quiet"], NO_CUDA), api=True, match="device 'cuda' is not available"),
    Case("evaluate: --device tpu", lambda tmp, fx: [
        "evaluate", str(fx.model_dir), "--task", f"ppl:{_text(tmp)}", "--device", "tpu", "--quiet"],
        match="unknown device 'tpu'"),
    Case("evaluate: --device cuda without CUDA", lambda tmp, fx: _cli([
        "evaluate", str(fx.model_dir), "--task", f"ppl:{_text(tmp)}", "--device", "cuda", "--quiet"], NO_CUDA),
        api=True, match="device 'cuda' is not available"),
    # damaged calibration sets
    Case("compress: calibration manifest.json malformed", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", calibration=_copy(fx.calibration_dir, tmp, "calib",
                                                lambda c: (c / "manifest.json").write_text('{"outputs": {'))),
        match="manifest.json is not valid JSON"),
    Case("compress: calibration Arrow file truncated", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", calibration=_copy(fx.calibration_dir, tmp, "calib", lambda c: _halve(_arrow(c)))),
        match="does not match its manifest.json: calibration_dataset/data-00000-of-00001.arrow changed"),
    Case("compress: calibration sample file edited", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", calibration=_copy(fx.calibration_dir, tmp, "calib", lambda c: (
            c / "calibration_samples.json").write_text("[]"))),
        match="calibration_samples.json changed after it was written"),
    Case("load_calibration: set with a modified file", lambda tmp, fx: (
        f"from cola.compress.calibration import load_calibration\n"
        f"load_calibration({str(_copy(fx.calibration_dir, tmp, 'calib', lambda c: _halve(c / 'pool.parquet')))!r})\n"),
        api=True, match="pool.parquet changed"),
    # damaged model directories
    Case("evaluate: model.safetensors truncated", lambda tmp, fx: [
        "evaluate", str(_copy(fx.model_dir, tmp, "m", lambda m: _halve(m / "model.safetensors"))), "--task",
        f"ppl:{_text(tmp)}", "--quiet"], match="model.safetensors is damaged"),
    Case("evaluate: model.safetensors with flipped header bytes", lambda tmp, fx: [
        "evaluate", str(_copy(fx.model_dir, tmp, "m", lambda m: _flip_header(m / "model.safetensors"))), "--task",
        f"ppl:{_text(tmp)}", "--quiet"], match="model.safetensors is damaged"),
    Case("compress: model.safetensors truncated", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", model=_copy(fx.model_dir, tmp, "m", lambda m: _halve(m / "model.safetensors"))),
        match="model.safetensors is damaged", check=lambda tmp: "output written" if (tmp / "out").exists() else None),
    Case("compress: model.safetensors with flipped header bytes", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", model=_copy(fx.model_dir, tmp, "m", lambda m: _flip_header(m / "model.safetensors"))),
        match="model.safetensors is damaged"),
    Case("evaluate: compressed model with a flipped weight byte", lambda tmp, fx: [
        "evaluate", str(_compressed(tmp, fx, _flip_last_byte)), "--task", f"ppl:{_text(tmp)}", "--quiet"],
        match="does not match its compression_summary.json: model.safetensors changed"),
    Case("evaluate: compressed model missing its weights", lambda tmp, fx: [
        "evaluate", str(_compressed(tmp, fx, Path.unlink)), "--task", f"ppl:{_text(tmp)}", "--quiet"],
        match="model.safetensors, listed in its compression_summary.json, is missing"),
    Case("evaluate: model needing its own code", lambda tmp, fx: [
        "evaluate", str(_custom_code_model(tmp, fx)), "--task", f"ppl:{_text(tmp)}", "--quiet"],
        match="pass --trust_remote_code"),
    Case("compress: model needing its own code", lambda tmp, fx: _compress(
        tmp, fx, tmp / "out", model=_custom_code_model(tmp, fx)), match="pass --trust_remote_code"),
    Case("evaluate: pytorch_model.bin pickle torch refuses", lambda tmp, fx: [
        "evaluate", str(_pickled_model(tmp, fx)), "--task", f"ppl:{_text(tmp)}", "--quiet"],
        match="torch.load's safe mode refuses"),
    # outputs on top of inputs
    Case("compress: --output_dir is the calibration directory", lambda tmp, fx: _compress(
        tmp, fx, _copy(fx.calibration_dir, tmp, "calib"), "--overwrite", calibration=tmp / "calib"),
        match="is the calibration directory", check=_unchanged(lambda tmp: tmp / "calib", CALIBRATION_NAMES)),
    Case("compress: --output_dir inside the calibration directory", lambda tmp, fx: _compress(
        tmp, fx, _copy(fx.calibration_dir, tmp, "calib") / "ria", calibration=tmp / "calib"),
        match="lies inside the calibration directory",
        check=_unchanged(lambda tmp: tmp / "calib", CALIBRATION_NAMES)),
    Case("compress: --output_dir contains the calibration directory", lambda tmp, fx: _compress(
        tmp, fx, tmp / "data", "--overwrite", calibration=_copy(fx.calibration_dir, tmp / "data", "calib")),
        match="contains the calibration directory", check=_unchanged(lambda tmp: tmp / "data", ["calib"])),
    Case("compress: --output_dir is the model's directory", lambda tmp, fx: _compress(
        tmp, fx, _copy(fx.model_dir, tmp, "m"), "--overwrite", model=tmp / "m"),
        match="is the model's directory"),
    Case("compress: --output_dir empty", lambda tmp, fx: _compress(tmp, fx, ""), match="--output_dir is empty",
         check=lambda tmp: f"wrote {sorted(p.name for p in tmp.iterdir())}" if any(tmp.iterdir()) else None),
    Case("compress: --output_dir is the current directory", lambda tmp, fx: _compress(tmp, fx, "."),
         match="is or contains the current directory"),
    Case("compress: --output_dir holds other files", lambda tmp, fx: (
        (tmp / "mine").mkdir(), (tmp / "mine" / "thesis.tex").write_text("x"),
        _compress(tmp, fx, tmp / "mine", "--overwrite"))[-1],
        match="holds files that are not a model (thesis.tex)",
        check=_unchanged(lambda tmp: tmp / "mine", ["thesis.tex"])),
]

"""Loading models: devices checked against the machine before anything loads, and every way a model directory
can be broken (damaged weights, a refused pickle, custom code) is one line naming the file or the flag."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cola.cli import main
from cola.errors import ColaError
from cola.models import load_model, resolve_device

from tests.conftest import byte_tokenizer, tiny_llama, write_jsonl
from tests.compress.test_api import truncate_half, write_calibration


@pytest.fixture()
def no_accelerator(monkeypatch):
    """This machine as one without CUDA, MPS or XPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


@pytest.fixture()
def two_gpus(no_accelerator, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_unknown_devices_list_the_valid_ones(no_accelerator) -> None:
    with pytest.raises(ColaError) as info:
        resolve_device("tpu")
    assert str(info.value) == ("unknown device 'tpu'. Did you mean 'xpu', 'cpu'? Valid choices: auto, cpu, cuda, "
                               "cuda:N, mps, xpu, xpu:N (available here: auto, cpu)")
    for name in ("cuda:x", "cpu:0", "mps:1", "CUDA", ""):
        with pytest.raises(ColaError, match=f"^unknown device '{name}'.*Valid choices: auto, cpu, cuda, cuda:N"):
            resolve_device(name)


def test_cuda_on_a_machine_without_it_is_refused(no_accelerator) -> None:
    for name in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ColaError, match=f"^device '{name}' is not available: .*; available here: auto, cpu$"):
            resolve_device(name)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_cuda_indices_are_checked_against_the_gpus_present(two_gpus) -> None:
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ColaError) as info:
        resolve_device("cuda:2")
    assert str(info.value) == ("device 'cuda:2' is not available: this machine has 2 CUDA devices; available "
                               "here: auto, cpu, cuda, cuda:0, cuda:1")


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cola: error: ") and "\n" not in err, err
    return err


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "t.jsonl", [{"text": "The river ran past the old mill. " * 4}] * 3)


@pytest.mark.parametrize("device, message", [
    ("tpu", "unknown device 'tpu'"),
    ("cuda", "device 'cuda' is not available"),
])
def test_every_command_checks_the_device_before_the_model_loads(no_accelerator, tmp_path, capsys, text_file,
                                                                 device, message) -> None:
    """The model path does not exist: the device error coming first shows the check runs before any loading."""
    missing = str(tmp_path / "no-model")
    calibration = write_calibration(tmp_path / "calib", byte_tokenizer())
    capsys.readouterr()  # the dataset writer's progress bar
    commands = {
        "curate": ["curate", "--model_name_or_path", missing, "--output_dir", str(tmp_path / "c"),
                   "--datasets", str(text_file)],
        "compress": ["compress", "--model", missing, "--calibration", str(calibration), "--method", "ria",
                     "--output_dir", str(tmp_path / "m")],
        "evaluate": ["evaluate", missing, "--task", f"ppl:{text_file}"],
    }
    for name, argv in commands.items():
        err = _one_line_error(capsys, [*argv, "--device", device, "--quiet"])
        assert message in err and "available here: auto, cpu" in err, (name, err)
    err = _one_line_error(capsys, [*commands["curate"], "--device", device])  # before any source is read (and logged)
    assert message in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


def _broken_copy(model_dir: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(model_dir, copy)
    return copy


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(8, 40):  # inside the JSON header that follows the 8-byte length
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, detail", [
    (truncate_half, "incomplete metadata, file not fully covered"),
    (_flip_header, "invalid UTF-8 in header"),
], ids=["truncated", "flipped header bytes"])
def test_damaged_safetensors_are_one_line_naming_the_file(tiny_model_dir, tmp_path, capsys, text_file, damage,
                                                          detail) -> None:
    model = _broken_copy(tiny_model_dir, tmp_path, "damaged")
    damage(model / "model.safetensors")
    for argv in (["evaluate", str(model), "--task", f"ppl:{text_file}"],
                 ["compress", "--model", str(model), "--method", "rtn", "--output_dir", str(tmp_path / "out")]):
        err = _one_line_error(capsys, [*argv, "--quiet"])
        assert f"cannot load model '{model}': model.safetensors is damaged (Error while deserializing header: " in err
        assert detail in err and err.endswith("; copy or download it again")
    assert not (tmp_path / "out").exists()


def test_a_pickle_torch_refuses_is_one_line(tiny_model_dir, tmp_path, capsys, text_file) -> None:
    model = _broken_copy(tiny_model_dir, tmp_path, "pickled")
    (model / "model.safetensors").unlink()

    class Payload:  # what a malicious checkpoint carries: a call made while unpickling
        def __reduce__(self):
            return (print, ("this ran while loading",))

    torch.save({"payload": Payload(), **tiny_llama(layers=3).state_dict()}, model / "pytorch_model.bin")
    err = _one_line_error(capsys, ["evaluate", str(model), "--task", f"ppl:{text_file}", "--quiet"])
    assert err == (f"cola: error: cannot load model '{model}': its pickled weights (pytorch_model.bin) call code "
                   "that torch.load's safe mode refuses (Unsupported global: GLOBAL print was not an "
                   "allowed global by default); load them only if you trust their source, and convert them to "
                   "safetensors")


def test_transformers_refusing_pickles_on_an_old_torch_is_one_line(tiny_model_dir, tmp_path, monkeypatch) -> None:
    import transformers.modeling_utils as modeling_utils

    model = _broken_copy(tiny_model_dir, tmp_path, "pickled")
    (model / "model.safetensors").unlink()
    torch.save(tiny_llama(layers=3).state_dict(), model / "pytorch_model.bin")

    def torch_too_old() -> None:  # what transformers raises under torch < 2.6
        raise ValueError("Due to a serious vulnerability issue in `torch.load`, even with `weights_only=True`, we "
                         "now require users to upgrade torch to at least v2.6\nSee the vulnerability report")

    monkeypatch.setattr(modeling_utils, "check_torch_load_is_safe", torch_too_old)
    with pytest.raises(ColaError, match=r"its weights are a pickle \(pytorch_model.bin\), which transformers reads "
                                        r"only with torch >= 2.6 \(installed: "):
        load_model(str(model), device="cpu", dtype="float32")


CUSTOM_CONFIG = '''from transformers import LlamaConfig


class MyThingConfig(LlamaConfig):
    model_type = "mything"
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_mything import MyThingConfig


class MyThingForCausalLM(LlamaForCausalLM):
    config_class = MyThingConfig
'''


def test_a_model_with_its_own_code_needs_trust_remote_code(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                           text_file) -> None:
    import transformers.dynamic_module_utils as dynamic

    model = _broken_copy(tiny_model_dir, tmp_path, "mything")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="mything", auto_map={"AutoConfig": "configuration_mything.MyThingConfig",
                                                  "AutoModelForCausalLM": "modeling_mything.MyThingForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_mything.py").write_text(CUSTOM_CONFIG)
    (model / "modeling_mything.py").write_text(CUSTOM_MODEL)
    for argv in (["evaluate", str(model), "--task", f"ppl:{text_file}"],
                 ["compress", "--model", str(model), "--method", "rtn", "--output_dir", str(tmp_path / "out")]):
        err = _one_line_error(capsys, [*argv, "--quiet"])
        assert err == (f"cola: error: model '{model}' needs its own Python code (config.json names custom "
                       "classes): read that code, then pass --trust_remote_code (trust_remote_code=True in "
                       "Python) to run it")
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # transformers copies the code
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["evaluate", str(model), "--task", f"ppl:{text_file}", "--window", "16", "--quiet",
                 "--trust_remote_code"]) == 0
    assert "ppl:t" in capsys.readouterr().out
    loaded, _tokenizer = load_model(str(model), device="cpu", dtype="float32", trust_remote_code=True)
    assert type(loaded).__name__ == "MyThingForCausalLM"


def test_transformers_gguf_bar_draws_only_where_colas_bars_do(monkeypatch):
    """transformers' GGUF converter bar follows cola.progress.bars_disabled: off with quiet and off into a file or
    pipe (a helper saw its carriage-return frames in a redirected `make demo` log), on at a terminal."""
    import io

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from cola.gguf_models import _gguf_bar_disabled

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    original = gguf_utils.tqdm
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    for stream, quiet, drawn in ((io.StringIO(), False, False), (Terminal(), True, False), (Terminal(), False, True)):
        monkeypatch.setattr("sys.stderr", stream)
        with _gguf_bar_disabled(quiet):
            assert (gguf_utils.tqdm is original) == drawn, (stream, quiet)
            assert drawn or gguf_utils.tqdm.keywords == {"disable": True}
        assert gguf_utils.tqdm is original  # restored

"""Stage 1 from content, fail-fast checks before any model work, hub access offline, and the Python API boundary."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

from audit.case import Case, Fixtures

Build = Callable[[Path, Fixtures], "list[str] | str"]


def _no_output(tmp: Path) -> str | None:
    """A failed run leaves no output directory at all."""
    return f"{tmp / 'out'} was created" if (tmp / "out").exists() else None


def _nothing_written(tmp: Path) -> str | None:
    """Nothing at all appeared in the case's folder (the current directory of the run)."""
    made = sorted(p.name for p in tmp.iterdir() if p.name not in {"in.jsonl"})
    return f"wrote {made}" if made else None


def _curate(*extra: str, datasets: list[str] | None = None, model: str | None = None) -> Build:
    """`cola curate` on the tiny model into tmp/out, 4 samples of 32 tokens, with the fixtures' text file
    unless `datasets` is given ({texts} stands for that file, {tmp} for the case's folder)."""
    def build(tmp: Path, fx: Fixtures) -> list[str]:
        def fill(text: str) -> str:
            return text.replace("{texts}", str(fx.texts_file)).replace("{tmp}", str(tmp))

        names = [fill(d) for d in (datasets or ["{texts}"])]
        return ["curate", "--model_name_or_path", model or str(fx.model_dir), "--output_dir", str(tmp / "out"),
                "--num_samples", "4", "--sequence_length", "32", "--candidates_per_source", "20", "--quiet",
                "--datasets", *names, *(fill(e) for e in extra)]
    return build


def _with_file(name: str, content: str, build: Build) -> Build:
    def wrapped(tmp: Path, fx: Fixtures) -> list[str] | str:
        (tmp / name).write_text(content, encoding="utf-8")
        return build(tmp, fx)
    return wrapped


def _api(body: str) -> Build:
    """Python source run with the tiny model loaded as `model`, `tokenizer`; `texts` is a 40-record text file and
    `out` the case's output directory."""
    def build(tmp: Path, fx: Fixtures) -> str:
        head = (f"from cola import COLA\nfrom cola.config import SelectionConfig\n"
                f"from cola.models import load_model\n"
                f"model, tokenizer = load_model({str(fx.model_dir)!r}, device='cpu', dtype='float32', quiet=True)\n"
                f"texts = {str(fx.texts_file)!r}\nout = {str(tmp / 'out')!r}\n")
        return head + textwrap.dedent(body)
    return build


ARC = "".join(json.dumps({"question": f"Which one, {i}?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                          "answerKey": "A"}) + "\n" for i in range(10))

CASES = [
    # --- Stage 1: capabilities from content --------------------------------------------------------------------
    Case("stage1: targeted math over a label-less text file runs (capability from content)", _curate(
        "--target_capabilities", "math", "general", "--deployment_type", "targeted", "--targeted_capability",
        "math", "--reference_size", "8"), expect="ok"),
    Case("stage1: a target capability without any reference set", _curate(
        "--target_capabilities", "poetry"), match="--reference poetry=", check=_no_output),
    Case("stage1: --no_stage1 and a target no label or catalog serves", _curate(
        "--target_capabilities", "math", "--no_stage1"), match="label a source SOURCE@math", check=_no_output),
    # --- fail fast: references, hub, output directory, before any model work --------------------------------
    Case("stage1: the seed's commonsense target offline, no --reference", _curate(
        "--target_capabilities", "commonsense", "math", "code"),
        match="give a local file with --reference commonsense=PATH", check=_no_output),
    Case("stage1: a commonsense-schema source offline, no --reference", _with_file("in.jsonl", ARC, _curate(
        "--stage1", datasets=["{tmp}/in.jsonl"])), match="--reference commonsense=PATH", check=_no_output),
    Case("stage1: a hub --reference offline", _curate(
        "--target_capabilities", "commonsense", "--reference", "commonsense=tau/commonsense_qa"),
        match="--reference commonsense=tau/commonsense_qa needs the Hugging Face hub", check=_no_output),
    Case("stage1: a --reference file that does not exist", _curate(
        "--target_capabilities", "math", "--reference", "math={tmp}/missing.jsonl"),
        match="dataset file not found", check=_no_output),
    Case("stage1: an empty --reference file", _with_file("in.jsonl", "", _curate(
        "--target_capabilities", "math", "--reference", "math={tmp}/in.jsonl")),
        match="the source is empty", check=_no_output),
    Case("stage1: a hub dataset offline (one line, no retries)", _curate(datasets=["allenai/c4"]),
         match="hub dataset 'allenai/c4' (allenai/c4) needs the Hugging Face hub", check=_no_output),
    Case("stage1: a catalog dataset offline", _curate(datasets=["gsm8k"]),
         match="needs the Hugging Face hub, which is unreachable (HF_HUB_OFFLINE=1 is set)", check=_no_output),
    Case("stage1: a hub model id offline, not cached", _curate(model="someone-xyz/no-such-model"),
         match="is a hub id that is not in the local cache", check=_no_output),
    Case("stage1: a shipped model's name mistyped, offline", _curate(model="gemma3-270"),
         match="did you mean 'gemma3-270m'? give a local model directory", check=_no_output),
    Case("stage1: a missing --reasoning_model", _curate(
        "--generate_reasoning", "--reasoning_model", "{tmp}/no-model", "--no_stage1"),
        match="--reasoning_model", check=_no_output),
    Case("curate: --output_dir '' (would write into the current directory)", lambda tmp, fx: [
        "curate", "--model_name_or_path", str(fx.model_dir), "--output_dir", "", "--datasets", str(fx.texts_file),
        "--num_samples", "4", "--sequence_length", "32", "--quiet"], match="output_dir is empty",
        check=_nothing_written),
    Case("curate: --output_dir is a file", _with_file("in.jsonl", "x", lambda tmp, fx: [
        "curate", "--model_name_or_path", str(fx.model_dir), "--output_dir", str(tmp / "in.jsonl"),
        "--datasets", str(fx.texts_file), "--quiet"]), match="is a file, not a directory"),
    Case("curate: a malformed source leaves no output directory", _with_file(
        "in.jsonl", '{"text": "a"}\n{"text": \n', _curate(datasets=["{tmp}/in.jsonl"])),
        match="malformed JSON on line 2", check=_no_output),
    Case("curate: a layer index the model lacks fails before Stage 2", _curate("--layers", "0,7",
                                                                               "--selection_method", "activations"),
         match="unknown layer index 7", check=_no_output),
    Case("curate: --selection_method moments --no_stage3", _curate("--selection_method", "moments", "--no_stage3"),
         match="selection method 'moments' needs stage3 on", check=_no_output),
    Case("curate: --layers where nothing reads the model", _curate("--layers", "0,1"),
         match="--layers sets how the model reads the pool, which this run never does", check=_no_output),
    Case("curate: --sketch_dim with activation medoids", _curate("--selection_method", "activations",
                                                                 "--sketch_dim", "8"),
         match="--sketch_dim applies to --selection_method moments or outlier_coverage", check=_no_output),
    Case("curate: --stage1 --no_stage1", _curate("--stage1", "--no_stage1"),
         match="argument --no_stage1: not allowed with argument --stage1", check=_no_output),
    Case("curate: --targeted_capability without a targeted deployment", _curate("--targeted_capability", "math"),
         match="--targeted_capability math needs --deployment_type targeted", check=_no_output),
    Case("curate: --selection_method activations --no_stage3",
         _curate("--selection_method", "activations", "--no_stage3"),
         match="selection method 'activations' needs stage3 on", check=_no_output),
    Case("curate: --sketch_dim 0", _curate("--selection_method", "moments", "--sketch_dim", "0"),
         match="sketch_dim must be at least 1, got 0", check=_no_output),
    Case("curate: --selection_method moments runs", _curate("--selection_method", "moments"), expect="ok"),
    Case("api: feature_cache=3 (not a folder)", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out, feature_cache=3)
        """), api=True, match="feature_cache must be", check=_no_output),
    # --- the Python API boundary -------------------------------------------------------------------------------
    Case("api: target_capabilities='general' (a string) is one capability", _api("""
        samples = COLA(model=model, tokenizer=tokenizer, available_datasets=texts, target_capabilities="general",
                       output_dir=out, quiet=True).run(num_samples=4, sequence_length=32)
        assert all(list(s["capability_scores"]) == ["general"] for s in samples), samples
        """), api=True, expect="ok"),
    Case("api: available_datasets='embedded-math' (a string) is one dataset", _api("""
        cola = COLA(model=model, tokenizer=tokenizer, available_datasets="embedded-math", output_dir=out)
        assert cola.settings.datasets == ("embedded-math",), cola.settings.datasets
        """), api=True, expect="ok"),
    Case("api: run(num_samples='8')", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out, quiet=True).run(
            num_samples="8", sequence_length=32)
        """), api=True, match="num_samples must be an integer, got '8' (a string)", check=_no_output),
    Case("api: run(sequence_length=None)", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out, quiet=True).run(
            num_samples=4, sequence_length=None)
        """), api=True, match="sequence_length must be an integer, got None", check=_no_output),
    Case("api: selection={'method': ...} (a dict)", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out,
             selection={"method": "random"})
        """), api=True, match="selection must be a SelectionConfig", check=_no_output),
    Case("api: available_datasets=[None]", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[None], output_dir=out)
        """), api=True, match="available_datasets[0] must be a string or a path", check=_no_output),
    Case("api: target_capabilities=[None]", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], target_capabilities=[None], output_dir=out)
        """), api=True, match="target_capabilities[0] must be a string", check=_no_output),
    Case("api: stage1=1 (an int for a bool)", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out, stage1=1)
        """), api=True, match="stage1 must be True or False or None, got 1 (an integer)"),
    Case("api: SelectionConfig(layers=[0, '1'])", _api("""
        SelectionConfig(layers=[0, "1"])
        """), api=True, match="layers[1] must be an integer"),
    Case("api: model='embedded' (a name, not a model)", _api("""
        COLA(model="embedded", tokenizer=tokenizer, output_dir=out)
        """), api=True, match="model must be a loaded causal language model"),
    Case("api: output_dir=''", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir="")
        """), api=True, match="output_dir is empty", check=_nothing_written),
    Case("api: quiet='yes'", _api("""
        COLA(model=model, tokenizer=tokenizer, output_dir=out, quiet="yes")
        """), api=True, match="quiet must be True or False"),
    Case("api: a commonsense target offline fails before Stage 2", _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=[texts], output_dir=out, quiet=True,
             target_capabilities=["general", "commonsense"]).run(num_samples=4, sequence_length=32)
        """), api=True, match="--reference commonsense=PATH", check=_no_output),
    Case("api: a malformed source leaves no output directory", _with_file("in.jsonl", '{"text": \n', _api("""
        COLA(model=model, tokenizer=tokenizer, available_datasets=["in.jsonl"], output_dir=out, quiet=True).run(
            num_samples=4, sequence_length=32)
        """)), api=True, match="malformed JSON on line 1", check=_no_output),
]

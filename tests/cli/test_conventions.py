"""The command line's conventions: every default shown, no torch to answer --help, --version, python -m cola,
one model flag, shared defaults (the README's table), progress bars and log lines."""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cola.cli import build_parser, main
from cola.cli.common import configure_logging
from cola.progress import bars_disabled, progress_bar

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("curate", "compress", "evaluate", "score", "experiment", "datasets")
NEEDS = {"curate": ["--output_dir", "o"], "compress": ["--method", "rtn", "--output_dir", "o"],
         "evaluate": ["--task", "wikitext2"], "score": ["d", "--reference", "math=m.jsonl"],
         "experiment": ["grid.yaml"], "datasets": []}


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name in SUBCOMMANDS], ["--version"]])
def test_help_and_version_answer_without_importing_torch(argv) -> None:
    done = _run("import sys\nfrom cola.cli import main\ntry:\n    main(%r)\nexcept SystemExit as exc:\n"
                "    assert exc.code == 0, exc.code\nprint('TORCH', 'torch' in sys.modules)" % argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("TORCH False")
    assert ("usage: cola" in done.stdout) != (argv == ["--version"])


def test_import_cola_and_its_config_load_no_torch_and_no_stage() -> None:
    done = _run("import sys, cola, cola.config, cola.settings\n"
                "print(sorted(m for m in sys.modules if m in ('torch', 'numpy', 'transformers') "
                "or m.startswith('cola.stages')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version_and_python_dash_m_cola(capsys) -> None:
    from cola import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"cola {__version__}\n"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    for module in ("cola", "cola.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=env,
                              timeout=120)
        assert (done.returncode, done.stdout) == (0, f"cola {__version__}\n")


def test_every_option_has_help_and_its_default_shown() -> None:
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                argparse._VersionAction)
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if isinstance(action, switches) or not action.option_strings:
                continue
            assert "default" in action.help or "(required)" in action.help, (
                f"{name} {action.option_strings[0]} hides its default: {action.help!r}")


def test_curate_help_shows_every_default_in_words(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: embedded)", "tokens per sample, exactly (documents are packed or split to it) "
                  "(default: 2048)", "calibration samples to select (default: 128)", "(default: 42)",
                  "(default: auto)", "decoder layers whose activations are used: all, '0,5,-1', '10-20' (in "
                  "Python: None = all) (default: all)", "drop documents with fewer tokens (default: 16)",
                  "(default: semantic=0.4,token=0.3,coverage=0.3)", "most tokens of a generated reasoning chain "
                  "(default: 256)", "probe texts per capability (default: 64)"):
        assert shown in text
    assert "model_name_or_path" not in text  # the old spelling works but is not advertised


def _defaults(name: str) -> argparse.Namespace:
    return build_parser().parse_args([name, *NEEDS[name]])


def test_one_model_flag_with_the_old_spellings_kept() -> None:
    parser = build_parser()
    for name in ("curate", "compress", "evaluate"):
        assert parser.parse_args([name, *NEEDS[name], "--model", "m"]).model == "m"
        assert _defaults(name).model == "embedded"
    assert parser.parse_args(["curate", "--output_dir", "o", "--model_name_or_path", "m"]).model == "m"
    from cola.cli.evaluate import evaluated_model

    assert evaluated_model(parser.parse_args(["evaluate", "out/x", "--task", "wikitext2"])) == "out/x"
    with pytest.raises(Exception, match="two models given: MODEL_OR_DIR 'a' and --model 'b'; give one"):
        evaluated_model(parser.parse_args(["evaluate", "a", "--model", "b", "--task", "wikitext2"]))


def _readme_defaults() -> dict[str, dict[str, str]]:
    """The README's table of shared defaults: flag -> subcommand -> default."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| flag | curate | compress | evaluate | why they differ |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| `--"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(("curate", "compress", "evaluate"), cells[1:4]))
    return rows


def test_shared_defaults_are_those_of_the_readme_table() -> None:
    rows = _readme_defaults()
    assert set(rows) == {"--model", "--device", "--dtype", "--batch_tokens", "--trust_remote_code", "--quiet"}
    for name in ("curate", "compress", "evaluate"):
        args = vars(_defaults(name))
        for flag, by_command in rows.items():
            dest = {"--batch_tokens": "selection.batch_tokens" if name == "curate" else "batch_tokens"}.get(
                flag, flag[2:])
            value = args[dest]
            expected = by_command[name]
            assert str(value) == expected if not isinstance(value, bool) else value == (expected == "on"), (
                name, flag, value, expected)
    assert rows["--device"] == {"curate": "auto", "compress": "auto", "evaluate": "auto"}


def test_curate_seed_sets_every_stage_seed() -> None:
    from cola.cli import curate_config

    config = curate_config(build_parser().parse_args(["curate", "--output_dir", "o", "--seed", "7"]))
    assert (config.seed, config.selection.seed, config.process.filters.seed, config.process.reasoning.seed,
            config.domain.seed) == (7, 7, 7, 7, 7)
    assert tuple(config.seeds) == (7, 7, 7, 7, 7)


def test_flags_still_reach_their_fields() -> None:
    from cola.cli import curate_config
    from cola.config import CurateConfig

    config = curate_config(build_parser().parse_args([
        "curate", "--output_dir", "o", "--no_dedup", "--min_length", "3", "--max_length", "90",
        "--perplexity_filter", "0.1", "--selection_method", "activations", "--layers", "0-2", "--batch_size", "5",
        "--batch_tokens", "64", "--fields", "question=q,answer=a", "--reference", "math=m.jsonl", "--reference",
        "code=c.jsonl", "--reasoning_max_new_tokens", "9", "--reasoning_batch_size", "4",
        "--stage1", "--no_stage2",
        "--datasets", "a.jsonl", "b.jsonl", "--target_capabilities", "math", "code"]))
    filters = config.process.filters
    assert (filters.dedup_exact, filters.dedup_near, filters.min_tokens, filters.max_tokens,
            filters.perplexity_drop_fraction) == (False, False, 3, 90, 0.1)
    assert (config.selection.method, config.selection.layers, config.selection.batch_size,
            config.selection.batch_tokens) == ("activations", (0, 1, 2), 5, 64)
    assert (config.process.reasoning.batch_size, config.process.reasoning.max_new_tokens) == (4, 9)
    # Stage 3's --batch_size no longer sets reasoning's (the Python API's default, 8, is the CLI's too)
    assert curate_config(build_parser().parse_args(["curate", "--output_dir", "o", "--batch_size", "5"])
                         ).process.reasoning == CurateConfig().process.reasoning
    assert config.process.field_mapping == (("question", "q"), ("answer", "a"))
    assert config.references == (("math", "m.jsonl"), ("code", "c.jsonl"))
    assert (config.stage1, config.process.enabled, config.stage3) == (True, False, True)
    assert curate_config(build_parser().parse_args(["curate", "--output_dir", "o", "--no_stage3"])).stage3 is False
    assert config.datasets == ("a.jsonl", "b.jsonl") and config.target_capabilities == ("math", "code")
    defaults = curate_config(build_parser().parse_args(["curate", "--output_dir", "o"]))
    # no flag given: exactly the config's own defaults, the Python API's (reasoning's batch size included)
    assert defaults == CurateConfig()


def test_other_libraries_log_lines_are_not_printed_as_colas(capsys) -> None:
    try:
        configure_logging(quiet=False)
        logging.getLogger("cola.stages.process").info("kept 3 of 4")
        logging.getLogger("urllib3.connectionpool").warning("retrying")  # a library without a handler of its own
        logging.getLogger("urllib3").info("connecting")
        err = capsys.readouterr().err
    finally:
        logging.basicConfig(force=True)
    assert err.splitlines() == ["cola: kept 3 of 4", "urllib3.connectionpool: WARNING: retrying"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_honour_tqdm_disable_and_a_non_terminal(monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bars_disabled(False, _Terminal()) is False
    assert bars_disabled(True, _Terminal()) is True
    assert bars_disabled(False, io.StringIO()) is True  # a log file or a pipe: no bars
    for value, disabled in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert bars_disabled(False, _Terminal()) is disabled
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(3), quiet=False, desc="x").fp is not sys.stderr  # no bar; log lines (below)


def test_without_bars_a_long_step_logs_its_progress_and_quiet_silences_it(monkeypatch, caplog) -> None:
    import time

    import cola.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    with caplog.at_level("INFO", logger="cola.progress"):
        with progress_bar(total=4, quiet=False, desc="activations", unit="tok") as bar:
            for _ in range(4):
                time.sleep(0.06)
                bar.update(1)
        lines = [r.getMessage() for r in caplog.records]
        assert 2 <= len(lines) <= 4 and all(line.startswith("activations: ") for line in lines)
        assert lines[-1].startswith("activations: 100% 4/4 [")
        caplog.clear()
        with progress_bar(total=4, quiet=False, desc="short") as bar:
            bar.update(4)  # done before the first interval: no line
        with progress_bar(total=4, quiet=True, desc="quiet") as bar:
            time.sleep(0.1)
            bar.update(4)
        assert caplog.records == []
        from tqdm.auto import tqdm

        if tqdm.monitor is not None:  # a monitor thread of its own that wakes often
            tqdm.monitor.exit()
        monkeypatch.setattr(tqdm, "monitor", None)
        monkeypatch.setattr(tqdm, "monitor_interval", 0.02)
        with progress_bar(total=4096, quiet=False, desc="stalled", maxinterval=0.05) as bar:
            time.sleep(0.06)
            bar.update(1024)  # a batch's tokens at once, as extraction counts
            time.sleep(0.3)  # no progress: no line, however often the monitor looks
        assert [r.getMessage()[:25] for r in caplog.records] == ["stalled:  25% 1024/4096 ["]


@pytest.mark.parametrize("argv, expected", [
    (["curate", "--output_dir", "x", "--num_samples", "x"],
     "cola curate: error: argument --num_samples: invalid int value: 'x' (see `cola curate --help`)"),
    (["curate", "--output_dir", "x", "--sed", "3"],
     "cola curate: error: unrecognized argument --sed (did you mean --seed or --stage1?) (see `cola curate --help`)"),
    (["compress", "--method", "wanda", "--output_dir", "x", "--sparsity", "half"],
     "cola compress: error: argument --sparsity: invalid float value: 'half' (see `cola compress --help`)"),
])
def test_argparse_errors_are_one_line_naming_the_subcommand(argv, expected, capsys) -> None:
    from cola.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == expected + "\n"

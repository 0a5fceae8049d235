"""`cola experiment`: experiment YAMLs with values of the wrong type, labels that are not plain names (path
traversal), links out of the work directory, and a stale lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from audit.case import Case, Fixtures

GRID = ("strategies: [random_c4]\n"
        "methods: {rtn4: {method: rtn, bits: 4}}\n"
        "evaluation: {tasks: ['ppl:x.txt']}\n")


def experiment(yaml_text: str, *flags: str) -> Callable[[Path, Fixtures], list[str]]:
    """Write `yaml_text` to tmp/exp.yaml; run `cola experiment` on it with its work directory in tmp/a/b/work."""

    def build(tmp: Path, _fx: Fixtures) -> list[str]:
        victim = tmp / "victim"
        victim.mkdir()
        (victim / "canary.txt").write_text("keep me", encoding="utf-8")
        (tmp / "exp.yaml").write_text(yaml_text, encoding="utf-8")
        return ["experiment", "exp.yaml", "--work_dir", str(tmp / "a" / "b" / "work"), *flags]

    return build


def nothing_written(tmp: Path) -> str | None:
    """The canary survived and nothing but the inputs exists (no work directory, no file outside it)."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    if (tmp / "victim" / "canary.txt").read_text(encoding="utf-8") != "keep me":
        return "the canary file was changed"
    if files != ["exp.yaml", "victim", "victim/canary.txt"]:
        return f"files were written: {files}"
    return None


def method_label(label: str) -> str:
    return f"name: t\nstrategies: [random_c4]\nmethods: {{{json.dumps(label)}: {{method: rtn}}}}\n"


def not_utf8(tmp: Path, _fx: Fixtures) -> list[str]:
    (tmp / "bin.yaml").write_bytes(b"name: \xff\xfe\n")
    return ["experiment", "bin.yaml"]


def with_link(tmp: Path, fx: Fixtures) -> list[str]:
    """A valid grid whose work directory's models/ folder is a link to a folder outside it."""
    argv = experiment("name: t\n" + GRID)(tmp, fx)
    work = tmp / "a" / "b" / "work"
    work.mkdir(parents=True)
    (work / "models").symlink_to(tmp / "victim", target_is_directory=True)
    return argv


def canary_only(tmp: Path) -> str | None:
    names = sorted(p.name for p in (tmp / "victim").iterdir())
    return None if names == ["canary.txt"] else f"the linked folder now holds {names}"


def tiny_grid(tmp: Path, fx: Fixtures) -> list[str]:
    """A real one-cell grid on the tiny model, isolated, with a stale lock left by a dead run on its cell."""
    (tmp / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    argv = experiment(
        f"name: tiny\nmodel: {json.dumps(str(fx.model_dir))}\nstrategies: [random_c4]\n"
        f"calibration: {{num_samples: 4, sequence_length: 32, candidates_per_source: 20, random_source: prose,\n"
        f"              datasets: [{json.dumps(str(fx.texts_file))}]}}\n"
        "methods: {ria50: {method: ria, sparsity: 0.5}}\n"
        "evaluation: {tasks: ['ppl:text.txt'], window: 16}\n", "--quiet")(tmp, fx)
    locks = tmp / "a" / "b" / "work" / "locks"
    locks.mkdir(parents=True)
    (locks / "random_c4__ria50__seed0.lock").write_text("999999999\n", encoding="utf-8")  # no such process
    return argv


def tiny_grid_finished(tmp: Path) -> str | None:
    work = tmp / "a" / "b" / "work"
    record = json.loads((work / "cells" / "random_c4__ria50__seed0.json").read_text(encoding="utf-8"))
    if record.get("status") != "ok":
        return f"the cell did not finish: {record.get('error')}"
    outside = sorted(str(p.relative_to(tmp)) for p in tmp.iterdir())
    if outside != ["a", "exp.yaml", "text.txt", "victim"] or canary_only(tmp):
        return f"written outside the work directory: {outside}"
    return None


CASES = [
    # the issue's traceback: a string where a list belongs, and its relatives, each named by its key path
    Case("seeds as a string", experiment('name: t\nseeds: "0, 1, 2"\n' + GRID),
         match="seeds must be a list of integers, got '0, 1, 2' (a string)", check=nothing_written),
    Case("a seed that is a boolean", experiment("name: t\nseeds: [0, yes]\n" + GRID),
         match="seeds[1] must be an integer, got True (a boolean)"),
    Case("a negative seed", experiment("name: t\nseeds: [0, -1]\n" + GRID), match="seeds[1] must be at least 0"),
    Case("a seed listed twice", experiment("name: t\nseeds: [0, 1, 0]\n" + GRID), match="lists 0 more than once"),
    Case("num_samples as a word", experiment("name: t\ncalibration: {num_samples: many}\n" + GRID),
         match="calibration.num_samples must be an integer, got 'many'"),
    Case("datasets as one string", experiment("name: t\ncalibration: {datasets: c4}\n" + GRID),
         match="calibration.datasets must be a list of strings"),
    Case("a limit as a string", experiment("name: t\nstrategies: [random_c4]\nmethods: {rtn4: {method: rtn}}\n"
                                           "evaluation: {tasks: [wikitext2], limits: {wikitext2: '64'}}\n"),
         match="evaluation.limits.wikitext2 must be an integer, got '64'"),
    Case("a method option of the wrong type", experiment(
        "name: t\nstrategies: [random_c4]\nmethods: {w: {method: wanda, sparsity: half}}\n"),
        match="methods.w.sparsity must be a number or null, got 'half'"),
    Case("methods as a list", experiment("name: t\nstrategies: [random_c4]\nmethods: [wanda]\n"),
         match="methods must be a mapping of strings to mappings, got ['wanda'] (a list)"),
    Case("a variant setting of the wrong type", experiment(
        "name: t\nstrategies: [random_c4, v]\nvariants: {v: {strategy: cola, selection.layers: '2'}}\n"
        "methods: {rtn4: {method: rtn}}\n"),
        match="variants.v.selection.layers must be a list of integers or null, got '2'"),
    Case("an unknown generation setting", experiment(
        "name: t\nstrategies: [random_c4, v]\nvariants: {v: {strategy: self_generated, generation: "
        "{temprature: 0.3}}}\nmethods: {rtn4: {method: rtn}}\n"), match="Did you mean 'temperature'"),
    Case("isolate_cells as a string", experiment("name: t\nisolate_cells: 'yes'\n" + GRID),
         match="isolate_cells must be true or false, got 'yes'"),
    Case("trust_remote_code as a string", experiment("name: t\ntrust_remote_code: 'no'\n" + GRID),
         match="trust_remote_code must be true or false"),
    Case("name unquoted off", experiment("name: off\n" + GRID), match="quote it"),
    Case("a YAML list, not a mapping", experiment("- name: t\n"), match="holds a YAML list, not a YAML mapping"),
    Case("a file that is not UTF-8", not_utf8, match="is not UTF-8 text"),
    # labels become folder and file names: every one must be a plain name
    Case("method label traversal", experiment(method_label("../../../../victim")),
         match="method label '../../../../victim' is not a plain name", check=nothing_written),
    Case("method label absolute", experiment(method_label("/tmp/cola-audit-victim")),
         match="is not a plain name", check=nothing_written),
    Case("method label with a separator", experiment(method_label("a/b")), match="'a/b' is not a plain name",
         check=nothing_written),
    Case("method label with a backslash", experiment(method_label("a\\b")), match="is not a plain name"),
    Case("method label ..", experiment(method_label("..")), match="'..' is not a plain name",
         check=nothing_written),
    Case("method label empty", experiment(method_label("")), match="'' is not a plain name"),
    Case("method label with NUL", experiment(method_label("a\x00b")), match="'a\\x00b' is not a plain name"),
    Case("method label with __", experiment(method_label("a__b")), match="without '__'"),
    Case("variant label traversal", experiment(
        "name: t\nstrategies: [random_c4, '../../victim']\nvariants: {'../../victim': {strategy: cola}}\n"
        "methods: {rtn4: {method: rtn}}\n"), match="variant label '../../victim' is not a plain name",
        check=nothing_written),
    Case("name traversal (default work dir)", lambda tmp, fx: experiment("name: ../../../victim\n" + GRID)(
        tmp, fx)[:2], match="`name` '../../../victim' is not a plain name", check=nothing_written),
    Case("labels differing only in case", experiment(
        "name: t\nstrategies: [random_c4]\nmethods: {rtn: {method: rtn}, RTN: {method: rtn, bits: 8}}\n"),
        match="differ only in case"),
    Case("work dir folder linked outside", with_link, match="outside the work directory", check=canary_only),
    # a lock file left by a dead run blocks nothing; a real isolated cell writes only inside the work dir
    Case("stale lock, real tiny grid", tiny_grid, expect="ok", check=tiny_grid_finished, timeout=600),
]

"""Users' data files: structured values, JSON layouts, file readers' own errors, names and one huge record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from audit.case import Case, Fixtures

CHAT = [{"id": i, "messages": [{"role": "system", "content": "You are a terse tutor."},
                               {"role": "user", "content": f"What is {i} plus {i}? Explain briefly."},
                               {"role": "assistant", "content": f"{i} plus {i} is {2 * i}, by adding."}]}
        for i in range(12)]
NESTED = [{"id": i, "meta": {"lang": "en", "body": f"Body {i}. The river ran past the old mill and the town."}}
          for i in range(12)]
PROSE = [{"text": f"Record {i}. The river ran past the old mill and the town below it."} for i in range(12)]


def write(path: Path, content: str | list[dict] | dict, *, lines: bool = True) -> Path:
    """`content` as JSON lines (a list, `lines`), one JSON document (pretty-printed), or text as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif lines and isinstance(content, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in content), encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


def curate(tmp: Path, fx: Fixtures, *datasets: str | Path, extra: tuple[str, ...] = (),
           model: Path | None = None) -> list[str]:
    return ["curate", "--model_name_or_path", str(model or fx.model_dir), "--output_dir", str(tmp / "out"),
            "--datasets", *map(str, datasets), "--num_samples", "4", "--sequence_length", "32", "--no_stage1",
            "--quiet", *extra]


def nothing_written(tmp: Path) -> str | None:
    written = [p.name for p in (tmp / "out").rglob("*") if p.is_file()] if (tmp / "out").exists() else []
    return f"wrote {', '.join(written)} before failing" if written else None


def manifest_says(expect: Callable[[dict], bool], what: str) -> Callable[[Path], str | None]:
    def check(tmp: Path) -> str | None:
        path = tmp / "out" / "manifest.json"
        if not path.is_file():
            return "no manifest.json written"
        return None if expect(json.loads(path.read_text(encoding="utf-8"))) else f"the manifest does not show {what}"
    return check


def samples_say(expect: Callable[[list[str]], bool], what: str) -> Callable[[Path], str | None]:
    def check(tmp: Path) -> str | None:
        path = tmp / "out" / "calibration_samples.json"
        if not path.is_file():
            return "no calibration_samples.json written"
        texts = [s["text"] for s in json.loads(path.read_text(encoding="utf-8"))]
        return None if expect(texts) else f"the samples do not show {what}: {texts!r}"[:300]
    return check


def error(name: str, build: Callable[[Path, Fixtures], list[str]], match: str) -> Case:
    return Case(f"data: {name}", build, match=match, check=nothing_written)


def chat_model(tmp: Path, fx: Fixtures) -> Path:
    """The fixture's tiny model with a chat template, so conversations can be templated."""
    model = tmp / "chat-model"
    shutil.copytree(fx.model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return model


def huge_record(tmp: Path) -> Path:
    """A 16.8 MB single-line record beside small ones."""
    sentence = "The river ran past the old mill and on into the town where people lived. "
    body = sentence * (16_800_000 // len(sentence))
    return write(tmp / "huge.jsonl", [{"text": body}, *PROSE])


def two_list_keys(tmp: Path) -> Path:
    return write(tmp / "splits.json", {"train": PROSE, "test": PROSE[:2]}, lines=False)


CASES = [
    # --- errors: one line naming the file and the first offending row, nothing written
    error("text field holding an object", lambda tmp, fx: curate(
        tmp, fx, f"{write(tmp / 'nested.jsonl', NESTED)}#meta"),
        "nested.jsonl: line 1: field 'meta' holds an object with keys lang, body"),
    error("dotted path that does not exist", lambda tmp, fx: curate(
        tmp, fx, f"{write(tmp / 'nested.jsonl', NESTED)}#meta.bdy"),
        "no field 'meta.bdy': the fields of 'meta' are: lang, body"),
    error("--fields dotted path that does not exist", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "nested.jsonl", NESTED), extra=("--fields", "text=meta.bdy")),
        "no field 'meta.bdy': the fields of 'meta' are: lang, body"),
    error("top-level JSON object with no list of records", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "meta.json", {"version": "1.0", "count": 3, "tags": ["a"]}, lines=False)),
        "meta.json: the top-level JSON object holds no list of records (its keys: version: text; count"),
    error(".json holding one object", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "one.json", {"text": "A single record is not a data set."}, lines=False)),
        "one.json: the top-level JSON object holds no list of records (its keys: text: text)"),
    error("top-level JSON object with two lists of records", lambda tmp, fx: curate(tmp, fx, two_list_keys(tmp)),
          "several top-level keys hold lists of records (train, test): name one as"),
    error("messages row with an unknown role", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "chat.jsonl", [*CHAT[:2], {"messages": [{"role": "bot", "content": "Hi"}]}])),
        "chat.jsonl: line 3: turn 1 of field 'messages' has the unknown role 'bot'"),
    error("messages row with a missing content", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "chat.jsonl", [CHAT[0], {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}])),
        "chat.jsonl: line 2: turn 2 of field 'messages' (assistant) has no 'content'"),
    error("CSV with an unterminated quote", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "quote.csv", 'text\n"Record one. The river ran past the mill.\nRecord two.\n')),
        "quote.csv: malformed CSV at line 2 (unexpected end of data): a quote opened there is never closed"),
    error("text file renamed .parquet", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "notes.parquet", "These are notes, not a parquet file.\n" * 3)),
        "notes.parquet: cannot read it as parquet: Parquet magic bytes not found in footer"),
    error("JSON lines whose text values are integers", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "ints.jsonl", [{"text": i} for i in range(12)])), "ints.jsonl: line 1: field 'text' holds the number 0"),
    error("rows of mixed schemas", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "mixed.jsonl", [*PROSE[:3], {"body": "Another schema.", "id": 4}, *PROSE[3:]])),
        "mixed.jsonl: line 4: the record has none of the fields text (its fields: body, id)"),
    error("plain file named .jsonl.gz", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "prose.jsonl.gz", '{"text": "a"}\n')), "prose.jsonl.gz: cannot read it as JSON: Not a gzipped file"),
    error("the same file named twice", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "sub" / "pool.jsonl", PROSE), f"{tmp}/sub/../sub/pool.jsonl@math"),
        "the same dataset is named twice: pool"),
    # --- inputs that must work
    Case("data: chat dataset without a field is chat-templated", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "chat.jsonl", CHAT), model=chat_model(tmp, fx)), expect="ok",
        check=manifest_says(lambda m: m["sources"][0]["fields"] == ["messages"]
                            and m["stage2"]["sources"][0]["chat_templated"] == 12, "12 chat-templated records")),
    Case("data: chat dataset #messages without a template gives plain turns", lambda tmp, fx: curate(
        tmp, fx, f"{write(tmp / 'chat.jsonl', CHAT)}#messages", extra=("--length", "truncate", "--sequence_length",
                                                                       "256")), expect="ok",
        check=samples_say(lambda texts: all(t.startswith("system: You are a terse tutor.\nuser: What is ")
                                            for t in texts), "plain role: content turns")),
    Case("data: ShareGPT conversations", lambda tmp, fx: curate(tmp, fx, write(tmp / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": f"Question {i}: why does the river run?"},
                           {"from": "gpt", "value": f"Answer {i}: because water flows downhill."}]}
        for i in range(12)])), expect="ok",
        check=manifest_says(lambda m: m["stage2"]["sources"][0]["formatter"] == "chat", "the chat formatter")),
    Case("data: nested field by dotted path", lambda tmp, fx: curate(
        tmp, fx, f"{write(tmp / 'nested.jsonl', NESTED)}#meta.body"), expect="ok",
        check=manifest_says(lambda m: m["sources"][0]["fields"] == ["meta.body"], "the field meta.body")),
    Case("data: --fields text=meta.body", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "nested.jsonl", NESTED), extra=("--fields", "text=meta.body")), expect="ok"),
    Case("data: strings in a mixed-type text column stay text", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "mixed.jsonl", [{"text": '{"name": "demo-package", "private": true}'}, {"text": "true"},
                              {"text": "null"}, {"text": ["a list", "of paragraphs"]}]),
        extra=("--sequence_length", "64", "--length", "truncate", "--min_length", "1")), expect="ok",
        check=samples_say(lambda texts: sorted(texts) == sorted(['{"name": "demo-package", "private": true}', "true",
                                                                 "null", "a list\n\nof paragraphs"]),
                          "the four texts as written")),
    Case("data: CSV cells 007 and 1e3 stay text", lambda tmp, fx: curate(tmp, fx, write(
        tmp / "codes.csv", "question,answer\nWhich agent?,007\nHow many?,1e3\nWhich room?,010\nHow much?,1.50\n"),
        extra=("--sequence_length", "64", "--length", "truncate", "--min_length", "1")), expect="ok",
        check=samples_say(lambda texts: sorted(t.rsplit(": ", 1)[-1] for t in texts) == ["007", "010", "1.50", "1e3"],
                          "the four answers as written")),
    Case("data: pretty-printed JSON object holding a list of records", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "squad.json", {"version": "1.0", "data": PROSE}, lines=False)), expect="ok",
        check=manifest_says(lambda m: m["sources"][0]["records_key"] == "data", "records_key data")),
    Case("data: #train names the records' key", lambda tmp, fx: curate(tmp, fx, f"{two_list_keys(tmp)}#train"),
         expect="ok", check=manifest_says(lambda m: m["sources"][0]["records_seen"] == 12, "12 train records")),
    Case("data: existing path holding @ and #", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "runs#3@home" / "we@ird#name.jsonl", PROSE)), expect="ok"),
    Case("data: files of one name in different folders", lambda tmp, fx: curate(
        tmp, fx, write(tmp / "a" / "train.jsonl", PROSE), write(tmp / "b" / "train.jsonl", PROSE[::-1]),
        write(tmp / "x" / "pool.jsonl", PROSE), write(tmp / "y" / "pool.jsonl", PROSE[1:])), expect="ok",
        check=manifest_says(lambda m: [s["name"] for s in m["sources"]] == ["a/train", "b/train", "x/pool", "y/pool"],
                            "the names a/train, b/train, x/pool, y/pool")),
    Case("data: 16.8 MB single-line record", lambda tmp, fx: curate(tmp, fx, huge_record(tmp)), expect="ok",
         check=manifest_says(lambda m: m["sources"][0]["texts_cut"] == 1, "texts_cut 1"), timeout=240.0),
]

"""The one dataset-schema table: what a file's columns mean, for curation and for evaluation alike.

Each known schema declares
- `signatures`: its column signature, the columns a record must all have to be read as this schema (a few
  schemas have more than one, for releases that spell a field differently);
- `text_fields`: the fields whose values make up a candidate's raw text (`cola.data.sources`);
- `capability`: the capability its records serve, or None when the columns do not say (free text: a label or
  Stage 1 decides);
- `formatter`: the Stage 2 formatter its records are written with (`cola.data.formatters.FORMATTERS`);
- `evaluation`: the `cola evaluate` task kind that reads it (`mc`: multiple choice, `qa`: answer NLL, `ppl`:
  perplexity of its text), or None when evaluate has no reading of it.

One matcher, `schema_for_columns`, serves every reader: the catalog (local files inherit a schema from their
columns), Stage 2's formatter choice, the source loader's fields and capability, and evaluate's item builders.
Tie-break rule: among the schemas one of whose signatures the columns contain, the one with the largest such
signature wins; on a tie, the one listed first in SCHEMAS. Multiple-choice schemas are listed first, since
multiple-choice files often carry an `answer` column beside `question` (LLM-Adapters' parsed files, ARC).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_CAPABILITY = "general"
EVALUATION_KINDS = ("mc", "qa", "ppl")


@dataclass(frozen=True, kw_only=True)
class DatasetSchema:
    """One record layout: the columns that identify it and what cola does with records of it."""

    name: str
    signatures: tuple[frozenset[str], ...]
    text_fields: tuple[str, ...]
    capability: str | None
    formatter: str
    evaluation: str | None
    description: str

    def __post_init__(self) -> None:
        if self.evaluation is not None and self.evaluation not in EVALUATION_KINDS:
            raise ValueError(f"schema {self.name}: evaluation must be one of {EVALUATION_KINDS} or None")


def _schema(name: str, signatures: str, text_fields: str, capability: str | None, formatter: str,
            evaluation: str | None, description: str) -> DatasetSchema:
    """A table row; `signatures` are column names separated by spaces, alternative signatures by `|`."""
    return DatasetSchema(name=name, signatures=tuple(frozenset(s.split()) for s in signatures.split("|")),
                         text_fields=tuple(text_fields.split()), capability=capability, formatter=formatter,
                         evaluation=evaluation, description=description)


SCHEMAS: dict[str, DatasetSchema] = {s.name: s for s in (
    # name, signature, text fields, capability, formatter, evaluation, description
    _schema("commonsense_qa", "question choices answerKey", "question choices", "commonsense", "multiple_choice",
            "mc", "question, choices as {text, label} lists, answerKey (CommonsenseQA, ARC on the hub)"),
    _schema("multiple_choice", "question choices", "question choices", "commonsense", "multiple_choice", "mc",
            "question, a list of choices, a 0-based label (LLM-Adapters' parsed files)"),
    _schema("openbookqa", "question_stem choices answerKey", "question_stem choices", "commonsense",
            "multiple_choice", "mc", "question_stem, choices as {text, label} lists, answerKey (OpenBookQA)"),
    _schema("hellaswag_preprocessed", "query endings", "query endings", "commonsense", "multiple_choice", "mc",
            "query, endings, label (HellaSwag as preprocessed for lm-eval)"),
    _schema("hellaswag", "ctx endings | ctx_a ctx_b endings", "ctx endings", "commonsense", "multiple_choice", "mc",
            "activity_label, ctx_a, ctx_b, ctx, endings, label (HellaSwag's own release)"),
    _schema("piqa", "goal sol1 sol2", "goal sol1 sol2", "commonsense", "multiple_choice", None,
            "goal, sol1, sol2, label (PIQA)"),
    _schema("gsm8k", "question answer", "question answer", "math", "gsm8k", "qa",
            "question, answer with the final number after #### (GSM8K)"),
    _schema("math", "problem solution", "problem solution", "math", "math", "qa",
            "problem, solution with the answer in \\boxed{} (MATH)"),
    _schema("mbpp", "text code", "text code", "code", "mbpp", "qa", "text, code, test_list (MBPP)"),
    _schema("humaneval", "prompt canonical_solution", "prompt canonical_solution", "code", "humaneval", "qa",
            "prompt, canonical_solution, test, entry_point (HumanEval)"),
    _schema("instruction", "instruction output", "instruction input output", "general", "instruction", None,
            "instruction, optional input, output (Alpaca)"),
    _schema("chat", "messages", "messages", "general", "chat", None, "messages: role/content turns (OpenAI style)"),
    _schema("sharegpt", "conversations", "conversations", "general", "chat", None,
            "conversations: from/value turns (ShareGPT)"),
    _schema("text", "text", "text", None, "text", "ppl", "free text (web pages, articles)"),
)}


def schema_for_columns(columns: Iterable[str]) -> DatasetSchema | None:
    """The schema a record (or the fields a user named) with these `columns` is read as, or None.

    A schema matches when `columns` contains one of its signatures whole; the largest matched signature wins,
    and on a tie the schema listed first in SCHEMAS (multiple choice before plain Q&A)."""
    present = set(columns)
    matches = [(len(signature), -position, schema) for position, schema in enumerate(SCHEMAS.values())
               for signature in schema.signatures if signature <= present]
    return max(matches, key=lambda m: m[:2])[2] if matches else None


# Every capability a known schema serves, the default first: `cola datasets` lists a reference set for each.
CAPABILITIES: tuple[str, ...] = tuple(dict.fromkeys(
    [DEFAULT_CAPABILITY, *(s.capability for s in SCHEMAS.values() if s.capability)]))

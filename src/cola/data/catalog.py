"""Known datasets: where each lives on the Hugging Face hub, which fields hold its text, what capability it serves.

The same entries also recognise local copies: a local file whose columns contain an entry's text fields
inherits that entry's fields and capability (a gsm8k jsonl with `question, answer` is math).
"""

from __future__ import annotations

from dataclasses import dataclass

from cola.errors import unknown_choice

CAPABILITIES = ("general", "commonsense", "math", "code")
MULTIPLE_CHOICE_FIELDS = frozenset({"choices", "endings"})


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """One known dataset: hub location, the fields that make up a candidate's text, and its capability."""

    name: str
    hub_id: str
    config: str | None
    split: str
    text_fields: tuple[str, ...]
    capability: str
    description: str
    formatter: str = "text"  # the cola.data.formatters format its records are written in


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry(name="wikitext", hub_id="Salesforce/wikitext", config="wikitext-2-raw-v1", split="train",
                 text_fields=("text",), capability="general", description="Wikipedia articles (WikiText-2 raw)"),
    CatalogEntry(name="c4", hub_id="allenai/c4", config="en", split="train", text_fields=("text",),
                 capability="general", description="Colossal Clean Crawled Corpus, English web text"),
    CatalogEntry(name="slimpajama", hub_id="cerebras/SlimPajama-627B", config=None, split="train",
                 text_fields=("text",), capability="general", description="deduplicated RedPajama mix"),
    CatalogEntry(name="pile", hub_id="monology/pile-uncopyrighted", config=None, split="train",
                 text_fields=("text",), capability="general", description="The Pile without copyrighted parts"),
    CatalogEntry(name="gsm8k", hub_id="openai/gsm8k", config="main", split="train",
                 text_fields=("question", "answer"), capability="math",
                 description="grade-school math word problems with worked solutions", formatter="gsm8k"),
    CatalogEntry(name="math", hub_id="DigitalLearningGmbH/MATH-lighteval", config="default", split="train",
                 text_fields=("problem", "solution"), capability="math",
                 description="competition mathematics (Hendrycks MATH) with solutions", formatter="math"),
    CatalogEntry(name="mbpp", hub_id="google-research-datasets/mbpp", config="full", split="train",
                 text_fields=("text", "code"), capability="code",
                 description="basic Python programming problems with solutions", formatter="mbpp"),
    CatalogEntry(name="humaneval", hub_id="openai/openai_humaneval", config=None, split="test",
                 text_fields=("prompt", "canonical_solution"), capability="code",
                 description="hand-written Python functions with docstrings", formatter="humaneval"),
    CatalogEntry(name="hellaswag", hub_id="Rowan/hellaswag", config=None, split="train",
                 text_fields=("ctx", "endings"), capability="commonsense",
                 description="commonsense sentence completion", formatter="multiple_choice"),
    CatalogEntry(name="arc", hub_id="allenai/ai2_arc", config="ARC-Challenge", split="train",
                 text_fields=("question", "choices"), capability="commonsense",
                 description="grade-school science questions (ARC-Challenge)", formatter="multiple_choice"),
    CatalogEntry(name="arc_easy", hub_id="allenai/ai2_arc", config="ARC-Easy", split="train",
                 text_fields=("question", "choices"), capability="commonsense",
                 description="grade-school science questions (ARC-Easy)", formatter="multiple_choice"),
    CatalogEntry(name="piqa", hub_id="ybisk/piqa", config=None, split="train",
                 text_fields=("goal", "sol1", "sol2"), capability="commonsense",
                 description="physical commonsense reasoning", formatter="multiple_choice"),
    CatalogEntry(name="commonsense_qa", hub_id="tau/commonsense_qa", config=None, split="train",
                 text_fields=("question", "choices"), capability="commonsense",
                 description="multiple-choice commonsense questions", formatter="multiple_choice"),
    CatalogEntry(name="alpaca", hub_id="tatsu-lab/alpaca", config=None, split="train",
                 text_fields=("instruction", "input", "output"), capability="general",
                 description="instruction-following demonstrations", formatter="instruction"),
    # Chat data: a local file with a `messages` (role/content) or `conversations` (from/value) column is read
    # as conversations through these entries, as a file with `question, answer` is read as gsm8k.
    CatalogEntry(name="ultrachat", hub_id="HuggingFaceH4/ultrachat_200k", config=None, split="train_sft",
                 text_fields=("messages",), capability="general",
                 description="multi-turn chats, OpenAI-style messages (role/content)", formatter="chat"),
    CatalogEntry(name="openhermes", hub_id="teknium/OpenHermes-2.5", config=None, split="train",
                 text_fields=("conversations",), capability="general",
                 description="instruction chats, ShareGPT-style conversations (from/value)", formatter="chat"),
)}


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry called `name`; unknown names get close-match suggestions."""
    if name not in CATALOG:
        raise unknown_choice("dataset", name, [*CATALOG, *EMBEDDED_SOURCES])
    return CATALOG[name]


def entry_for_columns(columns: set[str]) -> CatalogEntry | None:
    """The catalog entry whose text fields a local file's columns contain (the most specific one)."""
    matches = [e for e in CATALOG.values() if set(e.text_fields) <= columns and e.text_fields != ("text",)]
    # More matched fields is more specific; on a tie, a multiple-choice schema beats a plain Q&A one
    # (ARC-style files often carry an `answer` column beside `question` and `choices`).
    return max(matches, key=lambda e: (len(e.text_fields), bool(MULTIPLE_CHOICE_FIELDS & set(e.text_fields))),
               default=None)


# The embedded offline pool: `embedded` is all of it, `embedded-<capability>` one part.
EMBEDDED_SOURCES = ("embedded", "embedded-general", "embedded-math", "embedded-code")

"""Known datasets on the Hugging Face hub: where each lives and which schema (`cola.data.schemas`) its records have.

A hub dataset named here takes its text fields, capability and Stage 2 formatter from its schema. Local files
are recognised by their columns through the same schema table (`schema_for_columns`): a gsm8k jsonl with
`question, answer` is math, as the hub's gsm8k is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cola.data.schemas import CAPABILITIES, SCHEMAS, DatasetSchema
from cola.errors import unknown_choice

__all__ = ["CAPABILITIES", "CATALOG", "CATALOG_REFERENCES", "EMBEDDED_SOURCES", "CatalogEntry", "catalog_entry",
           "reference_capabilities"]


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """One known hub dataset: its location and the schema of its records. `capability` is given only for
    free-text corpora (whose schema says none: web text is general); every other entry takes its schema's."""

    name: str
    hub_id: str
    config: str | None
    split: str
    schema: DatasetSchema
    description: str
    capability: str | None = None

    def __post_init__(self) -> None:
        if self.capability is None:
            object.__setattr__(self, "capability", self.schema.capability)
        elif self.schema.capability not in (None, self.capability):
            raise ValueError(f"catalog entry {self.name}: capability {self.capability!r}, but its schema "
                             f"{self.schema.name} says {self.schema.capability!r}")

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The fields whose values make up a candidate's text (the schema's)."""
        return self.schema.text_fields

    @property
    def formatter(self) -> str:
        """The cola.data.formatters format its records are written in (the schema's)."""
        return self.schema.formatter


def _entry(name: str, hub_id: str, config: str | None, split: str, schema: str, description: str,
           capability: str | None = None) -> CatalogEntry:
    return CatalogEntry(name=name, hub_id=hub_id, config=config, split=split, schema=SCHEMAS[schema],
                        description=description, capability=capability)


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    _entry("wikitext", "Salesforce/wikitext", "wikitext-2-raw-v1", "train", "text",
           "Wikipedia articles (WikiText-2 raw)", "general"),
    _entry("c4", "allenai/c4", "en", "train", "text", "Colossal Clean Crawled Corpus, English web text", "general"),
    _entry("slimpajama", "cerebras/SlimPajama-627B", None, "train", "text", "deduplicated RedPajama mix", "general"),
    _entry("pile", "monology/pile-uncopyrighted", None, "train", "text", "The Pile without copyrighted parts",
           "general"),
    _entry("gsm8k", "openai/gsm8k", "main", "train", "gsm8k", "grade-school math word problems with worked solutions"),
    _entry("math", "DigitalLearningGmbH/MATH-lighteval", "default", "train", "math",
           "competition mathematics (Hendrycks MATH) with solutions"),
    _entry("mbpp", "google-research-datasets/mbpp", "full", "train", "mbpp",
           "basic Python programming problems with solutions"),
    _entry("humaneval", "openai/openai_humaneval", None, "test", "humaneval",
           "hand-written Python functions with docstrings"),
    _entry("hellaswag", "Rowan/hellaswag", None, "train", "hellaswag", "commonsense sentence completion"),
    _entry("arc", "allenai/ai2_arc", "ARC-Challenge", "train", "commonsense_qa",
           "grade-school science questions (ARC-Challenge)"),
    _entry("arc_easy", "allenai/ai2_arc", "ARC-Easy", "train", "commonsense_qa",
           "grade-school science questions (ARC-Easy)"),
    _entry("piqa", "ybisk/piqa", None, "train", "piqa", "physical commonsense reasoning"),
    _entry("commonsense_qa", "tau/commonsense_qa", None, "train", "commonsense_qa",
           "multiple-choice commonsense questions"),
    _entry("alpaca", "tatsu-lab/alpaca", None, "train", "instruction", "instruction-following demonstrations"),
    # Chat data: a local file with a `messages` (role/content) or `conversations` (from/value) column is read
    # as conversations through the same schemas, as a file with `question, answer` is read as gsm8k.
    _entry("ultrachat", "HuggingFaceH4/ultrachat_200k", None, "train_sft", "chat",
           "multi-turn chats, OpenAI-style messages (role/content)"),
    _entry("openhermes", "teknium/OpenHermes-2.5", None, "train", "sharegpt",
           "instruction chats, ShareGPT-style conversations (from/value)"),
)}


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry called `name`; unknown names get close-match suggestions."""
    if name not in CATALOG:
        raise unknown_choice("dataset", name, [*CATALOG, *EMBEDDED_SOURCES])
    return CATALOG[name]


# The embedded offline pool: `embedded` is all of it, `embedded-<capability>` one part.
EMBEDDED_SOURCES = ("embedded", "embedded-general", "embedded-math", "embedded-code")

# The catalog dataset that probes each capability in Stage 1 where neither --reference nor the embedded pool
# (`cola.stages.mixture.default_reference`, offline first) gives one.
CATALOG_REFERENCES = {"general": "wikitext", "math": "gsm8k", "code": "mbpp", "commonsense": "commonsense_qa"}


def reference_capabilities(given: Iterable[str] = ()) -> list[str]:
    """The capabilities Stage 1 has a reference set for, sorted: the built-in ones (every embedded pool part has
    a catalog twin) and `given`, those named in --reference CAPABILITY=PATH."""
    return sorted({*CATALOG_REFERENCES, *given})

"""Text to the token ids a model reads, with exactly one BOS where the model's format has one.

Three things can put a BOS (beginning-of-sequence token) in front of a text, and left alone they stack:
the tokenizer's post-processor (Llama-2 and -3, Mistral and Gemma add one to every input), a chat template
that writes `{{ bos_token }}` itself (Llama-3's, Gemma's and Mistral's do), and the packer, which gives a
window starting inside a document a BOS of its own. A Llama-3 record rendered by its template and then
tokenized with the tokenizer's special tokens starts `[bos, bos, ...]`. Every place that turns text into
model input (Stage 2's documents, and with them the perplexity filter; Stage 1's reference probes and the
no-Stage-2 cut; reasoning prompts; self-generation prompts) goes through `encode_texts`, whose rule is:

- the text is tokenized WITHOUT the tokenizer's special tokens, so what the text itself holds (a
  template's BOS) is there once;
- when the tokenizer adds a BOS to its inputs (`model_bos_id`), the ids start with exactly one: it is
  put in front unless the text's own first token is that BOS;
- a tokenizer that adds none (SmolLM2, GPT-2, Qwen2) gets none added; a template's own BOS is kept.

Token ids that are already ids (packed windows, self-generated sequences) are never re-tokenized.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from cola.errors import ColaError

_SENTINEL = "\x00cola-bos\x00"  # stands in for bos_token while a template renders, to see whether it writes one


def model_bos_id(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front of every input (Llama-2/3, Mistral, Gemma), else None.

    Read off the tokenizer's own output, not its settings: SmolLM2 names `<|im_start|>` as BOS but never
    adds it, and a post-processor can add one that no `add_bos_token` flag mentions.
    """
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None


def template_writes_bos(tokenizer: Any) -> bool:
    """Whether the chat template starts its rendering with `{{ bos_token }}` (Llama-3, Gemma, Mistral).

    The template is rendered with a stand-in for bos_token, so a template that writes a BOS-named token
    literally (SmolLM2's `<|im_start|>` opens every turn and is also its bos_token) is not mistaken for one.
    """
    from jinja2 import TemplateError

    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False,
                                             bos_token=_SENTINEL)
    except TemplateError:
        return False
    return isinstance(text, str) and text.startswith(_SENTINEL)


def encode_texts(tokenizer: Any, texts: Sequence[str], *, bos_id: int | None, offsets: bool = False,
                 batch_size: int = 256) -> Iterator[tuple[str, list[int], list[tuple[int, int]] | None]]:
    """(text, token ids, character offsets) per text, tokenized in batches by the rule of this module.

    `bos_id` is `model_bos_id(tokenizer)` (None: no BOS is added). With `offsets`, each token's
    (start, end) character span in the text comes too, (0, 0) for a BOS put in front; slow tokenizers
    have none, and give None.
    """
    fast = offsets and bool(tokenizer.is_fast)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=fast, verbose=False)
        spans = enc["offset_mapping"] if fast else [None] * len(chunk)
        for text, ids, span in zip(chunk, enc["input_ids"], spans):
            ids = list(ids)
            span = None if span is None else [tuple(s) for s in span]
            if bos_id is not None and ids[:1] != [bos_id]:
                ids = [bos_id, *ids]
                span = None if span is None else [(0, 0), *span]
            yield text, ids, span


def check_room_after_bos(sequence_length: int, bos_id: int | None) -> None:
    """Raise ColaError when samples of `sequence_length` tokens would hold nothing but the model's BOS."""
    if bos_id is not None and sequence_length < 2:
        raise ColaError(f"sequence_length {sequence_length} leaves no room for text after the BOS token this "
                        "model's tokenizer starts every input with: use a --sequence_length of at least 2")


def encode(tokenizer: Any, texts: Sequence[str], *, bos_id: int | None) -> list[list[int]]:
    """The token ids of each text as the model reads it (see `encode_texts`)."""
    return [ids for _, ids, _ in encode_texts(tokenizer, texts, bos_id=bos_id)]

"""Stage 2 (processing). For now only the length step: each text is cut to at most `sequence_length` tokens.

Packing short documents to exactly `sequence_length`, the Q&A/reasoning format and quality filters are
not implemented yet; the README says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, eq=False)
class TokenizedText:
    """A candidate after processing: the text that was kept and exactly its token ids."""

    text: str
    input_ids: np.ndarray  # (T,) int32: a tenth of the memory of a tuple of Python ints, for large pools


def truncate_to_length(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], sequence_length: int,
                       batch_size: int = 256) -> list[TokenizedText]:
    """Tokenize each text and keep its first `sequence_length` tokens; the text is cut at the same place.

    The kept text ends at the last kept token's character offset, so `text` and `input_ids` describe the
    same content (re-tokenizing the text gives the same ids up to tokenizer boundary effects).
    """
    out: list[TokenizedText] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        if tokenizer.is_fast:
            enc = tokenizer(chunk, truncation=True, max_length=sequence_length, return_offsets_mapping=True)
            for text, ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
                end = max((e for _, e in offsets), default=0)
                out.append(TokenizedText(text=text[:end], input_ids=np.asarray(ids, dtype=np.int32)))
        else:  # slow tokenizers have no offsets: decode the kept ids instead
            enc = tokenizer(chunk, truncation=True, max_length=sequence_length)
            for ids in enc["input_ids"]:
                out.append(TokenizedText(text=tokenizer.decode(ids, skip_special_tokens=True),
                                         input_ids=np.asarray(ids, dtype=np.int32)))
    return out

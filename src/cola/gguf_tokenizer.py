"""A fast tokenizer rebuilt from a GGUF file's own SentencePiece-BPE vocabulary (Gemma 2/3).

transformers' GGUF loader turns a Gemma vocabulary into a *Unigram* model scored by the BPE merge ranks the
file stores, which segments text into single characters ("The" -> T, h, e), adds no BOS although the file
asks for one, and knows only five special tokens, so `<start_of_turn>` becomes 15 pieces. llama.cpp, the
reference reader of these files, runs SentencePiece BPE: repeatedly merge the adjacent pair whose
concatenation is a vocabulary piece with the highest score, after splitting the text on the control and
user-defined tokens (`<start_of_turn>`, runs of newlines, spaces and tabs, HTML tags). This module builds that
tokenizer as a `tokenizers` BPE model: merges ranked by the merged piece's score, byte fallback, the control
tokens special and the user-defined ones plain but atomic, a BOS post-processor when the file says so.

GGUF token types (gguf.TokenType): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "▁"  # SentencePiece's visible space (U+2581)

# Gemma 3's chat template (from the instruction-tuned checkpoints' tokenizer_config.json; Gemma terms apply):
# a system turn is folded into the first user turn, the assistant's role is called "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    "{%- set role = \"model\" -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{'<start_of_turn>model\n'}}"
    "{%- endif -%}"
)
GEMMA_END_OF_TURN = "<end_of_turn>"  # what an instruction-tuned Gemma emits to end its answer


@dataclass(frozen=True)
class GGUFVocab:
    """A GGUF file's `tokenizer.ggml.*` fields: pieces, scores and types share one index (the token id)."""

    tokens: Sequence[str]
    scores: Sequence[float]
    types: Sequence[int]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """The tokenizer fields of the GGUF file at `path` (read with the `gguf` package; tensors are not loaded)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key: str) -> Any:
        field = fields.get(f"tokenizer.ggml.{key}") or fields.get(f"tokenizer.{key}")
        return None if field is None else field.contents()

    return GGUFVocab(tokens=value("tokens"), scores=value("scores"), types=value("token_type"),
                     bos_id=value("bos_token_id"), eos_id=value("eos_token_id"), unk_id=value("unknown_token_id"),
                     pad_id=value("padding_token_id"), add_bos=bool(value("add_bos_token")),
                     add_eos=bool(value("add_eos_token")), chat_template=value("chat_template"))


def bpe_merges(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """SentencePiece-BPE merges recovered from the vocabulary: every split (left, right) of a normal piece into
    two normal pieces, ranked by the merged piece's score, highest first (ties: the lower token id first).

    Applying them in rank order is SentencePiece's (and llama.cpp's) rule of merging the pair whose
    concatenation scores highest. O(total characters of the vocabulary).
    """
    normal = {piece for piece, kind in zip(tokens, types) if kind == NORMAL}
    ranked: list[tuple[float, int, str, str]] = []
    for token_id, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, token_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def sentencepiece_bpe_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """A `tokenizers.Tokenizer` that segments text as llama.cpp does for this SentencePiece-BPE vocabulary.

    Spaces become `▁` (no prefix space: Gemma's files set add_space_prefix false), characters outside the
    vocabulary fall back to `<0xNN>` byte pieces, control tokens are special (skipped when decoding), and
    user-defined tokens match atomically in the raw text. Raises ValueError when the vocabulary is empty or its
    three lists differ in length.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    if not vocab.tokens or not len(vocab.tokens) == len(vocab.scores) == len(vocab.types):
        raise ValueError(f"a GGUF vocabulary needs as many scores and types as tokens (tokens "
                         f"{len(vocab.tokens)}, scores {len(vocab.scores)}, types {len(vocab.types)})")
    ids = {piece: token_id for token_id, piece in enumerate(vocab.tokens)}
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    model = BPE(vocab=ids, merges=bpe_merges(vocab.tokens, vocab.scores, vocab.types), unk_token=unk,
                fuse_unk=True, byte_fallback=BYTE in vocab.types)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_tokens([AddedToken(piece, normalized=False, special=False)
                          for piece, kind in zip(vocab.tokens, vocab.types) if kind == USER_DEFINED])
    tokenizer.add_special_tokens([AddedToken(piece, normalized=False, special=True)
                                  for piece, kind in zip(vocab.tokens, vocab.types) if kind in (CONTROL, UNKNOWN)])
    single, special = ["$A"], []
    if vocab.add_bos and vocab.bos_id is not None:
        single = [vocab.tokens[vocab.bos_id], *single]
        special.append((vocab.tokens[vocab.bos_id], vocab.bos_id))
    if vocab.add_eos and vocab.eos_id is not None:
        single = [*single, vocab.tokens[vocab.eos_id]]
        special.append((vocab.tokens[vocab.eos_id], vocab.eos_id))
    pair = [*single, *(f"{part}:1" if part != "$A" else "$B:1" for part in single)]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return tokenizer


def transformers_tokenizer(vocab: GGUFVocab, *, chat_template: str | None = None) -> Any:
    """The rebuilt tokenizer wrapped for transformers, with the file's BOS/EOS/UNK/PAD and a chat template
    (the file's own, else `chat_template`). Saved with save_pretrained, it loads back through AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    def name(token_id: int | None) -> str | None:
        return vocab.tokens[token_id] if token_id is not None and 0 <= token_id < len(vocab.tokens) else None

    return PreTrainedTokenizerFast(tokenizer_object=sentencepiece_bpe_tokenizer(vocab),
                                   bos_token=name(vocab.bos_id), eos_token=name(vocab.eos_id),
                                   unk_token=name(vocab.unk_id), pad_token=name(vocab.pad_id),
                                   add_bos_token=vocab.add_bos, add_eos_token=vocab.add_eos,
                                   chat_template=vocab.chat_template or chat_template)

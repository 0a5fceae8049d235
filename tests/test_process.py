"""Stage 2's chat rendering of Q&A records: the template's default system prompt kept or left out."""

from __future__ import annotations

import pytest

from cola.config import ProcessConfig
from cola.data.formatters import Formatted
from cola.errors import ColaError
from cola.stages.process import chat_renderer

from .conftest import byte_tokenizer

DEFAULT_SYSTEM = "<s>system\nYou are a helpful assistant</e>\n"
# SmolLM2's and Qwen2.5's pattern: a default system turn when the conversation has none
INSERTS_DEFAULT = ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '" + DEFAULT_SYSTEM.replace("\n", "\\n") + "' }}{% endif %}"
                   "{{ '<s>' + m['role'] + '\\n' + m['content'] + '</e>\\n' }}{% endfor %}")
REFUSES_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
RECORD = Formatted(text="unused", question="What is 2+3?", reasoning="2+3=5.", answer="5")
EXCHANGE = "<s>user\nWhat is 2+3?</e>\n<s>assistant\n2+3=5.\n\nAnswer: 5</e>\n"


def _tokenizer(template: str):
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_default_system_prompt_is_kept_or_left_out():
    tokenizer = _tokenizer(INSERTS_DEFAULT)
    assert chat_renderer(tokenizer)(RECORD) == DEFAULT_SYSTEM + EXCHANGE
    assert chat_renderer(tokenizer, "none")(RECORD) == EXCHANGE


def test_template_without_a_default_renders_the_same_either_way():
    tokenizer = _tokenizer("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</e>\n{% endfor %}")
    assert chat_renderer(tokenizer, "none")(RECORD) == chat_renderer(tokenizer)(RECORD) == EXCHANGE


def test_template_that_refuses_a_system_turn_keeps_its_rendering():
    tokenizer = _tokenizer(REFUSES_SYSTEM)
    assert chat_renderer(tokenizer, "none")(RECORD) == "<user>What is 2+3?<assistant>2+3=5.\n\nAnswer: 5"


def test_unknown_system_prompt_mode_lists_the_choices():
    with pytest.raises(ColaError, match="unknown system prompt mode 'off'. Valid choices: none, template"):
        ProcessConfig(system_prompt="off")

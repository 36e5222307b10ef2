"""Prompts and completions as token ids: rendered one way for every side that holds a tokenizer.

The worker samples from, the validator re-scores and the trainer trains on the same ids, so a prompt
is rendered once, here: the model's own chat template with the assistant turn opened, tokenized
without added special tokens (the template already holds any BOS: adding it again would shift the
model). A completion's text is its ids decoded without the stop token that ended it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ml.errors import NoChatTemplate


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate("the tokenizer has no chat_template; Flywheel prompts are chat messages")
    rendered = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
    )
    return str(rendered)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    return encode_text(tokenizer, render_prompt(tokenizer, messages))


def decode_completion(tokenizer: Any, token_ids: Sequence[int], stops: set[int] | frozenset[int]) -> str:
    """The completion's text: its ids decoded without the stop token that ended it, with every NUL
    (U+0000, a byte-level token a model may emit) as U+FFFD. No database stores NUL in text; the ids
    keep the exact output, and every side decodes with this one rule."""
    body = list(token_ids[:-1] if token_ids and token_ids[-1] in stops else token_ids)
    return str(tokenizer.decode(body, skip_special_tokens=True)).replace("\x00", "\ufffd")

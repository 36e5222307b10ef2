"""Prompt rendering shared by the engines that hold a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.budget import BudgetTokens
from shared.protocol import BudgetForcing, ChatMessage
from worker.errors import EngineError


def render_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """The model's own chat template with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError("the tokenizer has no chat_template; Flywheel prompts are chat messages")
    rendered = tokenizer.apply_chat_template(
        [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
    )
    return str(rendered)


def prompt_token_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    # The template already contains any BOS/special tokens; adding them again would shift the model.
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """EOS ids from the generation config (int or list) and the tokenizer."""
    ids: set[int] = set()
    sources = (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None))
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids


def decode_completion(tokenizer: Any, token_ids: Sequence[int], stops: set[int]) -> str:
    body = list(token_ids[:-1] if token_ids and token_ids[-1] in stops else token_ids)
    return str(tokenizer.decode(body, skip_special_tokens=True))


class BudgetTokenizer:
    """A budget's strings as the tokenizer encodes each alone (no special tokens added), cached:
    every job of a campaign carries the same budget."""

    def __init__(self, tokenizer: Any, stops: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self._cache: dict[BudgetForcing, BudgetTokens] = {}

    def __call__(self, budget: BudgetForcing) -> BudgetTokens:
        tokens = self._cache.get(budget)
        if tokens is None:
            try:
                tokens = BudgetTokens.encode(budget, self._encode, self.stops)
            except ValueError as exc:
                raise EngineError(f"budget forcing: {exc}") from exc
            self._cache[budget] = tokens
        return tokens

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

"""Prompts for the engines that hold a tokenizer: ml/prompts.py's rendering, with the worker's errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ml import prompts
from shared.budget import BudgetTokens
from shared.protocol import BudgetForcing, ChatMessage
from worker.errors import EngineError


def render_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    """The model's own chat template with the assistant turn opened."""
    try:
        return prompts.render_prompt(tokenizer, [m.model_dump() for m in messages])
    except prompts.NoChatTemplate as exc:
        raise EngineError(str(exc)) from exc


def prompt_token_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    return prompts.encode_text(tokenizer, render_prompt(tokenizer, messages))


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
        return prompts.encode_text(self.tokenizer, text)

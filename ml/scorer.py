"""Models for validation: a loaded model with the prefill re-scoring needs, kept per process.

A validation task re-runs one prefill with the model a trace claims; loading it costs seconds to
minutes, so every model a process has loaded stays in `_LOADED` for the life of the process. The
prompt is rendered exactly as the worker renders it: both go through ml/prompts.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import prompts
from ml.devices import pick_device
from ml.errors import DeviceUnavailable, ModelUnavailable
from ml.loading import load_model, load_tokenizer, stop_token_ids
from shared.assets import ModelSource, resolve_model
from shared.budget import BudgetTokens
from shared.protocol import BudgetForcing, ChatMessage

MAX_PREFILL_TOKENS = 16_384  # tokens (rows x padded length) in one validation forward pass


@dataclass
class Scorer:
    """A loaded model with what re-scoring needs around it."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    stops: frozenset[int]
    context: int
    vocab: int  # rows of the input embedding: a token id must lie in [0, vocab)
    _budgets: dict[BudgetForcing, BudgetTokens] = field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    def prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        return prompts.prompt_ids(self.tokenizer, [m.model_dump() for m in messages])

    def decode(self, tokens: Sequence[int]) -> str:
        """The completion's text as the worker reports it: without the stop token that ended it."""
        return prompts.decode_completion(self.tokenizer, tokens, self.stops)

    def budget_tokens(self, budget: BudgetForcing) -> BudgetTokens:
        tokens = self._budgets.get(budget)
        if tokens is None:
            tokens = self._budgets[budget] = BudgetTokens.encode(budget, self._encode, self.stops)
        return tokens

    def _encode(self, text: str) -> list[int]:
        return prompts.encode_text(self.tokenizer, text)

    def completion_logits(self, prompts: Sequence[list[int]], completions: Sequence[list[int]]) -> list[Any]:
        """Per pair, the logits that predict each completion token: one right-padded prefill per
        group of pairs that fits MAX_PREFILL_TOKENS."""
        out: list[Any] = [None] * len(prompts)
        for group in _groups([len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]):
            rows = self._prefill([prompts[i] for i in group], [completions[i] for i in group])
            for i, row in zip(group, rows, strict=True):
                out[i] = row
        return out

    def _prefill(self, prompts: list[list[int]], completions: list[list[int]]) -> list[Any]:
        import torch

        lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        width = max(lengths)
        ids = torch.zeros((len(lengths), width), dtype=torch.long)
        mask = torch.zeros((len(lengths), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            ids[row, : lengths[row]] = torch.tensor(prompt + completion, dtype=torch.long)
            mask[row, : lengths[row]] = 1
        first = min(len(p) for p in prompts) - 1  # the earliest row that predicts a completion token
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                logits_to_keep=torch.arange(first, width, device=self.device),
            ).logits
        return [
            logits[row, len(p) - 1 - first : len(p) - 1 - first + len(c)]
            for row, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]


def _groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices in length order, cut so that rows x longest stays within MAX_PREFILL_TOKENS:
    similar lengths share a batch, so little of it is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > MAX_PREFILL_TOKENS:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


_LOADED: dict[tuple[str, str | None, str, str], Scorer] = {}
_LOCK = threading.Lock()


def scorer(
    name: str,
    revision: str | None,
    device: str,
    dtype: str,
    weights: Path | None = None,
    base: str | None = None,
) -> Scorer:
    """The process-wide scorer for this model, loaded on first use.

    `base` and `weights` describe a model published as an artifact (a checkpoint or an RL policy
    version, named `flywheel-artifact/<sha256>`): the base model's config and tokenizer with the
    artifact's safetensors file laid over its weights. Names are content hashes, so the cache key
    stays the name."""
    key = (name, revision, device, dtype)
    with _LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = _LOADED[key] = _load(name, revision, device, dtype, weights, base)
        return loaded


def _load(
    name: str, revision: str | None, device: str, dtype: str, weights: Path | None, base: str | None
) -> Scorer:
    source = ModelSource(base or resolve_model(name), weights, revision)
    try:
        chosen = pick_device(device)
        tokenizer = load_tokenizer(source)
        model = load_model(source, chosen, dtype)
    except (OSError, ValueError, DeviceUnavailable) as exc:
        raise ModelUnavailable(f"cannot load {name!r} for validation: {exc}") from exc
    generation = getattr(model, "generation_config", None)
    return Scorer(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=chosen,
        stops=frozenset(stop_token_ids(tokenizer, generation)),
        context=int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30),
        vocab=int(model.get_input_embeddings().num_embeddings),
    )


def wait_for(logits: Sequence[Any]) -> None:
    """Block until the device has computed `logits` (on CUDA kernels run asynchronously)."""
    if logits and getattr(logits[0], "is_cuda", False):
        import torch

        torch.cuda.synchronize(logits[0].device)

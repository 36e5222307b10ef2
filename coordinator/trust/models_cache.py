"""Models for validation: loaded once per validation process and kept.

A validation task re-runs one prefill with the model a trace claims; loading it costs seconds to
minutes, so every model a process has loaded stays in `_LOADED` for the life of the process. The
prompt is rendered exactly as the worker renders it (worker/engines/prompt.py: the tokenizer's
chat template with the assistant turn opened, tokenized without added special tokens).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.pipeline.ops.modeling import load_weights
from shared.assets import resolve_model
from shared.budget import BudgetTokens
from shared.protocol import BudgetForcing, ChatMessage

MAX_PREFILL_TOKENS = 16_384  # tokens (rows x padded length) in one validation forward pass


class ModelUnavailable(Exception):
    """The validation process cannot load the claimed model (missing, no memory, bad revision)."""


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
        rendered = self.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
        )
        return self._encode(str(rendered))

    def decode(self, tokens: Sequence[int]) -> str:
        """The completion's text as the worker reports it: without the stop token that ended it."""
        body = list(tokens[:-1] if tokens and tokens[-1] in self.stops else tokens)
        return str(self.tokenizer.decode(body, skip_special_tokens=True))

    def budget_tokens(self, budget: BudgetForcing) -> BudgetTokens:
        tokens = self._budgets.get(budget)
        if tokens is None:
            tokens = self._budgets[budget] = BudgetTokens.encode(budget, self._encode, self.stops)
        return tokens

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    path = base or resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=getattr(torch, dtype))
        if weights is not None:
            load_weights(model, weights)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load {name!r} for validation: {exc}") from exc
    model = model.to(chosen).eval()  # type: ignore[arg-type]
    generation = getattr(model, "generation_config", None)
    return Scorer(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=chosen,
        stops=frozenset(_stop_ids(tokenizer, generation)),
        context=int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30),
        vocab=int(model.get_input_embeddings().num_embeddings),
    )


def _stop_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    """EOS ids from the generation config (int or list) and the tokenizer, as the worker takes them."""
    ids: set[int] = set()
    for source in (
        getattr(generation_config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids


# --------------------------------------------------------------------------- vocabulary, without torch

_VOCAB: dict[tuple[str, str | None], int] = {}


def vocab_size(name: str, revision: str | None = None) -> int | None:
    """The vocabulary size of a model from its config.json where this machine holds it (a bundled
    model, a local folder, or the Hugging Face cache), or None: read without torch, so the API
    process can bound token ids at submission. Found sizes are kept for the life of the process;
    a model not found is looked up again next time (it may be downloaded meanwhile)."""
    key = (name, revision)
    found = _VOCAB.get(key)
    if found is None:
        found = _read_vocab(_local_config(resolve_model(name), revision))
        if found is not None:
            _VOCAB[key] = found
    return found


def _local_config(path: str, revision: str | None) -> Path | None:
    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # a coordinator installed without the model libraries
        return None
    try:
        cached = try_to_load_from_cache(path, "config.json", revision=revision)
    except ValueError:  # not a repository id (a path that does not exist here)
        return None
    return Path(cached) if isinstance(cached, str) else None


def _read_vocab(config: Path | None) -> int | None:
    """`vocab_size` of a config (or of its text model's, for a multimodal config)."""
    if config is None:
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for part in (data, data.get("text_config") or {}):
        value = part.get("vocab_size") if isinstance(part, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None

"""Tokenized training examples, their padded batches, and per-token losses.

Prompts are rendered exactly as workers render them (ml/prompts.py), so what is trained on is
what is sampled from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml.prompts import encode_text, prompt_ids

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Example:
    """One chat prompt and its completion, tokenized as the student sees them."""

    prompt_ids: list[int]
    completion_ids: list[int]  # the completion's tokens followed by the end-of-turn token


def end_of_turn_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token: a completion could never end")
    return int(eos)


def encode(tokenizer: Any, messages: Sequence[dict[str, str]], completion: str) -> Example:
    """`messages` are the turns before the answer (the prompt); `completion` the assistant's text."""
    answer = encode_text(tokenizer, completion)
    return Example(prompt_ids(tokenizer, messages), [*answer, end_of_turn_id(tokenizer)])


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The turns of a dataset record before its final assistant answer."""
    messages = list(record["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def pad_batch(
    examples: Sequence[Example],
    pad_id: int,
    max_length: int,
    masks: Sequence[Sequence[int] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 outside the completion and
    where a loss mask says 0. Rows longer than `max_length` lose their end."""
    import torch

    rows = [(e.prompt_ids + e.completion_ids)[:max_length] for e in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (example, row) in enumerate(zip(examples, rows, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        start = len(example.prompt_ids)
        for k, token in enumerate(example.completion_ids):
            keep = masks is None or masks[i] is None or masks[i][k]  # type: ignore[index]
            if start + k < len(row) and keep:
                labels[i, start + k] = token
    return ids, attention, labels


def token_losses(
    model: Any, examples: Sequence[Example], pad_id: int, batch_size: int, max_length: int = 4096
) -> list[list[float]]:
    """Per-token negative log-likelihood of each completion (teacher forcing), in nats."""
    import torch

    device = next(model.parameters()).device
    out: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            ids, attention, labels = pad_batch(chunk, pad_id, max_length)
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            nll = _shifted_nll(logits, labels.to(device))
            for i, example in enumerate(chunk):
                begin = len(example.prompt_ids) - 1
                n = min(len(example.completion_ids), ids.shape[1] - len(example.prompt_ids))
                out.append([float(v) for v in nll[i, begin : begin + n].tolist()])
    return out


def _shifted_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """nll[:, t] is the loss of predicting token t+1 from position t (0 where the label is ignored)."""
    import torch

    targets = labels[:, 1:]
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets >= 0, -picked, torch.zeros_like(picked))


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token loss over labelled positions, and how many there were."""
    import torch

    targets = labels[:, 1:]
    count = int((targets >= 0).sum())
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return loss / max(1, count), count

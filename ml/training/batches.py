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


def _labels(example: Example, length: int, mask: Sequence[int] | None) -> list[int]:
    """Labels of one row of `length` tokens: the completion's tokens the mask keeps, else -100."""
    labels = [-100] * length
    start = len(example.prompt_ids)
    for k, token in enumerate(example.completion_ids):
        if start + k < length and (mask is None or mask[k]):
            labels[start + k] = token
    return labels


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), one row per sequence."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        attention[i, : len(sequence)] = 1
    return ids, attention


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
    ids, attention = pad_sequences(rows, pad_id)
    labels = torch.full(ids.shape, -100, dtype=torch.long)
    for i, (example, row) in enumerate(zip(examples, rows, strict=True)):
        labels[i, : len(row)] = torch.tensor(_labels(example, len(row), masks[i] if masks else None))
    return ids, attention, labels


def _bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped so each group's lengths sum to at most `capacity`."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            bins.append([])
            room.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= lengths[i]
    return bins


@dataclass(frozen=True)
class Packed:
    """Sequences laid end to end in rows: what the model is given, and where each sequence went."""

    ids: torch.Tensor
    positions: torch.Tensor
    starts: list[tuple[int, int]]  # (row, column) of each sequence's first token, in the order given


def pack_sequences(sequences: Sequence[Sequence[int]], pad_id: int, capacity: int) -> Packed:
    """Sequences laid end to end (first-fit decreasing) in rows of at most `capacity` tokens; a
    longer sequence has a row of its own. Positions restart at 0 with each sequence, which is how
    the model (given no attention mask and no cache) tells them apart: each attends only to itself,
    as if alone in its row. Only a row's tail is padding, as a sequence of its own."""
    import torch

    packed = _bins([len(s) for s in sequences], capacity)
    width = max(sum(len(sequences[i]) for i in row) for row in packed)
    ids = torch.full((len(packed), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(packed), width), dtype=torch.long)
    starts = [(0, 0)] * len(sequences)
    for r, members in enumerate(packed):
        at = 0
        for i in members:
            n = len(sequences[i])
            ids[r, at : at + n] = torch.tensor(sequences[i])
            positions[r, at : at + n] = torch.arange(n)
            starts[i] = (r, at)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return Packed(ids, positions, starts)


def pack_batch(
    examples: Sequence[Example],
    pad_id: int,
    max_length: int,
    masks: Sequence[Sequence[int] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The examples packed (`pack_sequences`) in rows of at most `max_length` tokens: (input_ids,
    position_ids, labels). Rows longer than `max_length` lose their end; padding has no labels."""
    import torch

    rows = [(e.prompt_ids + e.completion_ids)[:max_length] for e in examples]
    packed = pack_sequences(rows, pad_id, max_length)
    labels = torch.full(packed.ids.shape, -100, dtype=torch.long)
    for i, (r, at) in enumerate(packed.starts):
        n = len(rows[i])
        # A sequence's first label would be predicted from the one before it: never a target.
        labels[r, at + 1 : at + n] = torch.tensor(
            _labels(examples[i], n, masks[i] if masks else None)[1:], dtype=torch.long
        )
    return packed.ids, packed.positions, labels


def model_inputs(
    ids: torch.Tensor, device: Any, attention: torch.Tensor | None, positions: torch.Tensor | None
) -> dict[str, Any]:
    """The model's keyword arguments for padded rows (an attention mask) or packed ones (position
    ids). No cache: with one, the model would not look for packing."""
    if positions is not None:
        return {"input_ids": ids.to(device), "position_ids": positions.to(device), "use_cache": False}
    assert attention is not None
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "use_cache": False}


@dataclass(frozen=True)
class LmBatch:
    """One forward pass's rows: padded (with an attention mask) or packed (with position ids)."""

    ids: torch.Tensor
    labels: torch.Tensor
    attention: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def targets(self) -> int:
        """How many tokens carry a loss."""
        return int((self.labels[:, 1:] >= 0).sum())

    def inputs(self, device: Any) -> dict[str, Any]:
        return model_inputs(self.ids, device, self.attention, self.positions)


def lm_batch(
    examples: Sequence[Example],
    pad_id: int,
    max_length: int,
    masks: Sequence[Sequence[int] | None] | None = None,
    *,
    packed: bool,
) -> LmBatch:
    if packed:
        ids, positions, labels = pack_batch(examples, pad_id, max_length, masks)
        return LmBatch(ids, labels, positions=positions)
    ids, attention, labels = pad_batch(examples, pad_id, max_length, masks)
    return LmBatch(ids, labels, attention=attention)


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

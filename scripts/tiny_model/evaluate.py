"""Generate answers the way workers do and score them with the boxed-integer check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from coordinator.problems.sources.arithmetic import ArithmeticProblem
from scripts.tiny_model.solutions import boxed_int
from scripts.tiny_model.tokenizer import render_prompt

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

MAX_NEW_TOKENS = 128


@dataclass
class Score:
    """Accuracy over a problem set, overall and per operator."""

    total: int = 0
    correct: int = 0
    boxed: int = 0
    by_op: dict[str, list[int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def add(self, op: str, answer: int | None, gold: int) -> None:
        self.total += 1
        self.boxed += answer is not None
        self.correct += answer == gold
        tally = self.by_op.setdefault(op, [0, 0])
        tally[0] += answer == gold
        tally[1] += 1

    def per_op(self) -> str:
        return ", ".join(f"`{op}` {c}/{n}" for op, (c, n) in sorted(self.by_op.items()))


def generate(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    sample: bool,
    batch_size: int,
    seed: int = 0,
) -> list[str]:
    """Completions for ``questions``; sampling is plain temperature 1.0 with no top-p or top-k cut."""
    import torch

    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    texts: list[str] = []
    # Forked RNG: sampling must neither depend on nor disturb the training stream.
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(questions), batch_size):
            chunk = [render_prompt(tokenizer, q) for q in questions[start : start + batch_size]]
            texts.extend(_generate_batch(model, tokenizer, chunk, sample, device))
    return texts


def _generate_batch(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sample: bool,
    device: torch.device,
) -> list[str]:
    from transformers import GenerationConfig

    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **ids)
    if sample:
        config = GenerationConfig(
            max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, **ids
        )
    # transformers types `generate` through a decorator mypy cannot bind to a model; the call is sound.
    output = cast(Any, model).generate(**encoded, generation_config=config)
    new_tokens = output[:, encoded["input_ids"].shape[1] :]
    return list(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))


def score(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[ArithmeticProblem],
    *,
    sample: bool,
    batch_size: int,
    seed: int = 0,
) -> Score:
    texts = generate(
        model, tokenizer, [p.prompt for p in problems], sample=sample, batch_size=batch_size, seed=seed
    )
    result = Score()
    for problem, text in zip(problems, texts, strict=True):
        result.add(problem.op, boxed_int(text), problem.answer)
    return result

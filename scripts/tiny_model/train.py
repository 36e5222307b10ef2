"""Supervised training of a small Qwen2 model on worked arithmetic solutions."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coordinator.problems.sources.arithmetic import ArithmeticProblem
from scripts.tiny_model.solutions import worked_solution
from scripts.tiny_model.tokenizer import IM_END, MAX_LENGTH, render_prompt

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

IGNORE = -100


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


PRESETS = {
    "tiny": ModelSize(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=384),
    "teacher": ModelSize(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536),
}


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    eval_every: int
    stop_at: float  # stop once mean(greedy, sampled) validation accuracy reaches this; 0 disables
    max_minutes: float
    seed: int


@dataclass
class EvalPoint:
    step: int
    loss: float
    greedy: float
    sampled: float


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    curve: list[EvalPoint] = field(default_factory=list)


@dataclass
class TokenizedSet:
    """Right-padded token rows; labels mask the prompt and the padding out of the loss."""

    tokens: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor


def build_model(
    size: ModelSize, tokenizer: PreTrainedTokenizerBase, seed: int, device: torch.device
) -> Qwen2ForCausalLM:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Rounding the vocabulary up leaves room for tokens a later fine-tune may add.
    vocab = 64 * math.ceil(len(tokenizer) / 64)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=MAX_LENGTH,
        # Untied: some transformers releases save only the input embedding of a tied pair, and a model
        # built outside `from_pretrained` may not be tied in memory, so the saved head could differ.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with device:
        return Qwen2ForCausalLM(config)


def tokenize(tokenizer: PreTrainedTokenizerBase, problems: Sequence[ArithmeticProblem]) -> TokenizedSet:
    import numpy as np
    import torch

    prompts = [render_prompt(tokenizer, p.prompt) for p in problems]
    answers = [worked_solution(p.a, p.op, p.b) + IM_END for p in problems]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    prompt_lengths = np.array([len(ids) for ids in prompt_ids])
    lengths = prompt_lengths + np.array([len(ids) for ids in answer_ids])
    flat = np.fromiter(
        itertools.chain.from_iterable(
            itertools.chain(*pair) for pair in zip(prompt_ids, answer_ids, strict=True)
        ),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    # Row-major boolean assignment lays the flat stream out row by row, left-aligned.
    columns = np.arange(int(lengths.max()))
    filled = columns < lengths[:, None]
    tokens = np.full(filled.shape, tokenizer.pad_token_id, dtype=np.int64)
    tokens[filled] = flat
    labels = np.where(filled & (columns >= prompt_lengths[:, None]), tokens, IGNORE)
    return TokenizedSet(
        tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels), lengths=torch.from_numpy(lengths)
    )


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _optimizer(model: Qwen2ForCausalLM, config: TrainConfig) -> torch.optim.Optimizer:
    import torch

    # Norm gains and biases are not decayed: shrinking them only fights the normalisation.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def _batches(
    data: TokenizedSet, config: TrainConfig, device: torch.device
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    import torch

    # The whole set lives on the device; only the row indices travel each step.
    tokens, labels = data.tokens.to(device), data.labels.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    order: list[torch.Tensor] = []

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        # Epochs walk a fresh seeded permutation, so every problem is seen once per epoch.
        if not order or order[0].numel() < config.batch_size:
            order[:] = [torch.randperm(len(data.lengths), generator=generator)]
        index, order[0] = order[0][: config.batch_size], order[0][config.batch_size :]
        width = int(data.lengths[index].max())
        rows = index.to(device)
        return tokens[rows, :width], labels[rows, :width]

    return next_batch


Evaluator = Callable[["Qwen2ForCausalLM"], tuple[float, float]]


def train(
    model: Qwen2ForCausalLM, data: TokenizedSet, config: TrainConfig, evaluate: Evaluator
) -> TrainResult:
    """Train until ``config.steps``, the validation target, or the wall-clock guard, whichever first."""
    import torch

    device = next(model.parameters()).device
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    next_batch = _batches(data, config, device)
    result, started = TrainResult(), time.monotonic()
    running = torch.zeros((), device=device)
    for step in range(1, config.steps + 1):
        model.train()
        tokens, labels = next_batch()
        loss = model(input_ids=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        # A smoothed loss kept on the device: reading it every step would stall the GPU queue.
        running = 0.9 * running + 0.1 * loss.detach() if step > 1 else loss.detach()
        result.steps, result.seconds = step, time.monotonic() - started
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            greedy, sampled = evaluate(model)
            result.curve.append(EvalPoint(step, float(running), greedy, sampled))
            print(
                f"step {step:6d}  loss {float(running):.4f}  val greedy {greedy:.3f}  sampled {sampled:.3f}"
                f"  lr {scheduler.get_last_lr()[0]:.2e}  {result.seconds:7.1f}s",
                flush=True,
            )
            if config.stop_at and (greedy + sampled) / 2 >= config.stop_at:
                result.stop_reason = f"validation accuracy reached {config.stop_at:.2f}"
                break
        if result.seconds > config.max_minutes * 60:
            result.stop_reason = f"wall-clock guard of {config.max_minutes:g} min"
            break
    model.eval()
    result.stop_reason = result.stop_reason or "step budget"
    return result

"""Supervised fine-tuning (distillation) of a student on a selected dataset: full, LoRA or DoRA.

The loss covers only completion tokens, and of those only the ones a dataset's `loss_mask` keeps.
Training is resumable: every `checkpoint_every` steps the trainable weights, the optimizer and the
curve so far go to `workdir/resume.pt`, and the batch order is a pure function of (seed, epoch),
so a resumed run takes exactly the batches the lost one would have. Adapters are merged into the
base weights at the end, so what is served is one plain checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.devices import autocast, pick_device, pick_precision
from ml.loading import load_model, load_tokenizer, save_weights
from ml.training import batches
from ml.training.batches import Example
from shared.assets import ModelSource
from shared.pipeline_types import SftSpec

Progress = Callable[[float, str, dict[str, Any]], None]
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SftResult:
    weights: Path
    adapter: Path | None
    adapter_config: dict[str, Any] | None
    curve: dict[str, list[list[float]]]
    metrics: dict[str, Any]


@dataclass
class _Data:
    train: list[Example]
    train_masks: list[list[int] | None]
    eval: list[Example]
    eval_masks: list[list[int] | None]
    pad_id: int
    precision: str  # a picked one: float32 or bf16-mixed
    micro_batch: int  # rows per forward pass: the spec's, halved while a step runs out of GPU memory


@dataclass
class _State:
    step: int = 0
    curve: dict[str, list[list[float]]] = field(default_factory=lambda: {"train": [], "eval": []})
    tokens: int = 0
    seconds: float = 0.0


def _encode_rows(
    tokenizer: Any, rows: Sequence[dict[str, Any]]
) -> tuple[list[Example], list[list[int] | None]]:
    examples, masks = [], []
    for row in rows:
        example = batches.encode(tokenizer, batches.prompt_messages(row), str(row["completion"]))
        mask = row.get("loss_mask")
        if mask is not None and len(mask) != len(example.completion_ids):
            raise ValueError(
                f"row {row.get('id')}: loss mask has {len(mask)} entries for {len(example.completion_ids)} "
                "completion tokens (made with another tokenizer?)"
            )
        examples.append(example)
        masks.append(mask)
    return examples, masks


def _split(tokenizer: Any, rows: Sequence[dict[str, Any]], spec: SftSpec, precision: str) -> _Data:
    import random

    examples, masks = _encode_rows(tokenizer, rows)
    order = list(range(len(examples)))
    random.Random(spec.seed).shuffle(order)
    # Too few rows for a meaningful held-out loss: train on all of them.
    n_eval = int(spec.eval_fraction * len(order)) if len(order) >= 20 else 0
    held, kept = order[:n_eval], order[n_eval:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else batches.end_of_turn_id(tokenizer)
    return _Data(
        train=[examples[i] for i in kept],
        train_masks=[masks[i] for i in kept],
        eval=[examples[i] for i in held],
        eval_masks=[masks[i] for i in held],
        pad_id=int(pad),
        precision=precision,
        micro_batch=spec.micro_batch or spec.batch_size,
    )


def _wrap(model: Any, spec: SftSpec) -> Any:
    if spec.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules or LINEAR_LAYERS),
        use_dora=spec.method == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    import random

    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _batch_rows(step: int, n: int, spec: SftSpec) -> list[int]:
    """Row indices of optimizer step `step` (0-based): epochs walk a seeded permutation."""
    per_epoch = max(1, math.ceil(n / spec.batch_size))
    epoch, offset = divmod(step, per_epoch)
    return _order(n, spec.seed, epoch)[offset * spec.batch_size : (offset + 1) * spec.batch_size]


def total_steps(n_train: int, spec: SftSpec) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    return max(1, math.ceil(spec.epochs * n_train / spec.batch_size))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _micro_batches(
    examples: Sequence[Example], masks: Sequence[list[int] | None], data: _Data, spec: SftSpec
) -> list[batches.LmBatch]:
    micro = data.micro_batch
    return [
        batches.lm_batch(
            examples[start : start + micro],
            data.pad_id,
            spec.max_length,
            masks[start : start + micro],
            packed=spec.packing,
        )
        for start in range(0, len(examples), micro)
    ]


def _summed_loss(model: Any, batch: batches.LmBatch, precision: str) -> Any:
    device = next(model.parameters()).device
    with autocast(precision, device.type):
        logits = model(**batch.inputs(device)).logits
    mean, count = batches.masked_lm_loss(logits, batch.labels.to(device))
    return mean * count


def _accumulate(model: Any, rows: list[int], data: _Data, spec: SftSpec) -> tuple[float, int]:
    """The batch's gradients, summed over its micro-batches: (mean token loss, labelled tokens)."""
    parts = _micro_batches([data.train[i] for i in rows], [data.train_masks[i] for i in rows], data, spec)
    total_tokens = sum(b.targets for b in parts)
    loss_total = 0.0
    for batch in parts:
        summed = _summed_loss(model, batch, data.precision)
        # Dividing every micro-batch by the batch's token count makes the sum of gradients the
        # gradient of the batch's mean token loss, whatever the micro-batch split.
        (summed / max(1, total_tokens)).backward()
        loss_total += float(summed.detach())
    return loss_total / max(1, total_tokens), total_tokens


def _train_step(model: Any, optimizer: Any, rows: list[int], data: _Data, spec: SftSpec) -> tuple[float, int]:
    """One optimizer step. A batch that runs out of GPU memory is tried again in micro-batches of
    half the rows (same gradient), down to one row; the smaller size is kept for later steps."""
    import torch

    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            loss, tokens = _accumulate(model, rows, data, spec)
            break
        except torch.OutOfMemoryError:
            if data.micro_batch == 1:
                raise
        _shrink(data)  # outside the handler, whose traceback still holds the failed pass's tensors
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return loss, tokens


def _shrink(data: _Data) -> None:
    import gc

    import torch

    data.micro_batch = max(1, data.micro_batch // 2)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_loss(model: Any, data: _Data, spec: SftSpec) -> float | None:
    import torch

    if not data.eval:
        return None
    total, count = 0.0, 0
    # no_grad, not inference_mode: under FSDP2 the gathered-parameter buffers outlive the pass,
    # and inference tensors among them would fail the next training step's in-place gather.
    with torch.no_grad():
        for batch in _micro_batches(data.eval, data.eval_masks, data, spec):
            total, count = total + float(_summed_loss(model, batch, data.precision)), count + batch.targets
    return total / max(1, count)


def _snapshot(model: Any, optimizer: Any, state: _State, path: Path) -> None:
    import torch

    trainable = {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": state.step,
            "curve": state.curve,
            "tokens": state.tokens,
            "seconds": state.seconds,
            "weights": trainable,
            "optimizer": optimizer.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a crash mid-write leaves the previous snapshot whole


def _restore(model: Any, optimizer: Any, path: Path) -> _State:
    import torch

    if not path.is_file():
        return _State()
    # Tensors and plain types only: a resume file that holds any other object is refused unread.
    saved = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved["weights"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    return _State(step=saved["step"], curve=saved["curve"], tokens=saved["tokens"], seconds=saved["seconds"])


def _optimizer(model: Any, spec: SftSpec) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))


@dataclass(frozen=True)
class Steps:
    """What the loop calls to take an optimizer step and to keep and restore its resumable
    snapshot (`workdir / resume`): one process's; ml/training/distributed.py swaps in sharded ones."""

    step: Callable[[Any, Any, list[int], _Data, SftSpec], tuple[float, int]] = _train_step
    snapshot: Callable[[Any, Any, _State, Path], None] = _snapshot
    restore: Callable[[Any, Any, Path], _State] = _restore
    resume: str = "resume.pt"


def _loop(
    model: Any,
    optimizer: Any,
    data: _Data,
    spec: SftSpec,
    workdir: Path,
    progress: Progress,
    steps: Steps = Steps(),
) -> _State:
    state = steps.restore(model, optimizer, workdir / steps.resume)
    total = total_steps(len(data.train), spec)
    if state.step == 0 and data.eval:
        model.eval()
        state.curve["eval"].append([0, evaluate_loss(model, data, spec) or 0.0])
    while state.step < total:
        started = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * _lr_factor(state.step, total, spec.warmup_steps)
        model.train()
        loss, tokens = steps.step(
            model, optimizer, _batch_rows(state.step, len(data.train), spec), data, spec
        )
        state.step += 1
        state.tokens += tokens
        state.seconds += time.monotonic() - started
        state.curve["train"].append([state.step, loss])
        if state.step % spec.eval_every == 0 or state.step == total:
            model.eval()
            held = evaluate_loss(model, data, spec)
            if held is not None:
                state.curve["eval"].append([state.step, held])
        progress(state.step / total, f"step {state.step}/{total}", {"train_loss": loss, "step": state.step})
        if state.step % spec.checkpoint_every == 0 and state.step < total:
            steps.snapshot(model, optimizer, state, workdir / steps.resume)
    return state


def train(
    rows: Sequence[dict[str, Any]], source: ModelSource, spec: SftSpec, workdir: Path, progress: Progress
) -> SftResult:
    import torch

    if not rows:
        raise ValueError("the dataset has no rows")
    if spec.nproc > 1:
        raise ValueError("nproc > 1 runs under ml.training.finetune.train (several processes)")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    device = pick_device(spec.device)
    tokenizer = load_tokenizer(source)
    data = _split(tokenizer, rows, spec, pick_precision(spec.precision, device))
    # float32 master weights in every precision: bf16-mixed casts per operation, not the weights.
    base = load_model(source, device, "float32", trainable=True)
    if spec.gradient_checkpointing:
        _checkpoint_activations(base)
    model = _wrap(base, spec)
    optimizer = _optimizer(model, spec)
    state = _loop(model, optimizer, data, spec, workdir, progress)
    model.eval()
    return _finish(model, spec, workdir, state, data)


def _checkpoint_activations(model: Any) -> None:
    """Recompute each layer's activations in the backward pass. Non-reentrant, so it recomputes
    correctly under adapters too, whose frozen inputs need no gradient."""
    options = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # the newer transformers' name
    if enable is not None:
        enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def _finish(model: Any, spec: SftSpec, workdir: Path, state: _State, data: _Data) -> SftResult:
    adapter, adapter_config = None, None
    if spec.method != "full":
        model.save_pretrained(str(workdir / "adapter"))
        adapter = workdir / "adapter" / "adapter_model.safetensors"
        adapter_config = model.peft_config["default"].to_dict()
        model = model.merge_and_unload()
    weights = save_weights(model, workdir / "model.safetensors")
    trainable = sum(p.numel() for p in model.parameters())
    metrics = {
        "steps": state.step,
        "train_rows": len(data.train),
        "eval_rows": len(data.eval),
        "train_tokens": state.tokens,
        "seconds": round(state.seconds, 3),
        "final_train_loss": state.curve["train"][-1][1] if state.curve["train"] else None,
        "final_eval_loss": state.curve["eval"][-1][1] if state.curve["eval"] else None,
        "initial_eval_loss": state.curve["eval"][0][1] if state.curve["eval"] else None,
        "parameters": trainable,
        "method": spec.method,
        "precision": data.precision,
        "packing": spec.packing,
        "micro_batch": data.micro_batch,
    }
    return SftResult(weights, adapter, _jsonable(adapter_config), state.curve, metrics)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return (
            [_jsonable(v) for v in sorted(value, key=str)]
            if isinstance(value, set)
            else [_jsonable(v) for v in value]
        )
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)

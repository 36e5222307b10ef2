"""GRPO from volunteer rollouts: the clipped policy-gradient step.

Rewards are the verifiers' scores, stored by the coordinator, never a worker's claim; the
coordinator normalises them within each group into advantages (coordinator/pipeline/rl.py) and a
group whose rewards are all equal has zero advantage everywhere and is skipped. The importance ratio uses the
per-token logprobs the worker reported for the policy version it sampled from, so rollouts of an
older version (within the staleness bound) still give an unbiased, clipped update. Those logprobs
are a worker's claim too: a ratio is capped (dual clip), and an on-policy rollout whose claimed
logprobs stray from the trainer's own beyond `max_logprob_gap` is dropped. Between versions the
optimizer's moments live in `optimizer-v<k>.pt` in the run's work folder (`train_version`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.devices import autocast, pick_device, pick_precision
from ml.loading import load_model, save_weights
from ml.training import batches
from shared.assets import ModelSource
from shared.pipeline_types import GrpoSpec
from shared.protocol import SamplingParams


@dataclass(frozen=True)
class Rollout:
    group_id: str
    policy_version: int
    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]
    reward: float
    passed: bool
    advantage: float = 0.0


@dataclass
class _Batch:
    ids: Any
    attention: Any  # padded rows' mask; None when packed
    position_ids: Any  # packed rows' positions, restarting with each rollout; None when padded
    at: Any  # [N, 2] (row, column) of the logits that predict each completion token
    tokens: Any  # [N]
    old: Any  # [N]
    advantages: Any  # [N]
    owner: Any  # [N] index of the rollout each token belongs to

    def inputs(self, device: Any) -> dict[str, Any]:
        return batches.model_inputs(self.ids, device, self.attention, self.position_ids)


def _layout(rows: Sequence[list[int]], pad_id: int, pack_length: int | None) -> tuple[Any, ...]:
    """(ids, attention, position ids, where each row's first token went): padded, one rollout a row,
    or packed as SFT packs (ml.training.batches) in rows of `pack_length` tokens."""
    if pack_length is None:
        ids, attention = batches.pad_sequences(rows, pad_id)
        return ids, attention, None, [(i, 0) for i in range(len(rows))]
    packed = batches.pack_sequences(rows, pad_id, pack_length)
    return packed.ids, None, packed.positions, packed.starts


def _collate(rollouts: Sequence[Rollout], pad_id: int, pack_length: int | None = None) -> _Batch:
    """The rollouts as one forward pass's rows, padded or (given `pack_length`) packed; the
    per-token tables (token, claimed logprob, advantage, owner) are in rollout order either way."""
    import torch

    if any(not r.prompt_ids for r in rollouts):
        raise ValueError("a rollout without prompt tokens: its first token has nothing to be predicted from")
    rows = [r.prompt_ids + r.completion_ids for r in rollouts]
    ids, attention, position_ids, starts = _layout(rows, pad_id, pack_length)
    at, tokens, old, adv, owner = [], [], [], [], []
    for i, (rollout, (row, first)) in enumerate(zip(rollouts, starts, strict=True)):
        start = first + len(rollout.prompt_ids)
        for k, token in enumerate(rollout.completion_ids):
            at.append((row, start + k - 1))
            tokens.append(token)
            old.append(rollout.old_logprobs[k])
            adv.append(rollout.advantage)
            owner.append(i)
    return _Batch(
        ids,
        attention,
        position_ids,
        torch.tensor(at, dtype=torch.long),
        torch.tensor(tokens, dtype=torch.long),
        torch.tensor(old, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        torch.tensor(owner, dtype=torch.long),
    )


def _batch(rollouts: Sequence[Rollout], spec: GrpoSpec, pad_id: int) -> _Batch:
    return _collate(rollouts, pad_id, spec.pack_length if spec.packing else None)


def token_logprobs(model: Any, batch: _Batch, sampling: SamplingParams, precision: str = "float32") -> Any:
    """log p(token) under the sampler's distribution (temperature, top-k/top-p), float64, per token.
    `precision` (a picked one: ml.devices.pick_precision) is the forward pass's; the sampler's
    arithmetic on the logits is float64 in every precision."""
    import torch

    from shared.sampling import filtered_logprobs

    device = next(model.parameters()).device
    with autocast(precision, device.type):
        logits = model(**batch.inputs(device)).logits
    rows = logits[batch.at[:, 0].to(device), batch.at[:, 1].to(device)].float()
    logprobs = filtered_logprobs(torch, rows, [sampling] * rows.shape[0])
    return logprobs.gather(-1, batch.tokens.to(device)[:, None])[:, 0]


def _precision(model: Any, spec: GrpoSpec) -> str:
    return pick_precision(spec.precision, next(model.parameters()).device.type)


def _chunks(rollouts: Sequence[Rollout], size: int) -> list[Sequence[Rollout]]:
    return [rollouts[i : i + size] for i in range(0, len(rollouts), size)]


def minibatches(rollouts: Sequence[Rollout], count: int) -> list[Sequence[Rollout]]:
    """`count` contiguous parts of nearly equal size (fewer when there are fewer rollouts), so a
    group's rollouts mostly share a minibatch and every rollout is in exactly one."""
    count = max(1, min(count, len(rollouts)))
    size, extra = divmod(len(rollouts), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [rollouts[bounds[i] : bounds[i + 1]] for i in range(count)]


@dataclass
class _Scored:
    rollouts: list[Rollout]
    kl: float
    gap: float
    dropped: int


def _rollout_gaps(batch: _Batch, current: Any, n: int) -> list[float]:
    import torch

    diff = (current.cpu() - batch.old).abs()
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, batch.owner, diff)
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, batch.owner, torch.ones_like(diff))
    return (sums / counts.clamp(min=1)).tolist()


def _prescore(
    policy: Any, reference: Any, rollouts: Sequence[Rollout], spec: GrpoSpec, pad_id: int, version: int
) -> _Scored:
    """Before the update: drop on-policy rollouts whose claimed logprobs are implausible; the KL of
    the policy to the reference; the reference logprobs the loss needs."""
    import torch

    kept: list[Rollout] = []
    gaps: list[float] = []
    kl_sum, kl_n, dropped = 0.0, 0, 0
    with torch.inference_mode():
        for chunk in _chunks(rollouts, spec.micro_batch):
            batch = _batch(chunk, spec, pad_id)
            current = token_logprobs(policy, batch, spec.sampling, _precision(policy, spec))
            ref = token_logprobs(reference, batch, spec.sampling, _precision(reference, spec))
            log_ratio = ref - current
            kl_sum += float((log_ratio.exp() - log_ratio - 1).sum())
            kl_n += int(current.numel())
            for rollout, gap in zip(chunk, _rollout_gaps(batch, current, len(chunk)), strict=True):
                if rollout.policy_version == version and gap > spec.max_logprob_gap:
                    dropped += 1
                    continue
                gaps.append(gap)
                kept.append(rollout)
    return _Scored(kept, kl_sum / max(1, kl_n), statistics.fmean(gaps) if gaps else 0.0, dropped)


def _reference_per_chunk(
    reference: Any, chunks: Sequence[Sequence[Rollout]], spec: GrpoSpec, pad_id: int
) -> list[Any]:
    """Reference logprobs (float64, on the device) per micro-batch; None each without a KL term."""
    import torch

    if spec.kl_coef == 0.0:
        return [None for _ in chunks]
    with torch.inference_mode():
        return [
            token_logprobs(reference, _batch(c, spec, pad_id), spec.sampling, _precision(reference, spec))
            for c in chunks
        ]


def _objective(new: Any, batch: _Batch, ref: Any, spec: GrpoSpec) -> tuple[Any, Any]:
    """Per-token objective to maximise, and which tokens were clipped."""
    import torch

    device = new.device
    old, adv = batch.old.to(device), batch.advantages.to(device)
    ratio = torch.exp(new - old)
    clipped = torch.clamp(ratio, 1 - spec.clip_eps, 1 + spec.clip_eps)
    objective = torch.minimum(ratio * adv, clipped * adv)
    # Dual clip: with a negative advantage a huge ratio would otherwise weigh without bound.
    objective = torch.where(adv < 0, torch.maximum(objective, spec.ratio_cap * adv), objective)
    if ref is not None:
        log_ratio = ref.detach() - new
        objective = objective - spec.kl_coef * (log_ratio.exp() - log_ratio - 1)
    return objective, (ratio - clipped).abs() > 0


@dataclass
class _Minibatch:
    chunks: list[Sequence[Rollout]]  # its micro-batches
    reference: list[Any]  # reference logprobs per micro-batch (None without a KL term)
    tokens: int


def _plan(reference: Any, rollouts: Sequence[Rollout], spec: GrpoSpec, pad_id: int) -> list[_Minibatch]:
    plan = []
    for part in minibatches(rollouts, spec.updates_per_version):
        chunks = _chunks(part, spec.micro_batch)
        tokens = sum(len(r.completion_ids) for r in part)
        plan.append(_Minibatch(chunks, _reference_per_chunk(reference, chunks, spec, pad_id), tokens))
    return plan


def _update(
    policy: Any, optimizer: Any, minibatch: _Minibatch, spec: GrpoSpec, pad_id: int
) -> tuple[float, int, float]:
    """One optimizer step on one minibatch: (loss, clipped tokens, gradient norm before clipping)."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    total, clipped = 0.0, 0
    for chunk, ref in zip(minibatch.chunks, minibatch.reference, strict=True):
        batch = _batch(chunk, spec, pad_id)
        objective, was_clipped = _objective(
            token_logprobs(policy, batch, spec.sampling, _precision(policy, spec)), batch, ref, spec
        )
        loss = -objective.sum() / minibatch.tokens  # token mean over the whole minibatch
        loss.backward()
        total += float(loss.detach())
        clipped += int(was_clipped.sum())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0))
    optimizer.step()
    return total, clipped, grad_norm


def step(
    policy: Any,
    reference: Any,
    optimizer: Any,
    rollouts: Sequence[Rollout],
    spec: GrpoSpec,
    pad_id: int,
    version: int,
) -> dict[str, Any]:
    """One policy update over rollouts with their advantages: `epochs_per_step` passes, each one
    optimizer step per minibatch (`updates_per_version` of them)."""
    scored = _prescore(policy, reference, rollouts, spec, pad_id, version)
    metrics: dict[str, Any] = {
        "kl": scored.kl,
        "logprob_gap": scored.gap,
        "dropped_logprob": scored.dropped,
        "rollouts_trained": len(scored.rollouts),
    }
    if not scored.rollouts:
        return metrics
    plan = _plan(reference, scored.rollouts, spec, pad_id)
    tokens = sum(m.tokens for m in plan)
    policy.train()
    for _ in range(spec.epochs_per_step):
        weighted, clipped = 0.0, 0
        for minibatch in plan:
            loss, clipped_here, metrics["grad_norm"] = _update(policy, optimizer, minibatch, spec, pad_id)
            weighted += loss * minibatch.tokens
            clipped += clipped_here
        # Of the last pass: the token-mean loss and the share of clipped tokens over the whole batch.
        metrics["loss"], metrics["clip_fraction"] = weighted / max(1, tokens), clipped / max(1, tokens)
    policy.eval()
    metrics["tokens"] = tokens
    metrics["optimizer_steps"] = spec.epochs_per_step * len(plan)
    metrics["precision"] = _precision(policy, spec)
    metrics["packing"] = spec.packing
    return metrics


def train_version(
    base: str,
    weights: tuple[Path, Path],
    rollouts: Sequence[Rollout],
    spec: GrpoSpec,
    pad_id: int,
    version: int,
    workdir: Path,
    out: Path,
) -> dict[str, Any]:
    """From policy `version` to the next: the policy and the reference (`weights`: their files,
    over `base`) loaded, the optimizer's moments restored from `workdir`, one `step`, then the new
    weights saved to `out` and the moments beside them. Returns the step's metrics."""
    import torch

    device = pick_device(spec.device)
    policy = load_model(ModelSource(base, weights[0]), device, "float32", trainable=True)
    reference = load_model(ModelSource(base, weights[1]), device, "float32")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
    _restore_optimizer(optimizer, workdir, version)
    torch.manual_seed(spec.seed + version)
    metrics = step(policy, reference, optimizer, rollouts, spec, pad_id, version)
    _save_optimizer(optimizer, workdir, version + 1)
    save_weights(policy, out)
    return metrics


def _save_optimizer(optimizer: Any, folder: Path, version: int) -> None:
    import torch

    path = folder / f"optimizer-v{version}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(optimizer.state_dict(), tmp)
    os.replace(tmp, path)
    for old in folder.glob("optimizer-v*.pt"):
        if old != path and int(old.stem.removeprefix("optimizer-v")) < version - 1:
            old.unlink(missing_ok=True)


def _restore_optimizer(optimizer: Any, folder: Path, version: int) -> None:
    """The moments the update to `version` left; fresh ones for version 0 (or if the file is lost)."""
    import torch

    path = folder / f"optimizer-v{version}.pt"
    if path.is_file():
        # An optimiser state is tensors and plain types: any other pickled object is refused unread.
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

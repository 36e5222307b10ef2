"""Selection steps over verified traces, composed into a pipeline with a manifest of what was kept
and why.

Every step sees only the candidates the steps before it kept, records the value it judged by in
`Candidate.values`, and names itself in `Candidate.dropped` for the ones it drops. Steps that need
the outside world (verdict tables, models, the verifier, embeddings) get it through `Context`, so
this module holds no database or HTTP code.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.training.batches import Example
from shared.assets import ModelSource
from shared.pipeline_types import (
    Diversity,
    LengthPrune,
    PassRate,
    RewardVariance,
    StudentLoss,
    TokenMask,
)


@dataclass
class Candidate:
    record: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    dropped: str | None = None
    loss_mask: list[int] | None = None
    source_completion: str = ""  # the completion as the sources stored it, before any step edited it

    def __post_init__(self) -> None:
        self.source_completion = self.source_completion or str(self.record.get("completion", ""))

    @property
    def problem(self) -> str:
        return str(self.record["problem_id"])

    @property
    def edited(self) -> bool:
        return str(self.record.get("completion", "")) != self.source_completion


@dataclass
class ScoredModel:
    """A loaded model and what scoring needs beside it."""

    model: Any
    tokenizer: Any
    pad_id: int
    encode: Callable[[dict[str, Any]], Example]
    losses: Callable[[Sequence[Example], int], list[list[float]]]


@dataclass
class Context:
    """What steps need from outside: verdicts of campaigns, models, the verifier, embeddings."""

    scores: Callable[
        [Sequence[str]], list[tuple[str, float, bool]]
    ]  # campaign ids -> (problem, score, passed)
    scorer: Callable[[str, str], ScoredModel]  # (model name, device) -> loaded model
    verify: Callable[[dict[str, Any], str], bool]  # (record, new completion) -> still passes?
    embed: Callable[[list[str], int, str], Any]  # (texts, batch size, device) -> [n, d] array
    source_campaigns: list[str]
    progress: Callable[[float, str], None] = lambda fraction, stage: None
    workdir: Path | None = None  # where refinement steps keep finished work, so a resumed job skips it


@dataclass
class StepReport:
    op: str
    params: dict[str, Any]
    considered: int
    kept: int


def drop(candidate: Candidate, index: int, op: str, reason: str) -> None:
    candidate.dropped = f"step {index} ({op}): {reason}"


# --------------------------------------------------------------------------- problem-level filters


def _rates(rows: Iterable[tuple[str, float, bool]]) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = defaultdict(list)
    for problem, score, _ in rows:
        scores[problem].append(score)
    return scores


def pass_rate(cands: list[Candidate], step: PassRate, index: int, ctx: Context) -> None:
    sources = [str(c) for c in step.campaign_ids] or ctx.source_campaigns
    passed: dict[str, list[bool]] = defaultdict(list)
    for problem, _, ok in ctx.scores(sources):
        passed[problem].append(ok)
    for c in cands:
        outcomes = passed.get(c.problem, [])
        if len(outcomes) < step.min_samples:
            drop(c, index, step.op, f"{len(outcomes)} verified samples < {step.min_samples}")
            continue
        rate = sum(outcomes) / len(outcomes)
        c.values["pass_rate"] = rate
        if not step.low <= rate <= step.high:
            drop(c, index, step.op, f"pass rate {rate:.3f} outside [{step.low}, {step.high}]")


def reward_variance(cands: list[Candidate], step: RewardVariance, index: int, ctx: Context) -> None:
    scores = _rates(ctx.scores(ctx.source_campaigns))
    for c in cands:
        values = scores.get(c.problem, [])
        if len(values) < step.min_samples:
            drop(c, index, step.op, f"{len(values)} verified samples < {step.min_samples}")
            continue
        std = statistics.pstdev(values)
        c.values["reward_std"] = std
        if std <= step.min_std:
            drop(c, index, step.op, f"reward std {std:.3f} <= {step.min_std}")


# --------------------------------------------------------------------------- student-model filters


def _student_losses(
    cands: list[Candidate], model: str, device: str, batch: int, ctx: Context
) -> list[list[float]]:
    scored = ctx.scorer(model, device)
    examples = [scored.encode(c.record) for c in cands]
    losses: list[list[float]] = []
    for start in range(0, len(examples), batch * 8):
        losses.extend(scored.losses(examples[start : start + batch * 8], batch))
        ctx.progress(min(1.0, (start + batch * 8) / max(1, len(examples))), f"scoring under {model}")
    return losses


def student_loss(cands: list[Candidate], step: StudentLoss, index: int, ctx: Context) -> None:
    per_token = _student_losses(cands, step.model, step.device, step.batch_size, ctx)
    means = [sum(t) / len(t) if t else math.inf for t in per_token]
    for c, mean in zip(cands, means, strict=True):
        c.values["student_loss"] = mean
    cutoff = math.inf
    if step.keep_fraction is not None:
        ranked = sorted(means)
        keep = max(1, math.ceil(step.keep_fraction * len(ranked)))
        cutoff = ranked[keep - 1] if ranked else math.inf
    limit = min(cutoff, step.max_loss if step.max_loss is not None else math.inf)
    for c, mean in zip(cands, means, strict=True):
        if mean > limit:
            drop(c, index, step.op, f"student loss {mean:.4f} > {limit:.4f}")


def token_mask(cands: list[Candidate], step: TokenMask, index: int, ctx: Context) -> None:
    per_token = _student_losses(cands, step.model, step.device, step.batch_size, ctx)
    for c, losses in zip(cands, per_token, strict=True):
        # The end-of-turn token is always learnt: a student that never stops is worse than any typo.
        mask = [1 if loss <= step.max_token_loss else 0 for loss in losses[:-1]] + [1]
        c.loss_mask = mask
        c.values["masked_tokens"] = len(mask) - sum(mask)
        c.values["mask_model"] = step.model


# --------------------------------------------------------------------------- length and diversity


def answer_end(text: str) -> int | None:
    """Index just past the last balanced `\\boxed{...}`, or None when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i in range(start + len("\\boxed{"), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return i + 1
            depth -= 1
    return None


def _trim(c: Candidate, ctx: Context) -> None:
    text = str(c.record["completion"])
    end = answer_end(text)
    if end is None or end >= len(text.rstrip()):
        return
    trimmed = text[:end]
    # Only a cut that the verifier still accepts replaces the original.
    if ctx.verify(c.record, trimmed):
        c.values["trimmed_chars"] = len(text) - len(trimmed)
        replace_completion(c, trimmed)


def _with_completion(record: dict[str, Any], completion: str) -> dict[str, Any]:
    messages = [dict(m) for m in record["messages"]]
    if messages and messages[-1]["role"] == "assistant":
        messages[-1]["content"] = completion
    # The generator's token count described the old text; an edited one has none.
    return {**record, "completion": completion, "messages": messages, "completion_tokens": None}


def replace_completion(c: Candidate, completion: str) -> None:
    """Give a candidate a new (already re-verified) completion."""
    c.record = _with_completion(c.record, completion)
    c.loss_mask = None  # a mask was aligned to the old text


def lengths(group: Sequence[Candidate]) -> list[int]:
    """One measure for a problem's traces: the generator's token counts when every trace still has
    one, else characters for all (an edited trace has no token count; mixing the two would compare
    characters with tokens)."""
    counts = [c.record.get("completion_tokens") for c in group]
    if all(isinstance(n, int) and n > 0 for n in counts):
        return [int(n) for n in counts if n is not None]
    return [len(str(c.record["completion"])) for c in group]


def by_problem(cands: Iterable[Candidate]) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        groups[c.problem].append(c)
    return groups


def length_prune(cands: list[Candidate], step: LengthPrune, index: int, ctx: Context) -> None:
    if step.trim_after_answer:
        for i, c in enumerate(cands):
            _trim(c, ctx)
            ctx.progress((i + 1) / len(cands), "trimming after the final answer")
    for group in by_problem(cands).values():
        for c, length in zip(group, lengths(group), strict=True):
            c.values["length"] = length
            if step.max_tokens is not None and length > step.max_tokens:
                drop(c, index, step.op, f"length {length} > {step.max_tokens}")
    for group in by_problem(c for c in cands if c.dropped is None).values():
        group.sort(key=lambda c: (c.values["length"], str(c.record["id"])))
        shortest = group[0].values["length"]
        for rank, c in enumerate(group):
            if step.max_ratio is not None and c.values["length"] > step.max_ratio * shortest:
                drop(
                    c, index, step.op, f"length {c.values['length']} > {step.max_ratio} x shortest {shortest}"
                )
            elif step.per_problem is not None and rank >= step.per_problem:
                drop(c, index, step.op, f"not among the {step.per_problem} shortest of its problem")


def _sq_distances(points: Any, centers: Any) -> Any:
    # |x|^2 - 2 x.c + |c|^2: an [n, k] matrix without the [n, k, d] temporary of a plain difference.
    return (points**2).sum(1)[:, None] - 2.0 * points @ centers.T + (centers**2).sum(1)[None, :]


def _lloyd(points: Any, k: int, rng: Any, iterations: int) -> tuple[Any, float]:
    """One k-means run with k-means++ seeding: (labels, inertia)."""
    import numpy as np

    centers = points[[int(rng.integers(len(points)))]]
    for _ in range(1, k):
        d2 = np.maximum(_sq_distances(points, centers).min(1), 0.0)
        total = d2.sum()
        pick = int(rng.choice(len(points), p=d2 / total)) if total > 0 else int(rng.integers(len(points)))
        centers = np.vstack([centers, points[pick]])
    labels = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        labels = _sq_distances(points, centers).argmin(1)
        moved = np.array(
            [points[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)]
        )
        if np.allclose(moved, centers):
            break
        centers = moved
    inertia = float(np.maximum(_sq_distances(points, centers).min(1), 0.0).sum())
    return labels, inertia


def kmeans(points: Any, k: int, seed: int, restarts: int = 8, iterations: int = 50) -> Any:
    """Cluster labels by Lloyd's algorithm, the best of `restarts` seedings (deterministic per seed):
    one seeding alone often splits a real cluster and merges two others."""
    import numpy as np

    rng = np.random.default_rng(seed)
    runs = [_lloyd(points, k, rng, iterations) for _ in range(restarts)]
    return min(runs, key=lambda run: run[1])[0]


def _diversity_text(c: Candidate, which: str) -> str:
    prompt, completion = str(c.record.get("prompt", "")), str(c.record["completion"])
    return {"prompt": prompt, "completion": completion, "both": f"{prompt}\n{completion}"}[which]


def diversity(cands: list[Candidate], step: Diversity, index: int, ctx: Context) -> None:
    import numpy as np

    if len(cands) <= step.max_records:
        return
    vectors = np.asarray(
        ctx.embed([_diversity_text(c, step.text) for c in cands], step.batch_size, step.device)
    )
    k = min(len(cands), step.clusters or max(1, round(math.sqrt(len(cands)))))
    labels = kmeans(vectors.astype(np.float64), k, step.seed)
    for c, label in zip(cands, labels, strict=True):
        c.values["cluster"] = int(label)
    rng = np.random.default_rng(step.seed)
    members = {j: [i for i in rng.permutation(len(cands)) if labels[i] == j] for j in range(k)}
    chosen: set[int] = set()
    # Round robin over clusters: each cluster gives one member per round until the budget is spent.
    while len(chosen) < step.max_records:
        for j in range(k):
            if members[j] and len(chosen) < step.max_records:
                chosen.add(int(members[j].pop()))
    for i, c in enumerate(cands):
        if i not in chosen:
            drop(c, index, step.op, f"cluster {int(labels[i])} over its share of {step.max_records}")


STEPS: dict[str, Callable[[list[Candidate], Any, int, Context], None]] = {
    "pass_rate": pass_rate,
    "reward_variance": reward_variance,
    "student_loss": student_loss,
    "token_mask": token_mask,
    "length_prune": length_prune,
    "diversity": diversity,
}


def scorer_for(source: ModelSource, device: str) -> ScoredModel:
    """Load a model for loss scoring (used by the student-loss and token-mask steps)."""
    from ml.devices import pick_device
    from ml.loading import load_model, load_tokenizer
    from ml.training import batches

    model = load_model(source, pick_device(device), "float32")
    tokenizer = load_tokenizer(source)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else batches.end_of_turn_id(tokenizer)

    def encode(record: dict[str, Any]) -> Example:
        return batches.encode(tokenizer, batches.prompt_messages(record), str(record["completion"]))

    def losses(examples: Sequence[Example], batch: int) -> list[list[float]]:
        return batches.token_losses(model, examples, int(pad), batch)

    return ScoredModel(model, tokenizer, int(pad), encode, losses)

"""Refinement steps: they change traces, not only choose among them, and every change they make
is re-verified (`Context.verify`, the verifier path the coordinator's own verdicts take) before it
replaces the original.

* `shortest_verified`: per problem, the shortest trace that passes its verifier again.
* `loss_rewrite`: the student's highest-loss span of a trace, re-sampled conditioned on the text
  before it; a rewrite is kept only if it verifies and lowers the student's mean token loss.
* `condense`: a trace's thinking folded by a model into a shorter plain chain of thought; kept only
  if it verifies and has fewer tokens.

Sampling is the seeded sampler (ml/continuation.py), seeded by the step's seed and the trace's id,
so a step run twice writes the same rewrites. What a step decided for a trace is appended to a file
in the job's folder (`Memo`), so a job resumed after a crash skips the traces it already did.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.pipeline.ops.selection import (
    Candidate,
    Context,
    ScoredModel,
    by_problem,
    drop,
    lengths,
    replace_completion,
)
from ml.continuation import continue_rows, seed_of
from ml.loading import stop_token_ids
from ml.prompts import encode_text, prompt_ids
from shared.pipeline_types import Condense, LossRewrite, ShortestVerified
from shared.protocol import SamplingParams

# --------------------------------------------------------------------------- finished work


@dataclass
class Memo:
    """One step's results per trace, as JSON lines `{"key": ..., "result": ...}` in the job's folder.
    The key hashes the step's parameters and the trace's id and text, so a result is only ever
    reused for the very input it was computed from."""

    path: Path | None
    params: str
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, ctx: Context, index: int, step: Any) -> Memo:
        params = json.dumps(step.model_dump(mode="json"), sort_keys=True)
        if ctx.workdir is None:
            return cls(None, params)
        path = ctx.workdir / f"refine-{index}-{step.op}.jsonl"
        memo = cls(path, params)
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():  # a line cut short by a crash is ignored below
                    memo._load(line)
        return memo

    def _load(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return
        self.done[str(entry["key"])] = dict(entry["result"])

    def key(self, c: Candidate) -> str:
        text = f"{self.params}\x1f{c.record['id']}\x1f{c.record['completion']}"
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, c: Candidate) -> dict[str, Any] | None:
        return self.done.get(self.key(c))

    def put(self, c: Candidate, result: dict[str, Any]) -> dict[str, Any]:
        key = self.key(c)
        self.done[key] = result
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "result": result}, sort_keys=True) + "\n")
        return result


def _each(
    cands: list[Candidate],
    memo: Memo,
    work: Callable[[list[Candidate]], list[dict[str, Any]]],
    batch: int,
    ctx: Context,
    stage: str,
) -> list[dict[str, Any]]:
    """Results for every candidate: from the memo, else from `work` on batches of the rest."""
    todo = [c for c in cands if memo.get(c) is None]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        for c, result in zip(chunk, work(chunk), strict=True):
            memo.put(c, result)
        done = len(cands) - len(todo) + start + len(chunk)
        ctx.progress(done / len(cands), f"{stage} ({done}/{len(cands)})")
    results = [memo.get(c) for c in cands]
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- shortest verified


def shortest_verified(cands: list[Candidate], step: ShortestVerified, index: int, ctx: Context) -> None:
    groups = by_problem(cands)
    for done, group in enumerate(groups.values()):
        for c, length in zip(group, lengths(group), strict=True):
            c.values["length"] = length
        winner = None
        for c in sorted(group, key=lambda c: (c.values["length"], str(c.record["id"]))):
            if winner is not None:
                drop(
                    c,
                    index,
                    step.op,
                    f"not the shortest verified trace of its problem ({winner.record['id']})",
                )
                continue
            c.values["reverified"] = ctx.verify(c.record, str(c.record["completion"]))
            if c.values["reverified"]:
                winner = c
            else:
                drop(c, index, step.op, "fails its verifier on re-verification")
        ctx.progress((done + 1) / len(groups), "re-verifying the shortest trace per problem")


# --------------------------------------------------------------------------- sampling helpers


@dataclass(frozen=True)
class Sampler:
    """A loaded model as a writer: prompt rendering, text <-> ids, and seeded continuation."""

    scored: ScoredModel
    stops: frozenset[int]

    @classmethod
    def of(cls, scored: ScoredModel) -> Sampler:
        generation = getattr(scored.model, "generation_config", None)
        return cls(scored, frozenset(stop_token_ids(scored.tokenizer, generation)))

    def ids(self, text: str) -> list[int]:
        return encode_text(self.scored.tokenizer, text)

    def prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return prompt_ids(self.scored.tokenizer, messages)

    def text(self, ids: Sequence[int]) -> str:
        return str(self.scored.tokenizer.decode(list(ids), skip_special_tokens=True))

    def write(
        self,
        contexts: Sequence[list[int]],
        offsets: Sequence[int],
        seeds: Sequence[int],
        sampling: SamplingParams,
    ) -> list[str]:
        rows = continue_rows(
            self.scored.model, contexts, offsets, seeds, sampling, self.stops, self.scored.pad_id
        )
        return [self.text(row.token_ids) for row in rows]


def _mean_losses(student: ScoredModel, records: Sequence[dict[str, Any]], batch: int) -> list[float]:
    per_token = student.losses([student.encode(r) for r in records], batch)
    return [sum(t) / len(t) if t else float("inf") for t in per_token]


# --------------------------------------------------------------------------- loss-targeted rewriting


def windows(losses: Sequence[float], width: int, count: int) -> list[tuple[int, int]]:
    """Up to `count` non-overlapping [start, end) windows of at most `width` tokens, by summed loss,
    highest first (ties: the earlier window)."""
    width = max(1, min(width, len(losses)))
    sums = [(sum(losses[s : s + width]), s) for s in range(len(losses) - width + 1)]
    chosen: list[tuple[int, int]] = []
    for _, start in sorted(sums, key=lambda item: (-item[0], item[1])):
        if len(chosen) == count:
            break
        if all(start + width <= a or b <= start for a, b in chosen):
            chosen.append((start, start + width))
    return chosen


def _with_text(record: dict[str, Any], text: str) -> dict[str, Any]:
    return {**record, "completion": text}


@dataclass
class _Rewriter:
    step: LossRewrite
    student: ScoredModel
    sampler: Sampler
    ctx: Context

    def one(self, c: Candidate) -> dict[str, Any]:
        example = self.student.encode(c.record)
        losses = self.student.losses([example], 1)[0]
        before = sum(losses) / len(losses) if losses else float("inf")
        body = example.completion_ids[:-1]  # without the end-of-turn token, which is never rewritten
        result: dict[str, Any] = {"loss_before": before, "rewritten": False, "tried": []}
        for start, end in windows(losses[: len(body)], self.step.span_tokens, self.step.spans):
            attempt = self._window(c, body, start, end, before)
            result["tried"].append(attempt)
            if attempt.get("completion") is not None:
                result.update(rewritten=True, span=[start, end], loss_after=attempt["loss"])
                result["completion"] = attempt["completion"]
                break
        return result

    def _window(self, c: Candidate, body: list[int], start: int, end: int, before: float) -> dict[str, Any]:
        decode = self.student.tokenizer.decode
        prefix, suffix = str(decode(body[:start])), str(decode(body[end:]))
        messages = [{"role": m["role"], "content": m["content"]} for m in c.record["messages"][:-1]]
        # The student's own tokens when it samples itself; another tokenizer reads the prefix's text.
        head = body[:start] if self.sampler.scored is self.student else self.sampler.ids(prefix)
        context, n, offset = self.sampler.prompt(messages) + head, self.step.samples, len(head)
        span_mode = self.step.mode == "span"
        sampling = (
            self.step.sampling.model_copy(update={"max_tokens": self.step.span_tokens})
            if span_mode
            else self.step.sampling
        )
        seeds = [seed_of(self.step.seed, c.record["id"], start, k) for k in range(n)]
        written = self.sampler.write([context] * n, [offset] * n, seeds, sampling)
        texts = sorted(
            {prefix + w + (suffix if span_mode else "") for w in written} - {c.record["completion"]}
        )
        return self._best(c, texts, before) | {"span": [start, end], "samples": n, "distinct": len(texts)}

    def _best(self, c: Candidate, texts: list[str], before: float) -> dict[str, Any]:
        """The lowest-loss rewrite that beats the original and passes its verifier."""
        if not texts:
            return {"lower": 0}
        means = _mean_losses(self.student, [_with_text(c.record, t) for t in texts], self.step.batch_size)
        lower = sorted((m, t) for m, t in zip(means, texts, strict=True) if m < before)
        for mean, text in lower:
            if self.ctx.verify(c.record, text):
                return {"lower": len(lower), "completion": text, "loss": mean}
        return {"lower": len(lower)}


def loss_rewrite(cands: list[Candidate], step: LossRewrite, index: int, ctx: Context) -> None:
    @functools.cache
    def rewriter() -> _Rewriter:  # models load only when some trace is not in the memo yet
        student = ctx.scorer(step.model, step.device)
        return _Rewriter(
            step, student, Sampler.of(ctx.scorer(step.sampler_model or step.model, step.device)), ctx
        )

    memo = Memo.open(ctx, index, step)
    results = _each(
        cands, memo, lambda chunk: [rewriter().one(c) for c in chunk], 1, ctx, "rewriting high-loss spans"
    )
    for c, result in zip(cands, results, strict=True):
        c.values["rewrite_loss_before"] = result["loss_before"]
        c.values["rewritten"] = result["rewritten"]
        c.values["rewrite_windows_tried"] = len(result["tried"])
        if result["rewritten"]:
            c.values["rewrite_span"] = result["span"]
            c.values["rewrite_loss_after"] = result["loss_after"]
            replace_completion(c, result["completion"])


# --------------------------------------------------------------------------- condensation


def thinking(text: str, start: str, end: str) -> tuple[str, str] | None:
    """(the thinking, the text after it) of a completion, or None when it has no thinking span."""
    begin = text.find(start)
    if begin < 0:
        return None
    stop = text.find(end, begin + len(start))
    if stop < 0:
        return None
    return text[begin + len(start) : stop].strip(), text[stop + len(end) :].strip()


@dataclass
class _Condenser:
    step: Condense
    writer: Sampler
    ctx: Context

    def batch(self, chunk: list[Candidate]) -> list[dict[str, Any]]:
        parts = [
            thinking(str(c.record["completion"]), self.step.think_start, self.step.think_end) for c in chunk
        ]
        todo = [(c, p) for c, p in zip(chunk, parts, strict=True) if p is not None and p[0]]
        contexts = [self.writer.prompt([{"role": "user", "content": self._prompt(c, p[0])}]) for c, p in todo]
        seeds = [seed_of(self.step.seed, c.record["id"]) for c, _ in todo]
        written = iter(
            self.writer.write(contexts, [0] * len(todo), seeds, self.step.sampling) if todo else []
        )
        return [
            self._judge(c, p, next(written))
            if p is not None and p[0]
            else {"condensed": False, "why": "no thinking"}
            for c, p in zip(chunk, parts, strict=True)
        ]

    def _prompt(self, c: Candidate, thought: str) -> str:
        return self.step.prompt.replace("{problem}", str(c.record.get("prompt", ""))).replace(
            "{thinking}", thought
        )

    def _judge(self, c: Candidate, part: tuple[str, str], written: str) -> dict[str, Any]:
        answer = part[1] if self.step.keep_answer else ""
        text = "\n\n".join(p for p in (written.strip(), answer) if p)
        before, after = len(self.writer.ids(str(c.record["completion"]))), len(self.writer.ids(text))
        result: dict[str, Any] = {"condensed": False, "tokens_before": before, "tokens_after": after}
        if after >= before:
            return result | {"why": "not shorter"}
        if not self.ctx.verify(c.record, text):
            return result | {"why": "fails its verifier"}
        return result | {"condensed": True, "completion": text}


def condense(cands: list[Candidate], step: Condense, index: int, ctx: Context) -> None:
    @functools.cache
    def condenser() -> _Condenser:  # the model loads only when some trace is not in the memo yet
        return _Condenser(step, Sampler.of(ctx.scorer(step.model, step.device)), ctx)

    memo = Memo.open(ctx, index, step)
    results = _each(
        cands, memo, lambda chunk: condenser().batch(chunk), step.batch_size, ctx, "condensing thinking"
    )
    for c, result in zip(cands, results, strict=True):
        c.values["condensed"] = result["condensed"]
        if "why" in result:
            c.values["condense_kept_original"] = result["why"]
        for key in ("tokens_before", "tokens_after"):
            if key in result:
                c.values[f"condense_{key}"] = result[key]
        if result["condensed"]:
            replace_completion(c, result["completion"])


STEPS: dict[str, Callable[[list[Candidate], Any, int, Context], None]] = {
    "shortest_verified": shortest_verified,
    "loss_rewrite": loss_rewrite,
    "condense": condense,
}

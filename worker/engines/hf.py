"""Transformers engine: our own batched decode loop (KV cache, left padding) around `sample_step`.

`model.generate` is not used: its samplers draw from torch's global RNG, which no validator can
replay. Here every token comes from shared.sampling's seeded Gumbel-max.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.assets import resolve_model
from shared.protocol import EngineInfo, FinishReason, JobSpec
from shared.sampling import sample_step
from worker.engines.base import Generation, ShouldStop, package_version
from worker.engines.prompt import decode_completion, prompt_token_ids, stop_token_ids
from worker.errors import EngineError

log = logging.getLogger("flywheel.worker.engine")


@dataclass
class _Row:
    """Decode state of one job in the batch."""

    job: JobSpec
    prompt: list[int]
    limit: int  # completion tokens allowed: max_tokens, cut to the model's context
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # fp32 on CPU: bf16 matmuls there are slow and far from what a GPU validator computes.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class TransformersEngine:
    verifiable = True

    def __init__(self, model: Any, tokenizer: Any, model_name: str, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        # Pad positions are masked out, so any id works; a stop id exists in every vocabulary.
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.stops, default=0)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        dtype = str(model.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            name="transformers", version=package_version("transformers"), dtype=dtype, device=device[:64]
        )

    @classmethod
    def load(cls, name: str, *, device: str = "auto", dtype: str = "auto") -> TransformersEngine:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise EngineError("the transformers engine needs `pip install openflywheel[worker]`") from exc
        chosen = pick_device(device)
        path = resolve_model(name)
        model: Any
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, chosen))
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load model {name!r} from {path}: {exc}") from exc
        model.to(chosen).eval()
        log.info("loaded %s on %s (%s)", name, chosen, model.dtype)
        return cls(model, tokenizer, name, chosen)

    def close(self) -> None:
        self.model = None

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        if not jobs:
            return []
        import torch

        started = time.perf_counter()
        rows = [self._row(job) for job in jobs]
        with torch.inference_mode():
            finished = self._decode(rows, should_stop)
        if not finished:
            return []
        elapsed = time.perf_counter() - started
        return [self._generation(row, elapsed) for row in rows]

    def _row(self, job: JobSpec) -> _Row:
        prompt = prompt_token_ids(self.tokenizer, job.messages)
        return _Row(job, prompt, max(0, min(job.sampling.max_tokens, self.context - len(prompt))))

    def _generation(self, row: _Row, elapsed: float) -> Generation:
        return Generation(
            text=decode_completion(self.tokenizer, row.tokens, self.stops),
            completion_token_ids=row.tokens,
            logprobs=row.logprobs,
            finish_reason=row.finish or FinishReason.length,
            prompt_tokens=len(row.prompt),
            generate_s=elapsed,
        )

    def _prefill(self, rows: list[_Row]) -> tuple[Any, Any, Any, Any]:
        """Left-padded prompts through the model: (logits of last position, cache, mask, next positions)."""
        import torch

        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt, dtype=torch.long)
            mask[i, width - len(row.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values, mask, positions[:, -1] + 1

    def _decode(self, rows: list[_Row], should_stop: ShouldStop | None) -> bool:
        """Fill every row's tokens; False if `should_stop` fired first (the batch is abandoned)."""
        import torch

        for row in rows:
            if row.limit == 0:
                row.finish = FinishReason.length
        logits, cache, mask, next_pos = self._prefill(rows)
        step = 0
        while any(r.finish is None for r in rows):
            if should_stop is not None and should_stop():
                return False
            self._sample_into(rows, logits, step)
            if all(r.finish is not None for r in rows):
                break
            feed = [r.tokens[-1] if r.tokens and r.finish is None else self.pad_id for r in rows]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = self.model(
                input_ids=torch.tensor(feed, device=self.device)[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits, cache, next_pos, step = out.logits[:, -1, :], out.past_key_values, next_pos + 1, step + 1
        return True

    def _sample_into(self, rows: list[_Row], logits: Any, step: int) -> None:
        """Sample one token for every unfinished row (all rows share the step: same position)."""
        import torch

        active = [i for i, r in enumerate(rows) if r.finish is None]
        jobs = [rows[i].job for i in active]
        tokens, logprobs = sample_step(
            torch,
            logits[torch.tensor(active, device=logits.device)],
            seeds=[j.sampling.seed for j in jobs],
            sample_indices=[j.sample_index for j in jobs],
            positions=[step] * len(active),
            sampling=[j.sampling for j in jobs],
        )
        for i, token, logprob in zip(active, tokens.tolist(), logprobs.tolist(), strict=True):
            row = rows[i]
            row.tokens.append(int(token))
            row.logprobs.append(float(logprob))
            if token in self.stops:
                row.finish = FinishReason.stop
            elif len(row.tokens) >= row.limit:
                row.finish = FinishReason.length

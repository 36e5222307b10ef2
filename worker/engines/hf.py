"""Transformers engine: our own batched decode loop (KV cache, left padding) around `sample_step`.

`model.generate` is not used: its samplers draw from torch's global RNG, which no validator can
replay. Here every sampled token comes from shared.sampling's seeded Gumbel-max, and budget
forcing (shared/budget.py) decides the positions that are forced instead.

Loading, devices and the sampler's torch side are the model package's (ml/); this module is the
engine around them. Samples of one problem share their prompt: each distinct prompt is prefilled
once and its KV cache copied to every row that uses it. A batch's size can be derived from the
GPU memory free now (`max_batch`), and `--gpu-memory-fraction` caps what this process may allocate.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import fused_sampler
from ml.decode import Batch, StaticDecoder, supports
from ml.devices import pick_device
from ml.errors import DeviceUnavailable, WeightsMisfit
from ml.loading import load_model, load_tokenizer, load_weights, stop_token_ids
from ml.prompts import decode_completion
from ml.sampling import raw_logprobs, sample_rows
from shared.assets import ModelSource
from shared.budget import NO_IDS, BudgetState, Step
from shared.protocol import (
    MAX_BATCH,
    ChatMessage,
    EngineInfo,
    FinishReason,
    JobSpec,
    ModelRef,
    SamplingParams,
)
from worker.engines.base import Generation, ShouldStop, package_version
from worker.engines.prompt import BudgetTokenizer, prompt_token_ids
from worker.errors import EngineError

log = logging.getLogger("flywheel.worker.engine")
CUDA_DEFAULT_BATCH = 128
CPU_DEFAULT_BATCH = 8
# Per-row float64 [vocab] temporaries alive at once inside sample_step (logits/T, noise terms,
# the log series): measured peak on CUDA is under this many, so it errs on the safe side.
SAMPLER_F64_COPIES = 16
CACHE_SLACK = 1.5  # the KV cache grows by concatenation: the allocator holds some stale blocks
MEMORY_SAFETY = 0.85  # of the estimated free memory, the part a batch may plan to use


@dataclass
class _Row:
    """Decode state of one job in the batch."""

    job: JobSpec
    prompt: list[int]
    limit: int  # completion tokens allowed: max_tokens, cut to the model's context
    budget: BudgetState | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None


@dataclass(frozen=True)
class RowShape:
    """What one row costs in memory, from the model's config (see `row_bytes`)."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, config: Any, dtype_bytes: int) -> RowShape:
        heads = int(config.num_attention_heads)
        hidden = int(config.hidden_size)
        return cls(
            layers=int(config.num_hidden_layers),
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab=int(config.vocab_size),
            dtype_bytes=dtype_bytes,
        )

    def row_bytes(self, prompt_tokens: int, new_tokens: int) -> int:
        """Peak bytes one row adds to a batch: its KV cache at full length, the sampler's float64
        temporaries, its logits, and its share of the prefill's activations."""
        kv = 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes * (prompt_tokens + new_tokens)
        sampler = SAMPLER_F64_COPIES * 8 * self.vocab
        prefill = prompt_tokens * (8 * self.hidden + 3 * self.intermediate) * self.dtype_bytes
        return int(CACHE_SLACK * kv) + sampler + 4 * self.vocab + prefill


def plain(job: JobSpec) -> bool:
    """Whether the static decoder's fused sampler covers the job: no top-k, no top-p, no budget."""
    sampling = job.sampling
    return job.budget is None and sampling.top_k == 0 and sampling.top_p >= 1.0


def static_decoder(model: Any, device: str) -> StaticDecoder | None:
    """The static-cache, graph-captured decoder for this model on a CUDA device where Triton is
    installed and the architecture is one it implements; None keeps the plain loop."""
    if not device.startswith("cuda") or not fused_sampler.available():
        return None
    why = supports(model)
    if why is not None:
        log.info("decoding with the plain loop: %s", why)
        return None
    return StaticDecoder(model)


def rows_that_fit(available_bytes: int, row_bytes: int, ceiling: int = MAX_BATCH) -> int:
    """Rows of `row_bytes` within the safe part of `available_bytes`: at least 1, at most `ceiling`."""
    if row_bytes <= 0:
        return ceiling
    return max(1, min(ceiling, int(available_bytes * MEMORY_SAFETY) // row_bytes))


class TransformersEngine:
    verifiable = True

    def __init__(
        self, model: Any, tokenizer: Any, model_name: str, device: str, memory_fraction: float | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.memory_fraction = memory_fraction
        self.stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        # Pad positions are masked out, so any id works; a stop id exists in every vocabulary.
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.stops, default=0)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self.default_batch = CUDA_DEFAULT_BATCH if device.startswith("cuda") else CPU_DEFAULT_BATCH
        self.shape = RowShape.of(model.config, model.dtype.itemsize)
        self._prompts: dict[uuid.UUID, list[int]] = {}
        self.budget_tokens = BudgetTokenizer(tokenizer, self.stops)
        dtype = str(model.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            name="transformers", version=package_version("transformers"), dtype=dtype, device=device[:64]
        )
        self.decoder = static_decoder(model, device)

    @classmethod
    def load(
        cls,
        name: str,
        *,
        path: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        memory_fraction: float | None = None,
    ) -> TransformersEngine:
        """The model `name`, from `path` when given (a prepared directory), else from where the
        name resolves to."""
        source = ModelSource(path) if path else ModelSource.named(name)
        try:
            chosen = pick_device(device)
            tokenizer = load_tokenizer(source)
            model = load_model(source, chosen, dtype, spread=True, memory_fraction=memory_fraction)
        except ImportError as exc:
            raise EngineError("the transformers engine needs `pip install openflywheel[worker]`") from exc
        except DeviceUnavailable as exc:
            raise EngineError(f"--{exc}") from exc
        except (OSError, ValueError) as exc:
            raise EngineError(f"cannot load model {name!r} from {source.base}: {exc}") from exc
        engine = cls(model, tokenizer, name, chosen, memory_fraction)
        engine.warm_up()
        log.info("loaded %s on %s (%s)", name, chosen, model.dtype)
        return engine

    def warm_up(self) -> None:
        """Generate two tokens, so a model that cannot run fails now, before any job is leased."""
        job = JobSpec(
            job_id=uuid.uuid4(), campaign_id=uuid.uuid4(), problem_id="warm-up", sample_index=0,
            messages=[ChatMessage(role="user", content="1+1")], model=ModelRef(name=self.model_name),
            sampling=SamplingParams(temperature=0.0, max_tokens=2), samples_per_problem=1,
        )  # fmt: skip
        try:
            self.generate([job])
        except EngineError:
            raise
        except Exception as exc:  # CUDA out of memory, bad weights, a template that cannot render
            raise EngineError(f"model {self.model_name!r} failed a test generation: {exc}") from exc

    def close(self) -> None:
        self.model = None

    def unsupported(self, job: JobSpec) -> str | None:
        return None

    def swap_weights(self, name: str, weights: Path) -> None:
        """Copy another version's full weights into the loaded model, in its dtype and on its
        devices; the tokenizer and config stay, so the file must be for this architecture."""
        self.model_name = ""  # until the swap succeeds: nothing may run on half-replaced weights
        try:
            load_weights(self.model, weights)
        except WeightsMisfit as exc:
            raise EngineError(
                f"the weights of {name!r} do not fit the loaded model: missing {exc.missing[:5]}, "
                f"unexpected {exc.unexpected[:5]}"
            ) from exc
        except (OSError, RuntimeError) as exc:
            raise EngineError(f"cannot load the weights of {name!r} from {weights}: {exc}") from exc
        self.model_name = name
        log.info("now running %s (weights swapped in place)", name)

    # ------------------------------------------------------------------ batch sizing

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        if not jobs or not self.device.startswith("cuda"):
            return MAX_BATCH
        prompt = max(len(self._prompt(job)) for job in jobs)
        new = max(job.sampling.max_tokens for job in jobs)
        return rows_that_fit(self.available_bytes(), self.shape.row_bytes(prompt, new))

    def available_bytes(self) -> int:
        """GPU memory this process may still use: free on the device plus its own idle cache,
        within the --gpu-memory-fraction cap."""
        import torch

        index = torch.device(self.device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        allocated = torch.cuda.memory_allocated(index)
        available = free + torch.cuda.memory_reserved(index) - allocated
        if self.memory_fraction is not None:
            available = min(available, int(self.memory_fraction * total) - allocated)
        return max(0, available)

    # ------------------------------------------------------------------ generation

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        if not jobs:
            return []
        import torch

        started = time.perf_counter()
        rows = [self._row(job) for job in jobs]
        with torch.inference_mode():
            if self.decoder is not None and all(plain(job) for job in jobs):
                finished = self._decode_static(self.decoder, rows, should_stop)
            else:
                finished = self._decode(rows, should_stop)
        if not finished:
            return []
        elapsed = time.perf_counter() - started
        return [self._generation(row, elapsed) for row in rows]

    def _prompt(self, job: JobSpec) -> list[int]:
        # max_batch tokenizes the queue's head; generate then reuses the ids instead of re-rendering.
        ids = self._prompts.get(job.job_id)
        if ids is None:
            if len(self._prompts) > 4 * MAX_BATCH:
                self._prompts.clear()
            ids = self._prompts[job.job_id] = prompt_token_ids(self.tokenizer, job.messages)
        return ids

    def _row(self, job: JobSpec) -> _Row:
        prompt = self._prompt(job)
        self._prompts.pop(job.job_id, None)
        budget = BudgetState(job.budget, self.budget_tokens(job.budget)) if job.budget is not None else None
        limit = max(0, min(job.sampling.max_tokens, self.context - len(prompt)))
        return _Row(job, prompt, limit, budget)

    def _generation(self, row: _Row, elapsed: float) -> Generation:
        return Generation(
            text=decode_completion(self.tokenizer, row.tokens, self.stops),
            completion_token_ids=row.tokens,
            logprobs=row.logprobs,
            finish_reason=row.finish or FinishReason.length,
            prompt_tokens=len(row.prompt),
            generate_s=elapsed,
        )

    def _input_device(self) -> Any:
        return self.model.device if self.device.startswith("cuda") else self.device

    def _prefill(self, rows: list[_Row]) -> tuple[Any, Any, Any, Any]:
        """Each distinct prompt through the model once, left-padded, then fanned out to its rows.

        Returns the last position's logits per row, the cache, the attention mask and each row's
        next position id.
        """
        import torch

        owners: dict[tuple[int, ...], int] = {}
        owner = [owners.setdefault(tuple(row.prompt), len(owners)) for row in rows]
        prompts = list(owners)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        device = self._input_device()
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        logits, cache, next_pos = out.logits[:, -1, :], out.past_key_values, positions[:, -1] + 1
        if len(prompts) < len(rows):
            index = torch.tensor(owner)  # on the CPU: with several GPUs the cache spans devices
            cache.batch_select_indices(index)
            logits, mask, next_pos = (
                logits[index.to(logits.device)],
                mask[index.to(device)],
                next_pos[index.to(device)],
            )
        return logits, cache, mask, next_pos

    def _decode_static(
        self, decoder: StaticDecoder, rows: list[_Row], should_stop: ShouldStop | None
    ) -> bool:
        """The batch on the static-cache decoder (ml/decode.py): same tokens, one graph per step."""
        jobs = [row.job for row in rows]
        batch = Batch(
            prompts=[row.prompt for row in rows],
            seeds=[job.sampling.seed for job in jobs],
            sample_indices=[job.sample_index for job in jobs],
            temperatures=[job.sampling.temperature for job in jobs],
            limits=[row.limit for row in rows],
            stops=frozenset(self.stops),
        )
        decoded = decoder.decode(batch, should_stop)
        if decoded is None:
            return False
        for row, tokens, logprobs in zip(rows, decoded.tokens, decoded.logprobs, strict=True):
            row.tokens, row.logprobs = tokens, logprobs
            stopped = bool(tokens) and tokens[-1] in self.stops
            row.finish = FinishReason.stop if stopped else FinishReason.length
        return True

    def _decode(self, rows: list[_Row], should_stop: ShouldStop | None) -> bool:
        """Fill every row's tokens; False if `should_stop` fired first (the batch is abandoned)."""
        import torch

        for row in rows:
            if row.limit == 0:
                row.finish = FinishReason.length
        logits, cache, mask, next_pos = self._prefill(rows)
        step = 0
        device = mask.device
        while any(r.finish is None for r in rows):
            if should_stop is not None and should_stop():
                return False
            self._sample_into(rows, logits, step)
            if all(r.finish is not None for r in rows):
                break
            feed = [r.tokens[-1] if r.tokens and r.finish is None else self.pad_id for r in rows]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = self.model(
                input_ids=torch.tensor(feed, device=device)[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits, cache, next_pos, step = out.logits[:, -1, :], out.past_key_values, next_pos + 1, step + 1
        return True

    def _sample_into(self, rows: list[_Row], logits: Any, step: int) -> None:
        """One token for every unfinished row (all rows share the step: same position)."""
        active = [i for i, r in enumerate(rows) if r.finish is None]
        plans: dict[int, Step] = {}
        for i in active:
            budget = rows[i].budget
            if budget is not None:
                plans[i] = budget.step()
        forced = {i: plan.forced for i, plan in plans.items() if plan.forced is not None}
        sampled = [i for i in active if i not in forced]
        chosen: dict[int, tuple[int, float]] = {}
        if sampled:
            tokens, logprobs = self._sample(rows, logits, sampled, step, plans)
            for i, token, logprob in zip(sampled, tokens, logprobs, strict=True):
                plan = plans.get(i)
                if plan is not None and token in plan.watch:
                    budget = rows[i].budget
                    assert budget is not None
                    forced[i] = budget.start_wait()  # an early end of thinking: "Wait" instead
                else:
                    chosen[i] = (token, logprob)
        if forced:
            logprobs = raw_logprobs(logits, list(forced), list(forced.values()))
            for (i, token), logprob in zip(forced.items(), logprobs, strict=True):
                chosen[i] = (token, logprob)
        for i in active:
            self._append(rows[i], *chosen[i], forced=i in forced)

    def _sample(
        self, rows: list[_Row], logits: Any, indices: list[int], step: int, plans: dict[int, Step]
    ) -> tuple[list[int], list[float]]:
        jobs = [rows[i].job for i in indices]
        return sample_rows(
            logits,
            indices,
            [plans[i].suppress if i in plans else NO_IDS for i in indices],
            seeds=[j.sampling.seed for j in jobs],
            sample_indices=[j.sample_index for j in jobs],
            positions=[step] * len(indices),
            sampling=[j.sampling for j in jobs],
        )

    def _append(self, row: _Row, token: int, logprob: float, forced: bool) -> None:
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if row.budget is not None:
            row.budget.advance(token)
        # A forced token never ends the completion: the budget rule put it there, not the model.
        if not forced and token in self.stops:
            row.finish = FinishReason.stop
        elif len(row.tokens) >= row.limit:
            row.finish = FinishReason.length

"""vLLM engine: offline `vllm.LLM`, sampling by a noise scheme a validator can replay.

Where the installed vLLM is a release whose Model Runner V2 sampler was checked against
shared/vllm_gumbel.py (`native_noise`), vLLM samples with its own sampler: each request carries its
seed (`request_seed` of the job's seed and sample index), temperature, top-k and top-p in plain
`SamplingParams`, vLLM reports `processed_logprobs`, and nothing of Flywheel's runs per token. The
engine names that scheme in its EngineInfo (`noise`), so the validator replays vLLM's noise. Budget
forcing needs a per-token processor, which Model Runner V2 does not run: such jobs are given back.

Elsewhere (other releases), vLLM's samplers draw from its RNG, which a validator cannot replay.
A batch-level logits processor (vLLM's v1 `LogitsProcessor` interface, vLLM >= 0.10.2) runs
`shared.sampling.sample_step` on every row that carries our per-request arguments, then leaves
only the chosen token finite; vLLM then samples greedily and so emits exactly that token. The
processor records each token's logprob (the definition in docs/worker.md, not vLLM's raw
logprobs) in this process, which is why the engine core runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0). Newer vLLM releases default to a second model runner with
another processor interface; VLLM_USE_V2_MODEL_RUNNER=0 keeps the one implemented here. Budget
forcing (shared/budget.py) runs in the same processor: at a forced position it leaves the forced
token finite instead of the sample. Samples of one problem share their prompt through vLLM's
prefix cache; its paged KV cache sizes batches within `--gpu-memory-fraction`. `llm.generate` is
blocking, so a pause takes effect after the batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ml.loading import stop_token_ids
from ml.prompts import decode_completion
from ml.sampling import raw_logprobs, sample_rows
from shared import vllm_gumbel
from shared.assets import resolve_model
from shared.budget import SAMPLE, BudgetState, BudgetTokens, Step
from shared.protocol import (
    NOISE_VLLM_GUMBEL,
    BudgetForcing,
    EngineInfo,
    FinishReason,
    JobSpec,
    NoiseScheme,
    SamplingParams,
)
from worker.config import MAX_ENGINE_BATCH
from worker.engines.base import Generation, ShouldStop, package_version
from worker.engines.prompt import BudgetTokenizer, prompt_token_ids
from worker.errors import EngineError

log = logging.getLogger("flywheel.worker.engine")
EXTRA_KEY = "flywheel_sampling"
# vLLM schedules its own memory and queues what does not fit: hand it many jobs at once, so its
# scheduler keeps the GPU full while the previous batch's results are submitted.
DEFAULT_BATCH = MAX_ENGINE_BATCH // 2
# vLLM releases (major, minor) whose Model Runner V2 Gumbel sampler shared/vllm_gumbel.py reproduces
# (read from the release's vllm/v1/worker/gpu/sample/gumbel.py and its Triton Philox).
NATIVE_RELEASES = frozenset({(0, 26)})

# (request key) -> position -> (token id, logprob), written by the processor, read by generate().
_RECORDS: dict[str, dict[int, tuple[int, float]]] = {}
# (request key) -> budget controller; kept here, not in the row, so it survives a preemption
# (vLLM then re-adds the request with the output it already has).
_BUDGETS: dict[str, BudgetState] = {}
_RECORDS_LOCK = threading.Lock()


@dataclass
class _RowState:
    key: str
    seed: int
    sample_index: int
    sampling: SamplingParams
    output: list[int]  # vLLM's live list of this request's output tokens
    budget: BudgetState | None = None


def _budget_state(key: str, extra: dict[str, Any]) -> BudgetState | None:
    spec = extra.get("budget")
    if spec is None:
        return None
    with _RECORDS_LOCK:
        state = _BUDGETS.get(key)
        if state is None:
            end, wait, stops = spec["think_end_ids"], spec["wait_ids"], spec["stops"]
            ids = BudgetTokens(tuple(end), tuple(wait), frozenset(stops))
            state = _BUDGETS[key] = BudgetState(BudgetForcing.model_validate(spec["rule"]), ids)
        return state


def _row_state(params: Any, output: list[int]) -> _RowState | None:
    extra = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY)
    if extra is None:
        return None
    sampling = SamplingParams.model_validate(extra["sampling"])
    key = extra["key"]
    budget = _budget_state(key, extra)
    return _RowState(key, sampling.seed, int(extra["sample_index"]), sampling, output, budget)


def apply_batch_update(rows: dict[int, _RowState], update: Any, swap: Any) -> None:
    """Follow vLLM's persistent batch: removals, then additions, then moves (its documented order)."""
    for index in update.removed:
        rows.pop(index, None)
    for index, params, _prompt, output in update.added:
        state = _row_state(params, output)
        if state is None:
            rows.pop(index, None)
        else:
            rows[index] = state
    for src, dst, direction in update.moved:
        a, b = rows.pop(src, None), rows.pop(dst, None)
        if a is not None:
            rows[dst] = a
        if direction == swap and b is not None:
            rows[src] = b


def force_tokens(logits: Any, rows: dict[int, _RowState]) -> Any:
    """Decide our rows' tokens (seeded sample, or budget-forced) and leave only that one finite."""
    import torch

    if not rows:
        return logits
    order = sorted(rows)
    states = [rows[i] for i in order]
    plans = [s.budget.step() if s.budget is not None else SAMPLE for s in states]
    tokens, logprobs = _decide(logits, order, states, plans)
    index = torch.tensor(order, device=logits.device)
    forced = torch.full_like(logits[index], float("-inf"))
    forced.scatter_(1, torch.tensor(tokens, device=logits.device)[:, None], 0.0)
    logits[index] = forced
    with _RECORDS_LOCK:
        for state, token, lp in zip(states, tokens, logprobs, strict=True):
            _RECORDS.setdefault(state.key, {})[len(state.output)] = (token, lp)
            if state.budget is not None:
                state.budget.advance(token)
    return logits


def _decide(
    logits: Any, order: list[int], states: list[_RowState], plans: list[Step]
) -> tuple[list[int], list[float]]:
    """Per row: the token and its logprob (sampled, or forced by the budget rule)."""
    tokens = [plan.forced if plan.forced is not None else -1 for plan in plans]
    logprobs = [0.0] * len(order)
    forced = {k for k, plan in enumerate(plans) if plan.forced is not None}
    sampled = [k for k in range(len(order)) if k not in forced]
    if sampled:
        chosen, chosen_lp = sample_rows(
            logits,
            [order[k] for k in sampled],
            [plans[k].suppress for k in sampled],
            seeds=[states[k].seed for k in sampled],
            sample_indices=[states[k].sample_index for k in sampled],
            positions=[len(states[k].output) for k in sampled],
            sampling=[states[k].sampling for k in sampled],
        )
        for k, token, lp in zip(sampled, chosen, chosen_lp, strict=True):
            budget = states[k].budget
            if budget is not None and int(token) in plans[k].watch:
                tokens[k] = budget.start_wait()  # an early end of thinking: "Wait" instead
                forced.add(k)
            else:
                tokens[k], logprobs[k] = int(token), float(lp)
    if forced:
        ordered = sorted(forced)
        values = raw_logprobs(logits, [order[k] for k in ordered], [tokens[k] for k in ordered])
        for k, lp in zip(ordered, values, strict=True):
            logprobs[k] = lp
    return tokens, logprobs


def processor_class() -> type:
    """The vLLM logits processor class (built lazily: it subclasses a vLLM type)."""
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality
    except ImportError as exc:
        raise EngineError("the vllm engine needs vLLM >= 0.10.2 (v1 logits processors)") from exc

    class GumbelMaxProcessor(LogitsProcessor):
        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
            self.rows: dict[int, _RowState] = {}

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            extra = (getattr(sampling_params, "extra_args", None) or {}).get(EXTRA_KEY)
            if extra is not None:
                SamplingParams.model_validate(extra["sampling"])

        def is_argmax_invariant(self) -> bool:
            return False  # it decides the token, so it must run for greedy requests too

        def update_state(self, batch_update: Any) -> None:
            if batch_update is not None:
                apply_batch_update(self.rows, batch_update, MoveDirectionality.SWAP)

        def apply(self, logits: Any) -> Any:
            return force_tokens(logits, self.rows)

    return GumbelMaxProcessor


def native_noise(version: str) -> NoiseScheme | None:
    """The noise scheme vLLM's own sampler follows in this release, or None (then the logits
    processor samples with Flywheel's)."""
    parts = version.split(".")
    try:
        release = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None
    return NOISE_VLLM_GUMBEL if release in NATIVE_RELEASES else None


def runner_env(noise: NoiseScheme | None) -> dict[str, str]:
    """The environment for the sampling path: vLLM's own sampler runs on Model Runner V2 with
    vLLM's own process layout (its engine core in a process of its own, as stock vLLM runs); the
    logits processor on the runner that runs processors, in this process, where it records logprobs."""
    if noise is not None:
        return {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}


def runner_args(noise: NoiseScheme | None) -> dict[str, Any]:
    """`LLM` arguments for the sampling path: vLLM's sampler reporting its own logprobs (z minus
    the log-sum-exp over the allowed set, docs/worker.md), or our logits processor."""
    if noise is not None:
        # float32 Gumbel: the float64 option draws other uniforms, another scheme
        return {"logprobs_mode": "processed_logprobs", "use_fp64_gumbel": False}
    return {"logits_processors": [processor_class()]}


def check_runner(llm: Any, noise: NoiseScheme | None) -> None:
    """The native path's noise is Model Runner V2's: refuse an engine vLLM built on another runner
    (a model or setting V2 does not support), whose traces would not replay."""
    config = getattr(llm.llm_engine, "vllm_config", None)
    if noise is not None and getattr(config, "use_v2_model_runner", True) is False:
        raise EngineError("vLLM did not run Model Runner V2, whose sampler the engine relies on")


def native_request(job: JobSpec, stops: Iterable[int]) -> dict[str, Any]:
    """vLLM `SamplingParams` arguments for one job on vLLM's own sampler: the job's sampling, its
    sample's request seed, and the sampled token's logprob (logprobs=0)."""
    sampling = job.sampling
    greedy = sampling.temperature == 0.0
    return {
        "temperature": sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0 if greedy else sampling.top_k,  # 0: no top-k in vLLM as here
        "seed": vllm_gumbel.request_seed(sampling.seed, job.sample_index),
        "max_tokens": sampling.max_tokens,
        "stop_token_ids": sorted(stops),
        "skip_special_tokens": True,
        "logprobs": 0,
    }


def native_logprobs(completion: Any, token_ids: Sequence[int]) -> list[float]:
    """Per token, the logprob vLLM's sampler reported for it (one {token id: Logprob} per position)."""
    entries = completion.logprobs or []
    if len(entries) != len(token_ids):
        raise EngineError(f"vLLM reported {len(entries)} logprobs for {len(token_ids)} tokens")
    return [float(entry[token].logprob) for entry, token in zip(entries, token_ids, strict=True)]


class VllmEngine:
    verifiable = True
    default_batch = DEFAULT_BATCH

    def __init__(self, llm: Any, model_name: str, noise: NoiseScheme | None = None) -> None:
        self.llm = llm
        self.model_name = model_name
        self.noise = noise
        self.tokenizer = llm.get_tokenizer()
        self.stops = stop_token_ids(self.tokenizer, None)
        self.budget_tokens = BudgetTokenizer(self.tokenizer, self.stops)
        config = llm.llm_engine.model_config
        dtype = str(getattr(config, "dtype", "")).removeprefix("torch.")
        version = package_version("vllm")
        self.info = EngineInfo(name="vllm", version=version, dtype=dtype[:32], device="cuda", noise=noise)

    @classmethod
    def load(
        cls, name: str, *, path: str | None = None, dtype: str = "auto", gpu_memory_utilization: float = 0.85
    ) -> VllmEngine:
        """The model `name`, from `path` when given (a prepared directory), else from where the
        name resolves to."""
        noise = native_noise(package_version("vllm"))
        os.environ.update(runner_env(noise))  # the path must be the one EngineInfo names
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError("the vllm engine needs `pip install openflywheel[vllm]`") from exc
        llm = LLM(
            model=path or resolve_model(name),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=0,
            **runner_args(noise),
        )
        check_runner(llm, noise)
        return cls(llm, name, noise)

    def close(self) -> None:
        """Free the GPU: switching to another policy version loads a new `LLM` in this process."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm.llm_engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        return DEFAULT_BATCH  # vLLM pages its KV cache within --gpu-memory-fraction and queues the rest

    def unsupported(self, job: JobSpec) -> str | None:
        if self.noise is not None and job.budget is not None:
            return "budget forcing needs a per-token processor, which vLLM's own sampler path does not run"
        return None

    def _extra(self, job: JobSpec, key: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"key": key, "sample_index": job.sample_index}
        extra["sampling"] = job.sampling.model_dump()
        if job.budget is not None:
            tokens = self.budget_tokens(job.budget)
            extra["budget"] = {
                "rule": job.budget.model_dump(),
                "think_end_ids": list(tokens.think_end),
                "wait_ids": list(tokens.wait),
                "stops": sorted(tokens.stops),
            }
        return {EXTRA_KEY: extra}

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        if not jobs:
            return []
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        keys = [uuid.uuid4().hex for _ in jobs]
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_token_ids(self.tokenizer, job.messages)) for job in jobs
        ]
        params = [VllmSamplingParams(**self._request(job, key)) for job, key in zip(jobs, keys, strict=True)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        return [self._generation(out, key, elapsed) for out, key in zip(outputs, keys, strict=True)]

    def _request(self, job: JobSpec, key: str) -> dict[str, Any]:
        if self.noise is not None:
            return native_request(job, self.stops)
        return {
            "temperature": 0.0,  # greedy over the one token our processor left finite
            "max_tokens": job.sampling.max_tokens,
            "stop_token_ids": sorted(self.stops),
            "skip_special_tokens": True,
            "extra_args": self._extra(job, key),
        }

    def _generation(self, output: Any, key: str, elapsed: float) -> Generation:
        completion = output.outputs[0]
        token_ids = [int(t) for t in completion.token_ids]
        if self.noise is not None:
            return self._finished(output, token_ids, native_logprobs(completion, token_ids), elapsed)
        with _RECORDS_LOCK:
            records = _RECORDS.pop(key, {})
            _BUDGETS.pop(key, None)
        logprobs = []
        for position, token in enumerate(token_ids):
            recorded = records.get(position)
            if recorded is None or recorded[0] != token:
                raise EngineError(
                    f"vLLM emitted token {token} at position {position}, not the seeded sample {recorded}: "
                    "the logits processor did not run (is VLLM_USE_V2_MODEL_RUNNER=0 honoured?)"
                )
            logprobs.append(recorded[1])
        return self._finished(output, token_ids, logprobs, elapsed)

    def _finished(
        self, output: Any, token_ids: list[int], logprobs: list[float], elapsed: float
    ) -> Generation:
        completion = output.outputs[0]
        reason = FinishReason.length if completion.finish_reason == "length" else FinishReason.stop
        return Generation(
            # the text the validator decodes from the ids (ml/prompts.py), not vLLM's detokenizer's
            text=decode_completion(self.tokenizer, token_ids, self.stops),
            completion_token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=reason,
            prompt_tokens=len(output.prompt_token_ids or []),
            generate_s=elapsed,
        )

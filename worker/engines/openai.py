"""OpenAI-compatible engine: delegate generation to a local server (vLLM serve, SGLang, llama.cpp...).

Such a server samples with its own RNG, not with Flywheel's seeded Gumbel-max, so its sampled
traces cannot be validated by re-scoring: the engine reports `verifiable = False` (greedy, T = 0,
traces stay checkable since they need no noise). When the model's tokenizer can be loaded, the
prompt is rendered here with its chat template and sent to `/completions`, so the exact prompt
tokens are known; otherwise the messages go to `/chat/completions`.

Budget forcing runs on text, in rounds: the thinking span is generated with `think_end` as a stop
string, then `wait_text` or `think_end` is appended and the completion continued. A server cannot
suppress a string, so once the waits are used up an early end of thinking stands; such traces
are never marked verifiable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from ml.loading import load_tokenizer as ml_tokenizer
from shared.assets import ModelSource
from shared.protocol import MAX_BATCH, BudgetForcing, EngineInfo, FinishReason, JobSpec
from worker.engines.base import Generation, ShouldStop
from worker.engines.prompt import render_prompt
from worker.errors import EngineError

log = logging.getLogger("flywheel.worker.engine")
TOKEN_ID_PREFIX = "token_id:"
FINISH = {"stop": FinishReason.stop, "eos": FinishReason.stop, "length": FinishReason.length}


def load_tokenizer(model: str) -> Any | None:
    """The model's tokenizer when transformers and the files are available locally, else None."""
    try:
        return ml_tokenizer(ModelSource.named(model))
    except Exception as exc:  # any failure just means: let the server apply its own template
        log.info("no local tokenizer for %s (%s); using /chat/completions", model, type(exc).__name__)
        return None


def token_ids_from(tokens: Sequence[str], text: str, tokenizer: Any | None) -> list[int]:
    """Ids from `token_id:N` strings (vLLM's return_tokens_as_token_ids), else a re-tokenisation."""
    if tokens and all(t.startswith(TOKEN_ID_PREFIX) for t in tokens):
        return [int(t.removeprefix(TOKEN_ID_PREFIX)) for t in tokens]
    if tokenizer is not None:
        return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return []


class OpenAIEngine:
    verifiable = False

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        served_model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        tokenizer: Any | None = None,
        use_tokenizer: bool = True,
    ) -> None:
        self.model_name = model_name
        self.served_model = served_model or model_name
        self.concurrency = concurrency
        self.default_batch = concurrency
        self.tokenizer = (
            tokenizer if tokenizer is not None or not use_tokenizer else load_tokenizer(model_name)
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.info = EngineInfo(name="openai", device=(urlsplit(base_url).netloc or base_url)[:64])

    def close(self) -> None:
        self._http.close()

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        return MAX_BATCH  # the server manages its own memory

    def unsupported(self, job: JobSpec) -> str | None:
        if job.budget is not None and self.tokenizer is None:
            return "budget forcing through an OpenAI-compatible server needs the model's tokenizer here"
        return None

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(self._one, jobs))

    def _body(self, job: JobSpec) -> dict[str, Any]:
        s = job.sampling
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed & 0x7FFFFFFF,  # servers take a 31-bit seed; it is only a hint here
            "return_tokens_as_token_ids": True,
        }
        if s.top_k > 0:
            body["top_k"] = s.top_k
        return body

    def _one(self, job: JobSpec) -> Generation:
        if job.budget is not None:
            return self._budgeted(job, job.budget)
        started = time.perf_counter()
        s = job.sampling
        body = self._body(job)
        try:
            text, tokens, logprobs, reason, usage = self._request(job, body)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"malformed answer from the OpenAI-compatible server: {exc!r}") from exc
        return Generation(
            text=text,
            completion_token_ids=token_ids_from(tokens, text, self.tokenizer),
            logprobs=logprobs,
            finish_reason=FINISH.get(reason, FinishReason.error),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            generate_s=time.perf_counter() - started,
            verifiable=s.temperature == 0.0,
        )

    def _budgeted(self, job: JobSpec, budget: BudgetForcing) -> Generation:
        started = time.perf_counter()
        prompt = render_prompt(self.tokenizer, job.messages)
        trace = _Trace(self.tokenizer)
        thinking, waits, finish = True, 0, None
        while finish is None:
            left = job.sampling.max_tokens - len(trace.ids)
            room = (
                left
                if budget.max_thinking_tokens is None or not thinking
                else min(left, budget.max_thinking_tokens - len(trace.ids))
            )
            if left <= 0:
                finish = FinishReason.length
            elif thinking and room <= 0:
                trace.force(budget.think_end)  # the thinking budget is spent
                thinking = False
            elif not thinking:
                finish = FINISH.get(self._continue(job, prompt, trace, left, None)[0], FinishReason.error)
            else:
                reason, stopped_at = self._continue(job, prompt, trace, room, budget.think_end)
                if reason != "stop":
                    continue  # length: the next round forces think_end or ends the completion
                if len(trace.ids) < budget.min_thinking_tokens and waits < budget.max_waits:
                    trace.force(budget.wait_text)
                    waits += 1
                elif stopped_at is None:
                    finish = FinishReason.stop  # the model ended the whole completion
                else:
                    trace.force(budget.think_end)
                    thinking = False
        return trace.generation(finish, time.perf_counter() - started)

    def _continue(
        self, job: JobSpec, prompt: str, trace: _Trace, max_tokens: int, stop: str | None
    ) -> tuple[str, str | None]:
        """One round on prompt + the text so far; returns (finish reason, the stop string it hit)."""
        body = {**self._body(job), "prompt": prompt + trace.text, "max_tokens": max_tokens, "logprobs": 1}
        if stop is not None:
            body["stop"] = [stop]
        try:
            data = self._post("/completions", body)
            text, tokens, logprobs, reason, usage = self._parse_completion(data)
            stop_reason = data["choices"][0].get("stop_reason", stop)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"malformed answer from the OpenAI-compatible server: {exc!r}") from exc
        trace.add(text, token_ids_from(tokens, text, self.tokenizer), logprobs)
        if trace.prompt_tokens == 0:
            trace.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        # vLLM names the stop string it matched (None for an end-of-sequence token); a server that
        # does not say is taken to have hit the string, so the answer still gets its round.
        return reason, stop_reason if isinstance(stop_reason, str) else None

    def _request(self, job: JobSpec, body: dict[str, Any]) -> tuple[str, list[str], list[float], str, Any]:
        if self.tokenizer is not None:
            body.update(prompt=render_prompt(self.tokenizer, job.messages), logprobs=1)
            return self._parse_completion(self._post("/completions", body))
        body.update(messages=[m.model_dump() for m in job.messages], logprobs=True)
        return self._parse_chat(self._post("/chat/completions", body))

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise EngineError(
                f"OpenAI-compatible server unreachable at {self._http.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise EngineError(f"POST {path}: {response.status_code}: {response.text[:300]}", status_code=502)
        data: dict[str, Any] = response.json()
        return data

    @staticmethod
    def _parse_completion(data: dict[str, Any]) -> tuple[str, list[str], list[float], str, dict[str, Any]]:
        choice = data["choices"][0]
        lp = choice.get("logprobs") or {}
        values = [float(v) if v is not None else 0.0 for v in lp.get("token_logprobs") or []]
        return (
            choice["text"],
            list(lp.get("tokens") or []),
            values,
            choice.get("finish_reason"),
            data.get("usage") or {},
        )

    @staticmethod
    def _parse_chat(data: dict[str, Any]) -> tuple[str, list[str], list[float], str, dict[str, Any]]:
        choice = data["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        tokens = [str(item["token"]) for item in content]
        values = [float(item["logprob"]) for item in content]
        text = choice["message"].get("content") or ""
        return text, tokens, values, choice.get("finish_reason"), data.get("usage") or {}


class _Trace:
    """A completion assembled over several rounds; forced strings get logprob 0 (unknown here)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.text = ""
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.prompt_tokens = 0

    def add(self, text: str, ids: list[int], logprobs: list[float]) -> None:
        self.text += text
        self.ids += ids
        self.logprobs += logprobs[: len(ids)] + [0.0] * max(0, len(ids) - len(logprobs))

    def force(self, text: str) -> None:
        ids = [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        self.add(text, ids, [0.0] * len(ids))

    def generation(self, finish: FinishReason, elapsed: float) -> Generation:
        return Generation(
            text=self.text,
            completion_token_ids=self.ids,
            logprobs=self.logprobs,
            finish_reason=finish,
            prompt_tokens=self.prompt_tokens,
            generate_s=elapsed,
            verifiable=False,
        )

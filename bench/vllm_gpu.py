"""Flywheel's vLLM engine on a GPU: the daemon against a validating coordinator, and the bare engine
side by side with stock vLLM on the same prompts.

Two stages, each a separate command (so each fits one device call; `--work` keeps their files):

- `daemon`: builds the random Qwen2 of bench/worker_gpu.py, starts the real coordinator with every
  trace drawn for validation (`FLYWHEEL_VALIDATION_FLOOR=1`, the validator on the same GPU in float32)
  and runs `flywheel worker run --engine vllm` until the campaign is drained. It then waits for the
  validations to settle and reports the daemon's rate, the noise scheme the traces name, and how
  many honest traces the validator passed and flagged (the target is 0 flagged).
- `bare`: the campaign's exported jobs generated twice, each in a fresh process: by stock vLLM
  (`LLM(model)`, plain `SamplingParams` with the request seed the job implies, nothing of Flywheel's
  loaded) and by Flywheel's engine (`VllmEngine`). Both runs time `generate` alone, after a warm-up
  batch, and print tokens/s, their ratio (target >= 0.95), and the share of identical completions
  (on vLLM's own sampler path both should draw the same tokens).

    python -m bench.vllm_gpu daemon --work /root/vbench
    python -m bench.vllm_gpu bare --work /root/vbench
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.net import free_port
from bench.worker_gpu import (
    Config,
    build_model,
    environment,
    exported_jobs,
    job_specs,
    run_daemon,
    setup_campaign,
    start_coordinator,
)

SETTLE_S = 600.0  # validations of the whole campaign, on the GPU the engine also uses


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["daemon", "bare", "one", "check"])
    p.add_argument("--work", type=Path, required=True, help="folder the stages share")
    p.add_argument("--size", default="0.5b")
    p.add_argument("--problems", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-leases", type=int, default=512)
    p.add_argument("--gpu-fraction", type=float, default=0.5, help="vLLM's share of GPU memory")
    p.add_argument("--which", choices=["stock", "flywheel"], help="(stage one) the engine to time")
    return p.parse_args(argv)


def config(a: argparse.Namespace) -> Config:
    return Config(a.size, "cuda", a.problems, a.samples, a.max_tokens, "auto", a.max_leases, a.work)


# --------------------------------------------------------------------------- stage: daemon


def validating_env(cfg: Config) -> dict[str, str]:
    env = environment(cfg)
    env.update(
        FLYWHEEL_VALIDATION_ENABLED="true",
        FLYWHEEL_VALIDATION_FLOOR="1.0",  # every trace is drawn: all of them are re-scored
        FLYWHEEL_VALIDATION_DEVICE="cuda",
        FLYWHEEL_VALIDATION_DTYPE="float32",
    )
    return env


def trace_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql).fetchall())


def settle(db: Path) -> dict[str, int]:
    """Wait until no trace waits for its validation; the count of traces per validation state."""
    deadline = time.monotonic() + SETTLE_S
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = trace_rows(db, "SELECT validation, count(*) FROM traces GROUP BY 1")
        states = {str(state): int(n) for state, n in rows}
        if not any(state in states for state in ("None", "queued", "recheck")):
            return states
        time.sleep(2)
    raise RuntimeError(f"validations did not settle in {SETTLE_S:.0f} s: {states}")


def daemon_stage(a: argparse.Namespace) -> dict[str, Any]:
    cfg = config(a)
    cfg.work.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.work / "model", cfg.size, "cuda")
    env = validating_env(cfg)
    setup_campaign(cfg, env, model)
    port = free_port()
    server = start_coordinator(env, port, cfg.work / "coordinator.log")
    flags = ("--engine", "vllm", "--gpu-memory-fraction", str(a.gpu_fraction))
    try:
        status = run_daemon(cfg, env, f"http://127.0.0.1:{port}", model, flags)
        states = settle(cfg.work / "bench.db")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    rows = exported_jobs(env, cfg.work / "traces.jsonl")
    (cfg.work / "jobs.json").write_text(json.dumps(rows))
    engines = trace_rows(cfg.work / "bench.db", "SELECT DISTINCT engine FROM traces")
    wall = float(status["last_ack_at"]) - float(status["work_started_at"])
    return {
        "stage": "daemon", "device": gpu_name(), "jobs": status["generated"], "tokens": status["tokens"],
        "daemon_wall_s": round(wall, 2), "daemon_tokens_per_s": round(status["tokens"] / wall, 1),
        "largest_batch": status["largest_batch"], "engines": [json.loads(e[0]) for e in engines],
        "validation": states, "honest_flagged": states.get("failed", 0) + states.get("error", 0),
    }  # fmt: skip


# --------------------------------------------------------------------------- stage: bare


def request_args(spec: Any, stops: Iterable[int]) -> dict[str, Any]:
    """Plain vLLM SamplingParams for a job: its temperature, top-k/top-p, length and the request
    seed its (seed, sample index) implies. No logprobs: stock use asks for none."""
    from shared.vllm_gumbel import request_seed

    sampling = spec.sampling
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k or 0,
        "seed": request_seed(sampling.seed, spec.sample_index),
        "max_tokens": sampling.max_tokens,
        "stop_token_ids": sorted(stops),
        "skip_special_tokens": True,
    }


def stock_run(model: Path, specs: list[Any], fraction: float) -> tuple[list[list[int]], float]:
    from vllm import LLM
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt

    from ml.loading import stop_token_ids
    from worker.engines.prompt import prompt_token_ids

    llm = LLM(model=str(model), dtype="auto", gpu_memory_utilization=fraction, seed=0)
    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(tokenizer, None)
    prompts = [TokensPrompt(prompt_token_ids=prompt_token_ids(tokenizer, s.messages)) for s in specs]
    params = [VllmSamplingParams(**request_args(s, stops)) for s in specs]
    llm.generate(prompts[:64], params[:64], use_tqdm=False)  # warm-up: shapes, graphs, allocator
    began = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    return [[int(t) for t in out.outputs[0].token_ids] for out in outputs], seconds


def flywheel_run(model: Path, specs: list[Any], fraction: float) -> tuple[list[list[int]], float]:
    from worker.engines.vllm import VllmEngine

    engine = VllmEngine.load(str(model), path=str(model), gpu_memory_utilization=fraction)
    print(f"flywheel engine: {engine.info.model_dump()}", flush=True)
    engine.generate(specs[:64])
    began = time.perf_counter()
    generations = engine.generate(specs)
    seconds = time.perf_counter() - began
    engine.close()
    return [g.completion_token_ids for g in generations], seconds


def one_stage(a: argparse.Namespace) -> dict[str, Any]:
    """One engine over the exported jobs, in this process; writes its tokens for the comparison."""
    rows = json.loads((a.work / "jobs.json").read_text())
    model = a.work / "model"
    specs = job_specs(rows, model)
    run = stock_run if a.which == "stock" else flywheel_run
    tokens, seconds = run(model, specs, a.gpu_fraction)
    (a.work / f"tokens-{a.which}.json").write_text(json.dumps(tokens))
    count = sum(len(t) for t in tokens)
    result = {"which": a.which, "tokens": count, "seconds": round(seconds, 3),
              "tokens_per_s": round(count / seconds, 1)}  # fmt: skip
    (a.work / f"result-{a.which}.json").write_text(json.dumps(result))
    return result


def bare_stage(a: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for which in ("stock", "flywheel"):
        cmd = [sys.executable, "-m", "bench.vllm_gpu", "one", "--which", which, "--work", str(a.work),
               "--gpu-fraction", str(a.gpu_fraction)]  # fmt: skip
        log = a.work / f"bare-{which}.log"
        # Stock vLLM on its faster runner (Model Runner V2), the one Flywheel's engine samples on.
        env = {**os.environ, "VLLM_USE_V2_MODEL_RUNNER": "1"}
        with log.open("wb") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the {which} run failed:\n" + log.read_text()[-4000:])
        results[which] = json.loads((a.work / f"result-{which}.json").read_text())
    stock = json.loads((a.work / "tokens-stock.json").read_text())
    ours = json.loads((a.work / "tokens-flywheel.json").read_text())
    same = sum(x == y for x, y in zip(stock, ours, strict=True)) / max(1, len(stock))
    ratio = results["flywheel"]["tokens_per_s"] / results["stock"]["tokens_per_s"]
    return {"stage": "bare", "device": gpu_name(), **results, "ratio": round(ratio, 3),
            "identical_completions": round(same, 3)}  # fmt: skip


def check_stage(a: argparse.Namespace) -> dict[str, Any]:
    """Without a coordinator: Flywheel's vLLM engine generates `--problems` x `--samples` jobs on a
    fresh random model, and the validator re-scores each trace on the same GPU in float32 (the
    coordinator's validation path, `coordinator.trust.validator.validate`); then once more with one
    token of each trace changed, which must fail."""
    from dataclasses import replace

    from coordinator.trust.validator import Submitted, validate
    from ml.scorer import scorer
    from shared.protocol import ChatMessage, JobSpec, ModelRef, SamplingParams
    from worker.engines.vllm import VllmEngine

    a.work.mkdir(parents=True, exist_ok=True)
    model = build_model(a.work / "model", a.size, "cuda")
    specs = [
        JobSpec(job_id=uuid.uuid4(), campaign_id=uuid.uuid4(), problem_id=f"p{i // a.samples}",
                messages=[ChatMessage(role="user", content=f"What is {17 * i} + {i * i}?")],
                model=ModelRef(name=str(model)), samples_per_problem=a.samples, sample_index=i % a.samples,
                sampling=SamplingParams(temperature=[1.0, 0.7, 1.0, 0.0][i % 4], max_tokens=a.max_tokens,
                                        seed=1000 + i // a.samples))
        for i in range(a.problems * a.samples)
    ]  # fmt: skip
    engine = VllmEngine.load(str(model), path=str(model), gpu_memory_utilization=a.gpu_fraction)
    generations = engine.generate(specs)
    noise, dtype = engine.info.noise, engine.info.dtype
    engine.close()
    claims = [Submitted(spec, g.completion_token_ids, g.logprobs, g.finish_reason.value, g.text, dtype, noise)
              for spec, g in zip(specs, generations, strict=True)]  # fmt: skip
    validator = scorer(str(model), None, "cuda", "float32")
    honest = [c.outcome for c in validate(validator, claims)]
    flipped = [replace(c, tokens=[*c.tokens[:-1], (c.tokens[-1] + 1) % 1000]) for c in claims]
    tampered = [c.outcome for c in validate(validator, flipped)]
    reasons = sorted({o.reason for o in honest if not o.passed})[:5]
    return {"stage": "check", "device": gpu_name(), "noise": noise, "traces": len(claims),
            "tokens": sum(len(c.tokens) for c in claims), "honest_passed": sum(o.passed for o in honest),
            "tampered_caught": sum(not o.passed for o in tampered), "honest_failures": reasons}  # fmt: skip


def gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "no GPU"


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    stages = {"daemon": daemon_stage, "bare": bare_stage, "one": one_stage, "check": check_stage}
    result = stages[a.stage](a)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

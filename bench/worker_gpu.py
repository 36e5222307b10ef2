"""Worker GPU throughput: the full daemon against a running coordinator, next to the bare engine.

The benchmark builds a randomly initialised Qwen2 (by default the shape of Qwen2.5-0.5B: 24
layers, hidden 896, vocabulary 151,936; random weights, since none can be downloaded, and the
throughput of a shape does not depend on its weights) with a byte-level tokenizer, starts the
real coordinator (`flywheel coordinator serve`, SQLite, in-process verification) with a GSM8K
campaign of n samples per problem, and runs `flywheel worker run` against it until the campaign
is drained. It then exports the campaign's jobs and generates exactly those prompts (same
sampling parameters, seeds and sample indices, in batches of the size the daemon chose) with the
same engine in this process, and prints both rates and their ratio.

- daemon tokens/s: completion tokens / (last acknowledgement - start of work); start of work is
  when the daemon had loaded its model and began leasing, so the rate includes leasing,
  spooling, submitting and every gap between batches.
- bare engine tokens/s: completion tokens / time inside `engine.generate`, in two passes over
  the same jobs: the first from a fresh engine, as cold as the daemon's start (`ratio_cold`:
  like for like), the second with every shape already seen (`ratio_warm`).

The coordinator runs beside the daemon with spot-check validation off: its validator would load
the model onto the GPU under test, where a real coordinator's runs on its own machine.

    python -m bench.worker_gpu                                   # on a GPU
    python -m bench.worker_gpu --size small --device cpu --problems 3 --samples 2 --max-tokens 12
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.net import free_port

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "vocab_size")  # fmt: skip
SIZES: dict[str, dict[str, Any]] = {
    "0.5b": dict(zip(SHAPE, (896, 4864, 24, 14, 2, 151_936), strict=True)),  # Qwen2.5-0.5B's shape: 494M
    "small": dict(zip(SHAPE, (128, 256, 2, 4, 2, 4096), strict=True)),
}
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class Config:
    size: str
    device: str
    problems: int
    samples: int
    max_tokens: int
    batch_size: str
    max_leases: int
    work: Path


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--problems", type=int, default=128, help="GSM8K test problems in the campaign")
    p.add_argument("--samples", type=int, default=8, help="samples per problem")
    p.add_argument("--max-tokens", type=int, default=256, help="completion tokens per job")
    p.add_argument("--batch-size", default="auto", help="the daemon's --batch-size (auto: from free memory)")
    p.add_argument("--max-leases", type=int, default=512, help="the daemon's --max-leases")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, deleted after)")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    return Config(a.size, a.device, a.problems, a.samples, a.max_tokens, a.batch_size, a.max_leases, work)


# --------------------------------------------------------------------------- the model


def byte_symbols() -> list[str]:
    """The printable stand-in of each byte, as byte-level BPE vocabularies spell them."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def build_tokenizer(vocab_size: int) -> Any:
    """Byte-level, no merges: prompts encode one token per byte. The vocabulary is padded to the
    model's size with multi-byte entries, so every id the model samples decodes to bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = byte_symbols()
    names = [*SPECIALS, *symbols]
    pairs = (a + b for a in symbols for b in symbols)
    triples = (a + b + c for a in symbols[:64] for b in symbols for c in symbols)
    for name in (*pairs, *triples):
        if len(names) >= vocab_size:
            break
        names.append(name)
    core = Tokenizer(models.BPE(vocab={name: i for i, name in enumerate(names)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


def build_model(folder: Path, size: str, device: str) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = SIZES[size]
    tokenizer = build_tokenizer(shape["vocab_size"])
    config = Qwen2Config(
        **shape,
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model: Any
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model = model.to(torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: random Qwen2 ({size}), {params / 1e6:.0f}M parameters, in {folder}", flush=True)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # leave the GPU to the daemon
    return folder


# --------------------------------------------------------------------------- processes


def environment(cfg: Config) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        DATABASE_URL=f"sqlite:///{cfg.work / 'bench.db'}",
        FLYWHEEL_DATA_DIR=str(cfg.work / "data"),
        FLYWHEEL_MAX_IN_FLIGHT_PER_WORKER=str(cfg.max_leases),
        # The daemon's throughput is measured, not a new volunteer's ramp up to its limit.
        FLYWHEEL_INITIAL_IN_FLIGHT_PER_WORKER=str(cfg.max_leases),
        FLYWHEEL_LEASE_TTL_S="900",
        TOKENIZERS_PARALLELISM="false",
        # The coordinator's spot-check validator would load the model on this same GPU and take
        # turns with the daemon under test; a real coordinator validates on its own machine.
        FLYWHEEL_VALIDATION_ENABLED="false",
    )
    return env


def flywheel(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flywheel", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"flywheel {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def setup_campaign(cfg: Config, env: dict[str, str], model: Path) -> None:
    flywheel(env, "coordinator", "migrate")
    flywheel(env, "coordinator", "problems", "gsm8k", "--name", "bench", "--limit", str(cfg.problems))
    flywheel(env, "coordinator", "campaign", "--name", "bench", "--problem-set", "bench",
             "--model", str(model), "--samples", str(cfg.samples), "--max-tokens", str(cfg.max_tokens),
             "--temperature", "1.0", "--seed", "7")  # fmt: skip


def start_coordinator(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    # It stands in for a server elsewhere: at the lowest CPU priority, its request handling and
    # in-process verification do not take CPU time from the daemon's decode loop.
    cmd = ["nice", "-n", "19", sys.executable, "-m", "flywheel", "coordinator", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    raise RuntimeError("the coordinator did not start:\n" + log.read_text()[-3000:])


def run_daemon(
    cfg: Config, env: dict[str, str], url: str, model: Path, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """`flywheel worker run` until the campaign is drained; `extra` adds daemon flags (an engine)."""
    token = flywheel(
        env, "worker", "register", "--coordinator", url, "--name", "bench-gpu", "--model", str(model)
    )
    state = cfg.work / "worker"
    cmd = [sys.executable, "-m", "flywheel", "worker", "run", "--coordinator", url, "--token", token.strip(),
           "--model", str(model), "--device", cfg.device, "--name", "bench-gpu", "--state-dir", str(state),
           "--batch-size", cfg.batch_size, "--max-leases", str(cfg.max_leases), "--exit-when-idle", "3",
           "--progress", "plain", "--poll-interval", "1", *extra]  # fmt: skip
    log = cfg.work / "worker.log"
    with log.open("wb") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError("the worker failed:\n" + log.read_text()[-3000:])
    status: dict[str, Any] = json.loads((state / "daemon.json").read_text())
    return status


def exported_jobs(env: dict[str, str], out: Path) -> list[dict[str, Any]]:
    flywheel(env, "coordinator", "export", "bench", "--format", "jsonl", "--out", str(out),
             "--status", "accepted", "rejected", "pending")  # fmt: skip
    # split on "\n" only: completions of random weights hold U+2028 and friends, which
    # str.splitlines() would also split on
    return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line.strip()]


# --------------------------------------------------------------------------- the bare engine


def job_specs(rows: list[dict[str, Any]], model: Path) -> list[Any]:
    """The exported jobs as the daemon received them: same messages, sampling, seed, index."""
    from shared.protocol import ChatMessage, JobSpec, ModelRef, SamplingParams

    specs = []
    for row in sorted(rows, key=lambda r: (r["problem_id"], r["sample_index"])):
        messages = [ChatMessage.model_validate(m) for m in row["messages"] if m["role"] != "assistant"]
        specs.append(JobSpec(
            job_id=uuid.uuid4(), campaign_id=uuid.uuid4(), problem_id=str(row["problem_id"]),
            messages=messages, model=ModelRef(name=str(model)), samples_per_problem=1,
            sampling=SamplingParams.model_validate(row["sampling"]), sample_index=int(row["sample_index"]),
        ))  # fmt: skip
    return specs


def bare_pass(engine: Any, specs: list[Any], batch: int) -> tuple[int, float, list[Any]]:
    tokens, busy, generations, seconds = 0, 0.0, [], []
    for start in range(0, len(specs), batch):
        began = time.perf_counter()
        out = engine.generate(specs[start : start + batch])
        seconds.append(round(time.perf_counter() - began, 2))
        busy += seconds[-1]
        tokens += sum(len(g.completion_token_ids) for g in out)
        generations += out
    print(f"bare engine pass: {tokens} tokens, seconds per batch {seconds}", flush=True)
    return tokens, busy, generations


def run_bare_engine(
    cfg: Config, model: Path, specs: list[Any], batch: int
) -> tuple[list[tuple[int, float, list[Any]]], dict[str, float]]:
    """Two passes over the same jobs: the first starts as cold as the daemon did, the second
    runs warm; the daemon is compared with the faster of the two. Then, on the same jobs: the
    plain decode loop (where the static decoder ran), where a plain-loop step's time goes,
    plain `transformers` generate, and the bandwidth bound."""
    from worker.engines.hf import TransformersEngine

    engine = TransformersEngine.load(str(model), device=cfg.device)
    print(
        f"bare engine decoder: {'static cache + CUDA graphs' if engine.decoder else 'plain loop'}", flush=True
    )
    passes = [bare_pass(engine, specs, batch) for _ in range(2)]
    extra: dict[str, float] = {}
    if engine.decoder is not None:  # the plain loop on the same jobs, for the ratio
        engine.decoder = None
        tokens, busy, _ = bare_pass(engine, specs, batch)
        extra["plain_loop_tokens_per_s"] = round(tokens / busy, 1)
    extra.update(step_breakdown(engine, specs[:batch]))
    extra["hf_generate_tokens_per_s"] = round(hf_generate(engine, specs, batch), 1)
    extra.update(bandwidth_bound(engine, specs, batch, cfg.device))
    engine.close()
    return passes, extra


def hf_generate(engine: Any, specs: list[Any], batch: int) -> float:
    """Plain `transformers` `model.generate` (its own sampler, not a verifiable one) on the same
    prompts in batches of the same size: completion tokens per second."""
    import torch

    model = engine.model
    tokens = 0
    busy = 0.0
    for start in range(0, len(specs), batch):
        chunk = specs[start : start + batch]
        prompts = [engine._prompt(spec) for spec in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[engine.pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                max_new_tokens=chunk[0].sampling.max_tokens, pad_token_id=engine.pad_id,
            )  # fmt: skip
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        busy += time.perf_counter() - began
        tokens += int((out[:, width:] != engine.pad_id).sum())
    return tokens / busy


# Peak memory bandwidth by GPU (vendor datasheets), for the bound; other GPUs: --bandwidth-tbs.
BANDWIDTH_TBS = {"H200": 4.8, "H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "A100-SXM4-80GB": 2.039}


def bandwidth_bound(engine: Any, specs: list[Any], batch: int, device: str) -> dict[str, float]:
    """Decode tokens/s if every step only had to read the weights once and each row's KV cache at
    the batch's average length, at the GPU's peak bandwidth: the ceiling no engine passes."""
    name = gpu_name(device)
    tbs = next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
    if tbs is None:
        return {}
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    shape = engine.shape
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * shape.dtype_bytes
    prompt = sum(len(engine._prompt(s)) for s in specs[:batch]) / max(1, min(batch, len(specs)))
    context = prompt + specs[0].sampling.max_tokens / 2
    step_bytes = weights + batch * context * per_token
    return {"bandwidth_tbs": tbs, "bound_tokens_per_s": round(batch * tbs * 1e12 / step_bytes, 1)}


def step_breakdown(engine: Any, specs: list[Any], steps: int = 16) -> dict[str, float]:
    """Milliseconds per decode step in the model's forward pass and in the seeded sampler, for
    one batch of the daemon's size (timed after a warm-up step, synchronised on the GPU)."""
    import torch

    from shared.sampling import sample_step

    def synced() -> float:
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    rows = [engine._row(spec) for spec in specs]
    forward = sampler = 0.0
    with torch.inference_mode():
        logits, cache, mask, pos = engine._prefill(rows)
        feed = torch.full((len(rows), 1), engine.pad_id, device=mask.device)
        for step in range(steps + 1):
            began = synced()
            sample_step(torch, logits, [s.sampling.seed for s in specs], [s.sample_index for s in specs],
                        [step] * len(specs), [s.sampling for s in specs])  # fmt: skip
            sampled = synced()
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = engine.model(input_ids=feed, attention_mask=mask, position_ids=pos[:, None],
                               past_key_values=cache, use_cache=True)  # fmt: skip
            logits, cache, pos = out.logits[:, -1, :], out.past_key_values, pos + 1
            done = synced()
            if step:  # the first step warms up
                sampler, forward = sampler + sampled - began, forward + done - sampled
    return {"forward_ms": round(1000 * forward / steps, 2), "sampler_ms": round(1000 * sampler / steps, 2)}


def same_completions(rows: list[dict[str, Any]], generations: list[Any]) -> float:
    """Share of jobs whose completion the bare engine reproduced exactly (seeded sampling; batch
    composition and bf16 rounding are the only differences)."""
    ordered = sorted(rows, key=lambda r: (r["problem_id"], r["sample_index"]))
    same = sum(r["completion"] == g.text for r, g in zip(ordered, generations, strict=True))
    return same / max(1, len(rows))


# --------------------------------------------------------------------------- report


def gpu_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return f"CPU ({os.cpu_count()} cores)"


def report(
    cfg: Config,
    status: dict[str, Any],
    passes: list[tuple[int, float, list[Any]]],
    extra: dict[str, float],
) -> dict[str, Any]:
    wall = float(status["last_ack_at"]) - float(status["work_started_at"])
    daemon_tps = status["tokens"] / wall
    rates = [tokens / busy for tokens, busy, _ in passes]
    result = {
        "device": gpu_name(cfg.device), "model": f"random Qwen2 {cfg.size}", "jobs": status["generated"],
        "problems": cfg.problems, "samples": cfg.samples, "max_tokens": cfg.max_tokens,
        "batch": status["largest_batch"], "max_leases": cfg.max_leases,
        "daemon_tokens": status["tokens"], "daemon_wall_s": round(wall, 2),
        "daemon_engine_busy": round(status["generate_s"] / wall, 3),
        "daemon_tokens_per_s": round(daemon_tps, 1), "accepted": status["accepted"],
        "bare_tokens": passes[0][0], "bare_passes_s": [round(busy, 2) for _, busy, _ in passes],
        "bare_passes_tokens_per_s": [round(r, 1) for r in rates],
        "ratio_cold": round(daemon_tps / rates[0], 3), "ratio_warm": round(daemon_tps / rates[-1], 3),
        **extra,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(
        f"\n{result['device']}: daemon {daemon_tps:,.0f} tok/s ({status['tokens']} tokens in {wall:.1f} s, "
        f"engine busy {result['daemon_engine_busy']:.0%}); bare engine {rates[0]:,.0f} tok/s cold, "
        f"{rates[-1]:,.0f} tok/s warm; ratio {result['ratio_cold']:.3f} cold, "
        f"{result['ratio_warm']:.3f} warm",
        flush=True,
    )
    for key in ("plain_loop_tokens_per_s", "hf_generate_tokens_per_s", "bound_tokens_per_s"):
        if result.get(key):
            print(
                f"  bare engine (warm) / {key.removesuffix('_tokens_per_s')}: {rates[-1] / result[key]:.3f}"
            )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.work.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.work / "model", cfg.size, cfg.device)
    env = environment(cfg)
    setup_campaign(cfg, env, model)
    port = free_port()
    server = start_coordinator(env, port, cfg.work / "coordinator.log")
    try:
        status = run_daemon(cfg, env, f"http://127.0.0.1:{port}", model)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    rows = exported_jobs(env, cfg.work / "traces.jsonl")
    specs = job_specs(rows, model)
    passes, split = run_bare_engine(cfg, model, specs, int(status["largest_batch"]))
    extra = {"identical_completions": round(same_completions(rows, passes[0][2]), 3), **split}
    result = report(cfg, status, passes, extra)
    (cfg.work / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

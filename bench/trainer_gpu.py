"""Trainer throughput on one GPU: SFT in each precision, padded and packed, against float32.

The benchmark builds the randomly initialised Qwen2 of bench/worker_gpu.py (by default
Qwen2.5-0.5B's shape: 494M parameters, vocabulary 151,936; no weights can be downloaded, and a
shape's speed does not depend on its weights) and runs the pipeline's own SFT trainer
(`ml.training.sft.train`, the code an `sft` job runs) on synthetic chat rows of random printable
text, one token per character, for each variant in turn:

- data `fixed`: every row `--length` tokens (no padding to remove: precision alone);
  data `varied`: lengths uniform in [length/8, length] (what packing is for).
- per method (full, LoRA, DoRA): float32 padded (the trainer before mixed precision: the
  baseline), bf16-mixed padded, bf16-mixed packed; and for full fine-tuning on fixed data also
  bf16-mixed packed with gradient checkpointing.

Then GRPO trainer steps (`ml.training.grpo.step`: prescoring with the policy and the reference,
reference logprobs for the KL term, the clipped update) on `--grpo-rollouts` random on-policy
rollouts (`--grpo-varied`: completions of varied length), float32 padded against bf16-mixed padded
and packed: tok/s is the batch's tokens (prompts included) over a step's wall time, the first step
left out.

Reported per SFT variant: train tok/s (every non-padding token of a batch, prompt included, over
the wall time of the steps after `--warmup`), peak GPU memory, the train loss after the last
step, the largest per-step gap to the float32 curve on the same rows, and the ratios to the
float32 baseline of the same method and data. Every variant trains on the same rows in the same
order from the same initial weights.

    python -m bench.trainer_gpu                                  # on a GPU
    python -m bench.trainer_gpu --size small --device cpu --steps 3 --batch-size 4 --length 64
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import shutil
import statistics
import string
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.worker_gpu import SIZES, build_model, gpu_name
from ml.loading import load_model, load_tokenizer
from ml.training import batches, grpo, sft
from shared.assets import ModelSource
from shared.pipeline_types import GrpoSpec, SftSpec

LR = {"full": 1e-5, "lora": 2e-4, "dora": 2e-4}


@dataclass(frozen=True)
class Variant:
    data: str  # fixed or varied
    method: str
    precision: str
    packing: bool
    checkpointing: bool = False

    @property
    def label(self) -> str:
        extra = " + checkpointing" if self.checkpointing else ""
        return f"{self.method} {self.data}: {self.precision}, {'packed' if self.packing else 'padded'}{extra}"

    @property
    def baseline(self) -> Variant:
        return Variant(self.data, self.method, "float32", False)


def variants(methods: Sequence[str], datas: Sequence[str]) -> list[Variant]:
    out = []
    for method in methods:  # full fine-tuning first, both data kinds: what matters most comes first
        for data in datas:
            if data == "varied" and method != "full":
                continue  # packing's gain does not depend on the method: one is enough
            out += [Variant(data, method, p, k) for p, k in (("float32", False), ("bf16-mixed", False))]
            out.append(Variant(data, method, "bf16-mixed", True))
            if method == "full" and data == "fixed":
                out.append(Variant(data, method, "bf16-mixed", True, checkpointing=True))
    return out


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "  .,") for _ in range(n))


def make_rows(tokenizer: Any, count: int, length: int, varied: bool, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows of about `length` tokens (or uniform in [length/8, length]) each: a 32-character
    question, the rest the answer. The byte tokenizer gives one token per character."""
    rng = random.Random(seed)
    question = {"role": "user", "content": _text(rng, 32)}
    overhead = len(batches.encode(tokenizer, [question], "").prompt_ids) + 1  # + the end-of-turn token
    rows = []
    for i in range(count):
        total = rng.randint(max(overhead + 1, length // 8), length) if varied else length
        messages = [{"role": "user", "content": _text(rng, 32)}]
        rows.append({"id": str(i), "messages": messages, "completion": _text(rng, total - overhead)})
    return rows


def spec_for(v: Variant, model: str, cfg: argparse.Namespace) -> SftSpec:
    return SftSpec(
        dataset="0" * 64,
        model=model,
        method=v.method,
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        micro_batch=cfg.micro_batch,
        lr=LR[v.method],
        max_length=cfg.length,
        eval_fraction=0.0,
        checkpoint_every=10**6,
        device=cfg.device,
        precision=v.precision,
        packing=v.packing,
        gradient_checkpointing=v.checkpointing,
    )


def step_tokens(tokenizer: Any, rows: list[dict[str, Any]], spec: SftSpec) -> list[int]:
    """Non-padding tokens of each step's batch, from the trainer's own split and batch order."""
    data = sft._split(tokenizer, rows, spec, "float32")
    lengths = [min(len(e.prompt_ids) + len(e.completion_ids), spec.max_length) for e in data.train]
    steps = sft.total_steps(len(data.train), spec)
    return [sum(lengths[i] for i in sft._batch_rows(s, len(data.train), spec)) for s in range(steps)]


def run_variant(
    v: Variant, folder: Path, rows: list[dict[str, Any]], cfg: argparse.Namespace
) -> dict[str, Any]:
    import torch

    spec = spec_for(v, str(folder), cfg)
    tokens = step_tokens(load_tokenizer(ModelSource(str(folder))), rows, spec)
    stamps: list[float] = []
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    work = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    try:
        result = sft.train(
            rows, ModelSource(str(folder)), spec, work, lambda *_: stamps.append(time.perf_counter())
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cfg.device.startswith("cuda") else 0.0
    timed = tokens[cfg.warmup : len(stamps)]
    seconds = stamps[-1] - stamps[cfg.warmup - 1]
    curve = [loss for _, loss in result.curve["train"]]
    return {
        "variant": v.label,
        "data": v.data,
        "method": v.method,
        "precision": v.precision,
        "packing": v.packing,
        "checkpointing": v.checkpointing,
        "tok_s": sum(timed) / seconds,
        "step_s": seconds / len(timed),
        "peak_gib": peak,
        "final_loss": curve[-1],
        "curve": curve,
    }


def report(results: list[dict[str, Any]]) -> str:
    base = {(r["data"], r["method"]): r for r in results if r["precision"] == "float32" and not r["packing"]}
    lines = [
        "| variant | train tok/s | vs float32 | step s | peak GiB | vs float32 | final loss | max gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = base[(r["data"], r["method"])]
        gap = max(abs(x - y) for x, y in zip(r["curve"], b["curve"], strict=True))
        mem = r["peak_gib"] / b["peak_gib"] if b["peak_gib"] else 0.0
        cells = [r["variant"], f"{r['tok_s']:,.0f}", f"{r['tok_s'] / b['tok_s']:.2f}", f"{r['step_s']:.3f}",
                 f"{r['peak_gib']:.1f}", f"{mem:.2f}", f"{r['final_loss']:.4f}", f"{gap:.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rollouts(policy: Any, cfg: argparse.Namespace, spec: GrpoSpec, version: int) -> list[grpo.Rollout]:
    """`--grpo-rollouts` random rollouts, on-policy: their logprobs are the policy's own in float32."""
    import torch

    gen = torch.Generator().manual_seed(0)
    vocab = policy.config.vocab_size
    shells = []
    for i in range(cfg.grpo_rollouts):
        prompt = torch.randint(3, vocab, (cfg.grpo_prompt,), generator=gen).tolist()
        length = cfg.grpo_completion
        if cfg.grpo_varied:
            length = int(torch.randint(max(1, length // 8), length + 1, (1,), generator=gen))
        completion = torch.randint(3, vocab, (length,), generator=gen).tolist()
        advantage = 1.0 if i % 2 else -1.0
        shells.append(
            grpo.Rollout(
                f"g{i // 8}", version, prompt, completion, [0.0] * len(completion), 0.0, False, advantage
            )
        )
    with torch.inference_mode():
        old = [grpo.token_logprobs(policy, grpo._collate([r], 0), spec.sampling).tolist() for r in shells]
    return [dataclasses.replace(r, old_logprobs=lp) for r, lp in zip(shells, old, strict=True)]


def run_grpo(precision: str, packing: bool, folder: Path, cfg: argparse.Namespace) -> dict[str, Any]:
    """GRPO trainer steps (prescoring, reference logprobs, clipped update) on the same rollouts."""
    import torch

    spec = GrpoSpec(model=str(folder), problem_set_id=uuid.uuid4(), device=cfg.device, precision=precision,
                    micro_batch=cfg.grpo_micro_batch, kl_coef=0.01, max_logprob_gap=10.0,
                    packing=packing)  # fmt: skip
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    policy = load_model(ModelSource(str(folder)), cfg.device, "float32", trainable=True)
    reference = load_model(ModelSource(str(folder)), cfg.device, "float32")
    rollouts = _rollouts(policy, cfg, spec, version=0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, metrics = [], {}
    for _ in range(cfg.grpo_steps):
        began = time.perf_counter()
        metrics = grpo.step(policy, reference, optimizer, rollouts, spec, 0, 0)
        times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cfg.device.startswith("cuda") else 0.0
    tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    seconds = statistics.fmean(times[1:]) if len(times) > 1 else times[0]  # the first step warms up
    return {"precision": precision, "packing": packing, "step_s": seconds, "tok_s": tokens / seconds,
            "peak_gib": peak, "loss": metrics["loss"], "kl": metrics["kl"],
            "trained": metrics["rollouts_trained"]}  # fmt: skip


def grpo_report(results: list[dict[str, Any]]) -> str:
    base = results[0]
    lines = ["| GRPO step | train tok/s | vs float32 | step s | peak GiB | loss | rollouts trained |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        ratio = r["tok_s"] / base["tok_s"]
        label = f"{r['precision']}, {'packed' if r['packing'] else 'padded'}"
        cells = [label, f"{r['tok_s']:,.0f}", f"{ratio:.2f}", f"{r['step_s']:.3f}",
                 f"{r['peak_gib']:.1f}", f"{r['loss']:.5f}", str(r["trained"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the rate")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--length", type=int, default=512, help="tokens per row (the longest, for varied data)")
    p.add_argument("--methods", default="full,lora,dora")
    p.add_argument("--data", default="fixed,varied")
    p.add_argument("--grpo-steps", type=int, default=3, help="GRPO trainer steps per precision (0: none)")
    p.add_argument("--grpo-rollouts", type=int, default=128, help="rollouts per GRPO step (16 groups of 8)")
    p.add_argument("--grpo-prompt", type=int, default=64, help="prompt tokens per rollout")
    p.add_argument("--grpo-completion", type=int, default=256, help="completion tokens per rollout")
    p.add_argument("--grpo-micro-batch", type=int, default=16)
    p.add_argument("--grpo-varied", action="store_true", help="completion lengths uniform in [1/8, 1] of it")
    p.add_argument("--json", type=Path, help="also write every result (curves included) here")
    cfg = p.parse_args(argv)
    if not 1 <= cfg.warmup < cfg.steps:
        p.error("--warmup must be at least 1 and below --steps")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    folder = build_model(Path(tempfile.mkdtemp(prefix="trainer-model-")), cfg.size, cfg.device)
    tokenizer = load_tokenizer(ModelSource(str(folder)))
    data = {kind: make_rows(tokenizer, cfg.batch_size * cfg.steps, cfg.length, kind == "varied")
            for kind in cfg.data.split(",")}  # fmt: skip
    print(
        f"device: {gpu_name(cfg.device)}; {cfg.steps} steps of {cfg.batch_size} rows, length {cfg.length}",
        flush=True,
    )
    results = []
    for v in variants(cfg.methods.split(","), cfg.data.split(",")):
        results.append(run_variant(v, folder, data[v.data], cfg))
        r = results[-1]
        print(
            f"{v.label}: {r['tok_s']:,.0f} tok/s, {r['peak_gib']:.1f} GiB, loss {r['final_loss']:.4f}",
            flush=True,
        )
    print(report(results), flush=True)
    if cfg.json:
        cfg.json.write_text(json.dumps(results, indent=1))
    if cfg.grpo_steps:
        grpo_variants = (("float32", False), ("bf16-mixed", False), ("bf16-mixed", True))
        rl = [run_grpo(precision, packing, folder, cfg) for precision, packing in grpo_variants]
        print(grpo_report(rl), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

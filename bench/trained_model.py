"""A model of Qwen2.5-0.5B's shape (vocabulary 151,936) with trained, peaked distributions.

Validation cost on a large vocabulary depends on how many tokens could still beat the sampled
one at each position: on a random-weight model nearly all of them, on a trained one a few. No
trained model of that size can be downloaded here, so this trains the random Qwen2 that
`bench/worker_gpu.py` builds on GSM8K solutions (full fine-tuning with the pipeline's SFT op) and
writes a servable folder for `python -m bench.trust generate --model <folder>`.

Its tokenizer is byte-level, so the 151,680 multi-byte entries never occur in training and sink
far below the bytes: over the whole vocabulary it is more peaked than a production model; among
the tokens it does use, its distributions are those of a briefly trained model.

    python -m bench.trained_model --out /tmp/peaked --steps 300        # on a GPU, about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.worker_gpu import build_model

DATA = Path(__file__).resolve().parents[1] / "coordinator" / "problems" / "data" / "gsm8k_train.jsonl"


def rows(limit: int) -> list[dict[str, Any]]:
    """GSM8K train problems with their reference solutions as completions."""
    out = []
    with DATA.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if index >= limit:
                break
            record = json.loads(line)
            answer = record["answer"].split("####")[-1].strip()
            completion = record["answer"].split("####")[0].strip() + f"\nThe answer is \\boxed{{{answer}}}."
            messages = [
                {"role": "user", "content": record["question"]},
                {"role": "assistant", "content": completion},
            ]
            out.append({"id": f"gsm8k-train-{index}", "messages": messages,
                        "prompt": record["question"], "completion": completion})  # fmt: skip
    return out


def train(out: Path, steps: int, batch: int, device: str, size: str = "0.5b") -> Path:
    from ml.training import sft
    from shared.assets import SERVING_FILES, ModelSource
    from shared.pipeline_types import SftSpec

    random = build_model(out.parent / f"{out.name}-random", size, device)
    spec = SftSpec.model_validate(
        {"dataset": "0" * 64, "model": str(random), "method": "full", "max_steps": steps,
         "batch_size": batch, "lr": 3e-4, "warmup_steps": 20, "eval_fraction": 0.0,
         "max_length": 768, "device": device, "seed": 0}
    )  # fmt: skip
    began = time.perf_counter()

    def progress(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
        if metrics.get("step", 0) % 50 == 0 and "train_loss" in metrics:
            print(f"step {metrics['step']}: loss {metrics['train_loss']:.3f}", flush=True)

    work = out.parent / f"{out.name}-run"
    result = sft.train(rows(steps * batch), ModelSource(str(random)), spec, work, progress)
    first, last = result.curve["train"][0][1], result.curve["train"][-1][1]
    print(f"trained {steps} steps in {time.perf_counter() - began:.0f} s: loss {first:.3f} -> {last:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    for name in SERVING_FILES:
        if (random / name).is_file() and name != "model.safetensors":
            shutil.copyfile(random / name, out / name)
    shutil.copyfile(result.weights, out / "model.safetensors")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=["0.5b", "small"], default="0.5b", help="small: a CPU check")
    args = parser.parse_args(argv)
    print(f"wrote {train(args.out, args.steps, args.batch, args.device, args.size)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

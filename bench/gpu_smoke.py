"""CUDA smoke of the model path a volunteer and the coordinator share (run through the device tool,
never in CI): the worker's transformers engine generates on the bundled tiny model in float32 and
bfloat16 on CUDA, the coordinator's validator re-scores every trace on CUDA and on the CPU, and no
honest trace is flagged while every tampered one is. One line per check; exit status 1 on any miss.

    python -m bench.gpu_smoke [--jobs 64]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import replace

import torch

from coordinator.trust.validator import Submitted, validate
from ml.scorer import Scorer, scorer
from shared.assets import TINY_MODEL_NAME
from shared.protocol import ChatMessage, JobSpec, ModelRef, SamplingParams
from worker.engines.hf import TransformersEngine

PROBLEMS = ["What is 9081 + 4456?", "What is 347 * 28?", "What is 77 * 64?", "What is 6024 - 3517?"]
SAMPLINGS = [{"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_k": 8}]


def jobs(n: int) -> list[JobSpec]:
    return [
        JobSpec(
            job_id=uuid.uuid4(),
            campaign_id=uuid.uuid4(),
            problem_id=f"p{i % len(PROBLEMS)}",
            messages=[ChatMessage(role="user", content=PROBLEMS[i % len(PROBLEMS)])],
            model=ModelRef(name=TINY_MODEL_NAME),
            sampling=SamplingParams.model_validate({"max_tokens": 64, "seed": 7000 + i, **SAMPLINGS[i % 3]}),
            sample_index=i % 4,
            samples_per_problem=4,
        )
        for i in range(n)
    ]


def claims(engine: TransformersEngine, specs: list[JobSpec], dtype: str) -> list[Submitted]:
    generations = engine.generate(specs)
    return [
        Submitted(spec, g.completion_token_ids, g.logprobs, g.finish_reason.value, g.text, dtype)
        for spec, g in zip(specs, generations, strict=True)
    ]


def tampered(claim: Submitted) -> Submitted:
    tokens = list(claim.tokens)
    tokens[len(tokens) // 2] = (tokens[len(tokens) // 2] + 1) % 300
    return replace(claim, tokens=tokens)


def check(label: str, validator: Scorer, honest: list[Submitted]) -> bool:
    passed = sum(c.outcome.passed for c in validate(validator, honest))
    caught = sum(not c.outcome.passed for c in validate(validator, [tampered(h) for h in honest]))
    ok = passed == len(honest) and caught == len(honest)
    print(f"{label:<44} honest passed {passed}/{len(honest)}  tampered caught {caught}/{len(honest)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="the worker's device (cpu: a dry run of the script)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    specs = jobs(args.jobs)
    traces = {}
    for dtype in ("float32", "bfloat16"):
        engine = TransformersEngine.load(TINY_MODEL_NAME, device=args.device, dtype=dtype)
        traces[dtype] = claims(engine, specs, dtype)
        engine.close()
    validators = {d: scorer(TINY_MODEL_NAME, None, d, "float32") for d in dict.fromkeys((args.device, "cpu"))}
    ok = True
    for dtype, honest in traces.items():
        for device, validator in validators.items():
            ok &= check(f"worker {args.device}/{dtype} -> validator {device}/float32", validator, honest)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

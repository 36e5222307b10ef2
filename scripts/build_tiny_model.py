"""Build the bundled tiny arithmetic model (shared/assets/tiny-arith) from scratch.

    PYTHONUNBUFFERED=1 python scripts/build_tiny_model.py --device cuda

trains a Qwen2 model with a one-token-per-byte tokenizer on worked solutions of the `train` split,
stops once it solves about half of the `validation` split, saves it in Hugging Face format,
measures it on the `test` split and writes TRAINING.md beside the weights. `--size teacher` trains
a larger variant its whole step budget, into build/ unless --out says otherwise; `--eval-only`
re-measures a saved model (on CPU, say).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a file, the repo's packages are not on the path

from coordinator.problems.sources.arithmetic import ArithmeticProblem, generate  # noqa: E402
from scripts.tiny_model.evaluate import Score, score  # noqa: E402
from scripts.tiny_model.report import RunFacts, write_report  # noqa: E402
from scripts.tiny_model.solutions import worked_solution  # noqa: E402
from scripts.tiny_model.tokenizer import (  # noqa: E402
    IM_END,
    build_tokenizer,
    check_reload,
    render_prompt,
    save_tokenizer,
)
from scripts.tiny_model.train import PRESETS, ModelSize, TrainConfig, build_model, tokenize, train  # noqa: E402

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

# Only the shipped size writes into the package by default; other sizes go to the ignored build/.
DEFAULT_OUT = {
    "tiny": ROOT / "shared" / "assets" / "tiny-arith",
    "teacher": ROOT / "build" / "tiny-arith-teacher",
}
STOP_AT = {"tiny": 0.5, "teacher": 0.0}  # the teacher trains its whole budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder to write the model into (default: by --size)")
    p.add_argument("--size", choices=sorted(PRESETS), default="tiny")
    for name in ("hidden", "layers", "heads", "kv-heads", "intermediate"):
        p.add_argument(f"--{name}", type=int, help="override the preset's value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--steps", type=int, default=8000, help="step budget (the cosine schedule's length)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--train-problems", type=int, default=200_000)
    p.add_argument("--val-problems", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--stop-at", type=float, help="mean validation accuracy that ends training; 0: never")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-clock guard on training")
    p.add_argument("--eval-problems", type=int, default=1000, help="test problems in the final measure")
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--eval-only", action="store_true", help="measure the model already in --out")
    args = p.parse_args(argv)
    args.out = args.out or DEFAULT_OUT[args.size]
    return args


def model_size(args: argparse.Namespace) -> ModelSize:
    preset = PRESETS[args.size]
    return ModelSize(
        hidden=args.hidden or preset.hidden,
        layers=args.layers or preset.layers,
        heads=args.heads or preset.heads,
        kv_heads=args.kv_heads or preset.kv_heads,
        intermediate=args.intermediate or preset.intermediate,
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        stop_at=STOP_AT[args.size] if args.stop_at is None else args.stop_at,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )


def canonical_command(args: argparse.Namespace, size: ModelSize, config: TrainConfig) -> str:
    """The command with every setting spelled out, so the report stays exact if defaults change."""
    flags = (
        f"--size {args.size} --hidden {size.hidden} --layers {size.layers} --heads {size.heads} "
        f"--kv-heads {size.kv_heads} --intermediate {size.intermediate} --seed {config.seed} "
        f"--device {args.device} --steps {config.steps} --batch-size {config.batch_size} --lr {config.lr:g} "
        f"--warmup {config.warmup} --weight-decay {config.weight_decay:g} "
        f"--train-problems {args.train_problems} --val-problems {args.val_problems} "
        f"--eval-every {config.eval_every} --stop-at {config.stop_at:g} --max-minutes {config.max_minutes:g} "
        f"--eval-problems {args.eval_problems} --eval-batch {args.eval_batch}"
    )
    return f"PYTHONUNBUFFERED=1 python scripts/build_tiny_model.py {flags}"


def setup_torch(requested: str, seed: int) -> torch.device:
    # cuBLAS needs this before CUDA starts to run its matrix products deterministically.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    name = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    # The fused attention kernels accumulate gradients in a run-dependent order; the plain one does not.
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    return torch.device(name)


def describe(device: torch.device) -> tuple[str, str]:
    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return name, f"torch {torch.__version__}, transformers {transformers.__version__}"


def measure(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace
) -> tuple[Score, Score]:
    problems = list(generate(args.eval_problems, 0, "test"))
    results = []
    for sample in (False, True):
        started = time.monotonic()
        result = score(model, tokenizer, problems, sample=sample, batch_size=args.eval_batch, seed=args.seed)
        seconds = time.monotonic() - started
        batches = -(-len(problems) // args.eval_batch)
        print(
            f"test {'sampled' if sample else 'greedy '}: {result.correct}/{result.total} = "
            f"{result.accuracy:.3f}  boxed {result.boxed}  [{result.per_op()}]  "
            f"{seconds:.1f}s ({seconds / batches:.2f}s per batch of {args.eval_batch})",
            flush=True,
        )
        results.append(result)
    return results[0], results[1]


def load(out: Path, device: torch.device) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    if not isinstance(model, Qwen2ForCausalLM):
        raise TypeError(f"{out} holds a {type(model).__name__}, not a Qwen2ForCausalLM")
    torch.nn.Module.to(model, device)  # in place; the model's own `to` is typed for its wrapper only
    return model.eval(), AutoTokenizer.from_pretrained(str(out))


def build(args: argparse.Namespace, device: torch.device) -> None:
    size, config = model_size(args), train_config(args)
    tokenizer = build_tokenizer()
    started = time.monotonic()
    data = tokenize(tokenizer, list(generate(args.train_problems, args.seed, "train")))
    print(
        f"{len(data.lengths):,} training rows, up to {data.tokens.shape[1]} tokens, "
        f"{time.monotonic() - started:.1f}s",
        flush=True,
    )
    model = build_model(size, tokenizer, args.seed, device)
    print(f"model {size}: {sum(p.numel() for p in model.parameters()):,} parameters on {device}", flush=True)
    samples = [training_text(tokenizer, p) for p in generate(200, args.seed, "train")]
    check_tokenizer(model, tokenizer, samples)
    validation = list(generate(args.val_problems, args.seed, "validation"))

    def evaluate(m: Qwen2ForCausalLM) -> tuple[float, float]:
        greedy = score(m, tokenizer, validation, sample=False, batch_size=args.eval_batch, seed=args.seed)
        sampled = score(m, tokenizer, validation, sample=True, batch_size=args.eval_batch, seed=args.seed)
        return greedy.accuracy, sampled.accuracy

    result = train(model, data, config, evaluate)
    save(model, tokenizer, args.out)
    # Measure what was written, loaded back the way workers load it.
    loaded, loaded_tokenizer = load(args.out, device)
    check_round_trip(model, loaded, data.tokens[:8, :64].to(device))
    greedy, sampled = measure(loaded, loaded_tokenizer, args)
    facts = run_facts(args, size, config, model, tokenizer)
    write_report(args.out / "TRAINING.md", facts, config, result, greedy, sampled)
    print(f"wrote {args.out}", flush=True)


def run_facts(
    args: argparse.Namespace,
    size: ModelSize,
    config: TrainConfig,
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
) -> RunFacts:
    example = next(generate(1, 0, "test"))
    device_name, versions = describe(next(model.parameters()).device)
    return RunFacts(
        command=canonical_command(args, size, config),
        device=device_name,
        versions=versions,
        size=size,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab=model.config.vocab_size,
        tokenizer_vocab=len(tokenizer),
        train_problems=args.train_problems,
        prompt_example=render_prompt(tokenizer, example.prompt),
        completion_example=worked_solution(example.a, example.op, example.b) + IM_END,
        folder_bytes=sum(f.stat().st_size for f in args.out.iterdir() if f.is_file()),
    )


def check_tokenizer(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, samples: list[str]) -> None:
    """Before training: the saved tokenizer must read back as the one the model is trained with.

    The model's config travels along because it decides which class AutoTokenizer picks. A scratch
    folder keeps the model already in --out intact should the run stop early.
    """
    with tempfile.TemporaryDirectory() as scratch:
        model.config.save_pretrained(scratch)
        save_tokenizer(tokenizer, Path(scratch))
        check_reload(tokenizer, Path(scratch), samples)


def training_text(tokenizer: PreTrainedTokenizerBase, problem: ArithmeticProblem) -> str:
    answer = worked_solution(problem.a, problem.op, problem.b)
    return render_prompt(tokenizer, problem.prompt) + answer + IM_END


def check_round_trip(trained: Qwen2ForCausalLM, loaded: Qwen2ForCausalLM, tokens: torch.Tensor) -> None:
    """Fail loudly if the files on disk do not reproduce the trained model's predictions."""
    import torch

    with torch.inference_mode():
        gap = (trained(input_ids=tokens).logits - loaded(input_ids=tokens).logits).abs().max().item()
    print(f"saved model reproduces the trained logits to within {gap:.2e}", flush=True)
    # On a GPU the two copies' TF32 products need not agree to the last bit; a broken save is off by units.
    if gap > 5e-2:
        raise RuntimeError(f"the saved model differs from the trained one (logit gap {gap:.3g})")


def save(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=256
    )
    model.save_pretrained(str(out))
    save_tokenizer(tokenizer, out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup_torch(args.device, args.seed)
    if args.eval_only:
        measure(*load(args.out, device), args)
    else:
        build(args, device)


if __name__ == "__main__":
    main()

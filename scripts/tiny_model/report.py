"""TRAINING.md: how the bundled model was built and how well it does, from the run's own figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.tiny_model.evaluate import Score
from scripts.tiny_model.train import ModelSize, TrainConfig, TrainResult


@dataclass(frozen=True)
class RunFacts:
    command: str
    device: str
    versions: str
    size: ModelSize
    parameters: int
    vocab: int
    tokenizer_vocab: int
    train_problems: int
    prompt_example: str
    completion_example: str
    folder_bytes: int


def _architecture(facts: RunFacts) -> list[str]:
    s = facts.size
    return [
        "## Architecture",
        "",
        f"`Qwen2ForCausalLM`: hidden {s.hidden}, {s.layers} layers, {s.heads} attention heads "
        f"({s.kv_heads} key/value heads), MLP {s.intermediate}, vocabulary {facts.vocab} "
        f"(separate input and output embeddings), float32. **{facts.parameters:,} parameters**; "
        f"the folder holds {facts.folder_bytes / 1e6:.1f} MB.",
        "",
        "## Tokenizer and prompt format",
        "",
        f"Byte-level BPE with no merges (`tokenizers`), so every byte, every digit included, is one "
        f"token: {facts.tokenizer_vocab} tokens, the 256 bytes plus `<|endoftext|>` (padding), "
        "`<|im_start|>` and `<|im_end|>` (end of sequence). No BOS token. The pipeline matches what "
        "transformers' `Qwen2Tokenizer` builds, so every release loads it the same. The chat template is "
        "ChatML-like and leaves system messages out; "
        "`apply_chat_template(..., add_generation_prompt=True)` renders:",
        "",
        "```",
        facts.prompt_example,
        "```",
        "",
        "and the model completes, ending with `<|im_end|>`:",
        "",
        "```",
        facts.completion_example,
        "```",
    ]


def _training(config: TrainConfig, result: TrainResult, facts: RunFacts) -> list[str]:
    lines = [
        "## Training",
        "",
        f"Seed {config.seed}, device {facts.device} ({facts.versions}). {facts.train_problems:,} problems "
        f"of the `train` split, batch {config.batch_size}, AdamW lr {config.lr:g} (warm-up "
        f"{config.warmup}, cosine over {config.steps}), weight decay {config.weight_decay:g}, loss on the "
        f"completion only. Ran **{result.steps} steps in {result.seconds:.0f} s**; stopped by: "
        f"{result.stop_reason}."
        + (
            " Training stops early on purpose: the model is meant to solve some problems and fail "
            "others, so verification has traces to accept and to reject."
            if config.stop_at
            else ""
        ),
        "",
        "Validation accuracy (split `validation`) during training:",
        "",
        "| step | loss | greedy | sampled (T=1.0) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {p.step} | {p.loss:.4f} | {p.greedy:.3f} | {p.sampled:.3f} |" for p in result.curve]
    return lines


def _results(greedy: Score, sampled: Score) -> list[str]:
    return [
        "## Accuracy on the test split",
        "",
        "Answer check: the integer in the last `\\boxed{...}` equals the gold answer.",
        "",
        "| decoding | N | accuracy | boxed answers | per operator |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| greedy | {greedy.total} | **{greedy.accuracy:.3f}** | {greedy.boxed} | {greedy.per_op()} |",
        f"| sampled, temperature 1.0, top_p 1.0 | {sampled.total} | **{sampled.accuracy:.3f}** "
        f"| {sampled.boxed} | {sampled.per_op()} |",
    ]


def write_report(
    path: Path, facts: RunFacts, config: TrainConfig, result: TrainResult, greedy: Score, sampled: Score
) -> None:
    lines = [
        "# tiny-arith",
        "",
        "A small language model that answers the multi-digit arithmetic problems of "
        "`coordinator/problems/sources/arithmetic.py` with a short column-by-column worked solution "
        "ending in `\\boxed{<answer>}`. It runs on CPU and is right only part of the time.",
        "",
        "Rebuilt with:",
        "",
        "```",
        facts.command,
        "```",
        "",
        *_architecture(facts),
        "",
        *_training(config, result, facts),
        "",
        *_results(greedy, sampled),
        "",
    ]
    path.write_text("\n".join(lines))

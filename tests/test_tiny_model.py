"""The bundled tiny model loads offline, speaks its chat format and is right only part of the time."""

from __future__ import annotations

import re
from typing import Any

import pytest

from coordinator.problems.sources.arithmetic import ArithmeticProblem, generate
from shared.assets import tiny_model_dir

# A well-formed answer ends in one boxed integer; the verifier scores the last boxed value.
FINAL_BOXED_INT = re.compile(r"\\boxed\{(-?\d+)\}\s*$")
PROBLEMS = list(generate(40, seed=0, split="test"))
MAX_NEW_TOKENS = 160


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def greedy_answers(tokenizer: Any) -> list[tuple[ArithmeticProblem, str, bool]]:
    """(problem, completion text, stopped at end-of-sequence) for every problem, greedy."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()), local_files_only=True).eval()
    prompts = [_render(tokenizer, p.prompt) for p in PROBLEMS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    threads = torch.get_num_threads()
    # One thread: a model this small gains little from more, and loses much when cores are shared.
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            output = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    finally:
        torch.set_num_threads(threads)
    completions = output[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    stopped = [tokenizer.eos_token_id in row.tolist() for row in completions]
    return list(zip(PROBLEMS, texts, stopped, strict=True))


def _render(tokenizer: Any, question: str, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    return text


def test_bundle_holds_a_small_qwen2_model() -> None:
    import json

    folder = tiny_model_dir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10 * 2**20


def test_chat_template_renders_the_training_format(tokenizer: Any) -> None:
    expected = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
    assert _render(tokenizer, "What is 12 + 7?") == expected
    assert _render(tokenizer, "What is 12 + 7?", system="Think step by step.") == expected
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tokenizer_gives_each_digit_its_own_token(tokenizer: Any) -> None:
    ids = tokenizer("5132 - 6444", add_special_tokens=False)["input_ids"]
    assert len(ids) == len("5132 - 6444")
    assert tokenizer.decode(ids) == "5132 - 6444"


@pytest.mark.slow
def test_greedy_answers_are_well_formed(greedy_answers: list[tuple[ArithmeticProblem, str, bool]]) -> None:
    first = greedy_answers[:16]
    well_formed = [text for _, text, stopped in first if stopped and FINAL_BOXED_INT.search(text)]
    assert len(well_formed) >= 12, [text for _, text, _ in first]


@pytest.mark.slow
def test_greedy_accuracy_is_strictly_between_0_and_1(
    greedy_answers: list[tuple[ArithmeticProblem, str, bool]],
) -> None:
    correct = 0
    for problem, text, _ in greedy_answers:
        match = FINAL_BOXED_INT.search(text)
        correct += match is not None and int(match.group(1)) == problem.answer
    assert 0 < correct < len(greedy_answers)

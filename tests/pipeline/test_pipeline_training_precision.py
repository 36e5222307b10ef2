"""The trainers' arithmetic on the bundled tiny model: precision defaults and fields, bf16-mixed
keeping float32 weights, and packed batches that give the padded batch's loss with no attention
across the sequences sharing a row."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ml import loading
from ml.devices import pick_precision
from ml.training import batches, grpo, sft
from shared.assets import TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import GrpoSpec, SftSpec


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    source = ModelSource(str(tiny_model_dir()))
    return loading.load_model(source, "cpu", "float32"), loading.load_tokenizer(source)


def _examples(tokenizer: Any, answers: list[str]) -> list[batches.Example]:
    return [
        batches.encode(tokenizer, [{"role": "user", "content": f"What is {i} + {i}?"}], f"It is {answer}.")
        for i, answer in enumerate(answers)
    ]


def _loss(model: Any, batch: batches.LmBatch) -> float:
    import torch

    with torch.inference_mode():
        logits = model(**batch.inputs("cpu")).logits
        return float(batches.masked_lm_loss(logits, batch.labels)[0])


def test_precision_is_auto_by_default_and_auto_means_bf16_mixed_on_cuda_only() -> None:
    sft_spec = SftSpec(dataset="0" * 64, model=TINY_MODEL_NAME)
    grpo_spec = GrpoSpec(model=TINY_MODEL_NAME, problem_set_id=uuid.uuid4())
    assert (sft_spec.precision, grpo_spec.precision, sft_spec.packing) == ("auto", "auto", True)
    assert pick_precision("auto", "cuda") == pick_precision("auto", "cuda:1") == "bf16-mixed"
    assert pick_precision("auto", "cpu") == "float32"
    assert pick_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert pick_precision("float32", "cuda") == "float32"
    with pytest.raises(ValidationError):
        SftSpec(dataset="0" * 64, model=TINY_MODEL_NAME, precision="float16")
    with pytest.raises(ValueError, match="unknown training precision"):
        pick_precision("bf16", "cuda")


def test_packing_fills_rows_and_pads_only_their_tails(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    examples = _examples(tokenizer, ["2", "4" * 40, "6", "8" * 20])
    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    ids, positions, labels = batches.pack_batch(examples, 0, max(lengths) + min(lengths), None)
    padded = batches.pad_batch(examples, 0, 4096)[0]
    assert ids.shape[0] < len(examples)
    assert ids.numel() < padded.numel()
    assert int((positions == 0).sum()) >= len(examples)  # every sequence starts again at 0
    assert int((labels >= 0).sum()) == sum(len(e.completion_ids) for e in examples)


def test_packed_loss_equals_the_padded_loss(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    examples = _examples(tokenizer, ["2", "4" * 30, "six", "8" * 12, "10"])
    masks: list[list[int] | None] = [
        None,
        [k % 2 for k in range(len(examples[1].completion_ids))],
        None,
        None,
        None,
    ]
    padded = batches.lm_batch(examples, 0, 4096, masks, packed=False)
    packed = batches.lm_batch(examples, 0, 200, masks, packed=True)
    assert packed.ids.shape[0] < padded.ids.shape[0]  # several sequences did share a row
    assert packed.targets == padded.targets
    assert _loss(model, packed) == pytest.approx(_loss(model, padded), rel=1e-5)


def test_no_sequence_attends_to_another_in_its_row(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = tiny
    first, second = _examples(tokenizer, ["34 and more", "12"])
    changed = batches.Example(first.prompt_ids, [t + 1 for t in first.completion_ids])
    n = len(first.prompt_ids) + len(first.completion_ids)
    logits = []
    for head in (first, changed):
        batch = batches.lm_batch([head, second], 0, 4096, packed=True)
        assert batch.positions is not None
        assert batch.ids.shape[0] == 1 and int(batch.positions[0, n]) == 0  # one row: first, then second
        with torch.inference_mode():
            logits.append(model(**batch.inputs("cpu")).logits[0])
    assert not torch.allclose(logits[0][:n], logits[1][:n])  # the changed sequence's own do change
    torch.testing.assert_close(logits[0][n:], logits[1][n:], rtol=0, atol=1e-6)


def _rows(count: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        completion = f"The answer is \\boxed{{{i * 7}}}." + " Indeed." * (i % 4)
        rows.append(
            {"id": str(i), "messages": [{"role": "user", "content": f"{i} * 7?"}], "completion": completion}
        )
    return rows


def _train(tmp_path: Path, **overrides: Any) -> sft.SftResult:
    base = {"dataset": "0" * 64, "model": TINY_MODEL_NAME, "method": "full", "max_steps": 3, "batch_size": 4}
    spec = SftSpec.model_validate(
        {**base, "lr": 1e-3, "eval_fraction": 0.0, "device": "cpu", "seed": 1, **overrides}
    )
    return sft.train(_rows(12), ModelSource(str(tiny_model_dir())), spec, tmp_path, lambda *_: None)


def test_packed_and_padded_training_take_the_same_steps(tmp_path: Path) -> None:
    packed = _train(tmp_path / "packed", packing=True)
    padded = _train(tmp_path / "padded", packing=False)
    assert (packed.metrics["packing"], padded.metrics["packing"]) == (True, False)
    for (_, a), (_, b) in zip(packed.curve["train"], padded.curve["train"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)


def test_a_batch_out_of_gpu_memory_is_retried_in_smaller_micro_batches(tmp_path: Path) -> None:
    """The GPU's limit stood in for by a hook that refuses embedding lookups of more than two rows,
    as an allocator would refuse the memory of a too-large pass."""
    import torch

    def gpu_limit(rows: int) -> Any:
        def refuse(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if isinstance(module, torch.nn.Embedding) and args[0].shape[0] > rows:
                raise torch.OutOfMemoryError(f"CUDA out of memory: {args[0].shape[0]} rows")

        return torch.nn.modules.module.register_module_forward_pre_hook(refuse)

    handle = gpu_limit(2)
    try:
        shrunk = _train(tmp_path / "shrunk", packing=False)
    finally:
        handle.remove()
    chosen = _train(tmp_path / "chosen", packing=False, micro_batch=2)
    assert (shrunk.metrics["micro_batch"], chosen.metrics["micro_batch"]) == (2, 2)
    for (_, a), (_, b) in zip(shrunk.curve["train"], chosen.curve["train"], strict=True):
        assert a == pytest.approx(b, rel=1e-6)
    handle = gpu_limit(0)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            _train(tmp_path / "hopeless", packing=False)
    finally:
        handle.remove()


def test_bf16_mixed_keeps_float32_weights_and_tracks_the_float32_curve(tmp_path: Path) -> None:
    from safetensors import safe_open

    mixed = _train(tmp_path / "mixed", precision="bf16-mixed", gradient_checkpointing=True)
    full = _train(tmp_path / "full", precision="auto")
    assert (mixed.metrics["precision"], full.metrics["precision"]) == ("bf16-mixed", "float32")
    with safe_open(str(mixed.weights), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}  # noqa: SIM118
    for (_, a), (_, b) in zip(mixed.curve["train"], full.curve["train"], strict=True):
        assert a == pytest.approx(b, rel=0.05)
    assert mixed.curve["train"][-1][1] < mixed.curve["train"][0][1]


def test_grpo_logprobs_in_bf16_mixed_are_float64_and_near_float32(tiny: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = tiny
    example = _examples(tokenizer, ["4" * 10])[0]
    zeros = [0.0] * len(example.completion_ids)
    rollout = grpo.Rollout("g", 0, example.prompt_ids, example.completion_ids, zeros, 0.0, False)
    batch = grpo._collate([rollout], 0)
    sampling = GrpoSpec(model=TINY_MODEL_NAME, problem_set_id=uuid.uuid4()).sampling
    with torch.inference_mode():
        exact = grpo.token_logprobs(model, batch, sampling, "float32")
        mixed = grpo.token_logprobs(model, batch, sampling, "bf16-mixed")
    assert mixed.dtype == torch.float64
    assert not torch.equal(mixed, exact)  # the forward pass did run in bfloat16
    torch.testing.assert_close(mixed, exact, rtol=0, atol=0.25)

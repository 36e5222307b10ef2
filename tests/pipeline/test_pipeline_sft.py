"""SFT on the bundled tiny model: full, LoRA and DoRA learn the completions, adapters merge into a
plain checkpoint, the loss covers only completion tokens the mask keeps, and a run resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.problems.sources.arithmetic import generate
from ml import loading
from ml.training import batches, sft
from shared.assets import SERVING_FILES, TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import SftSpec


def _rows(count: int) -> list[dict[str, Any]]:
    """Answers in a format the tiny model was never trained on, so there is something to learn."""
    rows = []
    for p in generate(count, seed=5, split="train"):
        completion = f"The answer is \\boxed{{{p.answer}}}."
        messages = [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": completion}]
        rows.append({"id": p.id, "messages": messages, "prompt": p.prompt, "completion": completion})
    return rows


def _spec(**overrides: Any) -> SftSpec:
    base: dict[str, Any] = {
        "dataset": "0" * 64,
        "model": TINY_MODEL_NAME,
        "method": "full",
        "max_steps": 6,
        "batch_size": 4,
        "lr": 1e-3,
        "eval_fraction": 0.0,
        "device": "cpu",
        "seed": 3,
    }
    return SftSpec.model_validate({**base, **overrides})


def _mean_loss(weights: Path | None, rows: list[dict[str, Any]]) -> float:
    source = ModelSource(str(tiny_model_dir()), weights)
    model, tokenizer = loading.load_model(source, "cpu"), loading.load_tokenizer(source)
    examples = [batches.encode(tokenizer, batches.prompt_messages(r), r["completion"]) for r in rows]
    losses = batches.token_losses(model, examples, int(tokenizer.pad_token_id), 16)
    return sum(map(sum, losses)) / sum(map(len, losses))


def _no_progress(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize(("method", "lr"), [("full", 1e-3), ("lora", 1e-2), ("dora", 1e-2)])
def test_sft_lowers_the_loss_of_what_it_trains_on(method: str, lr: float, tmp_path: Path) -> None:
    rows = _rows(16)
    result = sft.train(
        rows, ModelSource(str(tiny_model_dir())), _spec(method=method, lr=lr), tmp_path, _no_progress
    )
    assert result.metrics["steps"] == 6 and len(result.curve["train"]) == 6
    assert _mean_loss(result.weights, rows) < 0.5 * _mean_loss(None, rows)
    if method == "full":
        assert result.adapter is None
    else:  # the adapter is saved and the checkpoint is the merged, plain model
        assert result.adapter is not None and result.adapter.is_file()
        assert result.adapter_config is not None and result.adapter_config["use_dora"] == (method == "dora")


def test_held_out_loss_curve_starts_before_training(tmp_path: Path) -> None:
    result = sft.train(
        _rows(24),
        ModelSource(str(tiny_model_dir())),
        _spec(eval_fraction=0.25, eval_every=3),
        tmp_path,
        _no_progress,
    )
    assert [step for step, _ in result.curve["eval"]] == [0, 3, 6]
    assert result.metrics["eval_rows"] == 6 and result.metrics["train_rows"] == 18
    assert result.curve["eval"][-1][1] < result.curve["eval"][0][1]


def test_loss_mask_removes_tokens_from_the_loss(tmp_path: Path) -> None:
    tokenizer = loading.load_tokenizer(ModelSource(str(tiny_model_dir())))
    rows = _rows(2)
    example = batches.encode(tokenizer, batches.prompt_messages(rows[0]), rows[0]["completion"])
    mask = [0] * (len(example.completion_ids) - 1) + [1]
    _, _, labels = batches.pad_batch([example], 0, 4096, [mask])
    assert int((labels >= 0).sum()) == 1 and int(labels[0, -1]) == example.completion_ids[-1]
    with pytest.raises(ValueError, match="loss mask"):
        sft.train(
            [{**rows[0], "loss_mask": [1, 1]}],
            ModelSource(str(tiny_model_dir())),
            _spec(),
            tmp_path,
            _no_progress,
        )


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rows, source = _rows(16), ModelSource(str(tiny_model_dir()))
    spec = _spec(checkpoint_every=3)
    straight = sft.train(rows, source, spec, tmp_path / "straight", _no_progress)

    def crash_at_five(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
        if metrics["step"] == 5:  # after the snapshot of step 3
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        sft.train(rows, source, spec, tmp_path / "resumed", crash_at_five)
    resumed = sft.train(rows, source, spec, tmp_path / "resumed", _no_progress)
    assert resumed.curve["train"][:3] == straight.curve["train"][:3]  # restored, not recomputed
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert all(float((a[k] - b[k]).abs().max()) < 1e-6 for k in a)


class _Trap:
    """Unpickling this creates `marker`: a resume file carrying it would run code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_resume_file_carrying_a_pickled_object_is_refused(tmp_path: Path) -> None:
    import pickle

    import torch

    from ml.training import grpo

    marker, workdir = tmp_path / "ran", tmp_path / "run"
    workdir.mkdir()
    torch.save(
        {"step": 3, "curve": {"train": [], "eval": []}, "weights": _Trap(marker)}, workdir / "resume.pt"
    )
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        sft.train(_rows(16), ModelSource(str(tiny_model_dir())), _spec(), workdir, _no_progress)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    torch.save({"state": {}, "param_groups": _Trap(marker)}, tmp_path / "optimizer-v1.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        grpo._restore_optimizer(optimizer, tmp_path, 1)
    assert not marker.exists()


@pytest.mark.gpu
@pytest.mark.parametrize(("method", "lr"), [("full", 3e-4), ("lora", 3e-3)])
def test_sft_on_a_gpu_trains_a_larger_model(method: str, lr: float, tmp_path: Path) -> None:
    """The same job on CUDA (through the device tool, never in CI) with a model about 25 times
    the bundled one: a random Qwen2 of hidden size 768 and 8 layers with the bundled tokenizer."""
    import shutil
    import time

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    folder = tmp_path / "larger"
    config = AutoConfig.from_pretrained(tiny_model_dir())
    config.update({"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8,
                   "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64,
                   "layer_types": ["full_attention"] * 8})  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    for name in SERVING_FILES:
        if name != "config.json" and (tiny_model_dir() / name).is_file():
            shutil.copyfile(tiny_model_dir() / name, folder / name)
    rows = _rows(64)
    spec = _spec(method=method, lr=lr, device="cuda", max_steps=40, batch_size=16, model=str(folder))
    began = time.perf_counter()
    result = sft.train(rows, ModelSource(str(folder)), spec, tmp_path / "run", _no_progress)
    seconds = time.perf_counter() - began
    first, last = result.curve["train"][0][1], result.curve["train"][-1][1]
    device = torch.cuda.get_device_name()
    print(  # the figures this run leaves in the log
        f"{method}: {params:,} parameters, loss {first:.3f} -> {last:.3f},"
        f" 40 steps, {seconds:.1f} s, {device}"
    )
    assert result.metrics["steps"] == 40
    assert last < 0.5 * first

"""Loading causal language models and their tokenizers: the one place a model is opened.

A model is a base (`ModelSource.base`: config, tokenizer, weights) optionally overlaid with one
safetensors file of full weights (`ModelSource.weights`): checkpoints and RL policy versions are
such files, so whoever has the base model needs only the weights. The worker's engine, the
coordinator's validator and the pipeline's trainer all load through `load_model`, so a model is
the same object wherever it is scored or sampled.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ml.devices import cap_gpu_memory, pick_dtype
from ml.errors import WeightsMisfit
from shared.assets import SERVING_FILES, ModelSource


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.base, revision=source.revision)


def load_model(
    source: ModelSource,
    device: str,
    dtype: str = "auto",
    *,
    trainable: bool = False,
    spread: bool = False,
    memory_fraction: float | None = None,
) -> Any:
    """The model on `device` (a concrete one: see ml.devices.pick_device) in `dtype` (a torch dtype's
    name, or `auto`), in train or eval mode. `spread` splits the layers over several visible GPUs
    when `device` is `cuda`, so a model too big for one still fits; `memory_fraction` caps this
    process's share of each GPU. Raises OSError or ValueError when the model cannot be read."""
    import torch
    from transformers import AutoModelForCausalLM

    if device.startswith("cuda"):
        # cuDNN's attention builds a plan for every new (batch, key length) shape: in a decode
        # loop that is every step of a first batch, which then ran at half speed. Flash and
        # memory-efficient attention need no such set-up and are as fast here.
        torch.backends.cuda.enable_cudnn_sdp(False)
    limits = cap_gpu_memory(memory_fraction) if device == "cuda" else None
    options: dict[str, Any] = {"dtype": pick_dtype(dtype, device), "revision": source.revision}
    if spread and device == "cuda" and torch.cuda.device_count() > 1:
        options.update(device_map="auto", max_memory=limits)
    model: Any = AutoModelForCausalLM.from_pretrained(source.base, **options)
    if source.weights is not None:
        load_weights(model, source.weights)
    if "device_map" not in options:
        torch.nn.Module.to(model, device)  # in place; the model's own `to` is typed for its wrapper only
    return model.train() if trainable else model.eval()


def load_weights(model: Any, path: Path) -> None:
    """Copy a full-weights safetensors file into `model`, in its dtype and on its devices. Raises
    WeightsMisfit when the file is for another model, OSError or RuntimeError when it is unreadable."""
    from safetensors.torch import load_model as load_safetensors

    missing, unexpected = load_safetensors(model, str(path), strict=False)
    # A tied output layer is stored once, as the embedding; anything else missing is a misfit.
    tied = getattr(model.config, "tie_word_embeddings", False)
    tolerated = {name for name in missing if name.endswith("lm_head.weight")} if tied else set()
    if set(missing) - tolerated or unexpected:
        raise WeightsMisfit(list(missing), list(unexpected))


def save_weights(model: Any, path: Path) -> Path:
    """The full state dict as one safetensors file (tensors shared by tied layers stored once)."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path), metadata={"format": "pt"})
    return path


def materialize(source: ModelSource, dest: Path) -> Path:
    """A directory `from_pretrained` (and so a worker) opens: the base's config and tokenizer, the
    weights file as `model.safetensors`. Needs `source.base` to be a local directory."""
    base = Path(source.base)
    if not base.is_dir():
        raise ValueError(f"materialize needs a local base model directory, not {source.base!r}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SERVING_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, dest / name)
    weights = source.weights or base / "model.safetensors"
    shutil.copyfile(weights, dest / "model.safetensors")
    return dest


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """EOS ids from the generation config (int or list) and the tokenizer: where a completion ends."""
    ids: set[int] = set()
    sources = (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None))
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids

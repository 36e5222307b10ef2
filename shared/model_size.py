"""How big a model is, read from its files without torch: the coordinator tells workers the size of
each model with jobs waiting, a worker checks what fits its memory before it loads one, the API
bounds token ids by the vocabulary, and credit pays by the work a token costs.

Parameter counts are estimates from the config's shapes (embeddings, attention, MLP per layer,
experts): `config_parameters` counts every weight (memory), `active_parameters` the matrices one
generated token multiplies through (compute: only the experts it is routed to, and no input
embedding, which is a lookup). The byte count is that of the weight files where they are on disk,
else the estimate at the config's dtype. This is the one place that finds and reads a model's
config without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.assets import resolve_model

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}
# Families whose MLP is two matrices (up, down); the others gate it with a third.
UNGATED = {
    "gpt2",
    "gpt_neox",
    "gptj",
    "opt",
    "bloom",
    "falcon",
    "gpt_bigcode",
    "phi",
    "codegen",
    "starcoder2",
}


@dataclass(frozen=True)
class ModelSize:
    parameters: int | None
    size_bytes: int | None


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (a multimodal config nests it)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) and _int(nested, "hidden_size") else config


def config_parameters(config: Mapping[str, Any]) -> int | None:
    """An estimate of a decoder's parameter count from its config (every expert; the input and
    output embeddings once each unless tied), or None when the shapes are not named. Norms and
    biases are left out: they are a rounding error at any size that matters."""
    c, shape = _shape(config)
    if shape is None:
        return None
    hidden, layers, vocab = shape
    tied = c.get("tie_word_embeddings", config.get("tie_word_embeddings", True)) is not False
    return layers * (_attention(c, hidden) + _mlp(c, hidden, active=False)) + vocab * hidden * (
        1 if tied else 2
    )


def active_parameters(config: Mapping[str, Any]) -> int | None:
    """The matrix parameters one generated token multiplies through: attention, the MLP experts it
    is routed to (and shared ones), and the output projection; None when the shapes are not named."""
    c, shape = _shape(config)
    if shape is None:
        return None
    hidden, layers, vocab = shape
    return layers * (_attention(c, hidden) + _mlp(c, hidden, active=True)) + vocab * hidden


def _shape(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], tuple[int, int, int] | None]:
    c = text_config(config)
    if c is not config and "model_type" not in c:
        c = {**c, "model_type": config.get("model_type")}
    hidden = _int(c, "hidden_size", "n_embd", "d_model")
    layers = _int(c, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(c, "vocab_size")
    if hidden is None or layers is None or vocab is None:
        return c, None
    return c, (hidden, layers, vocab)


def _attention(c: Mapping[str, Any], hidden: int) -> int:
    heads = _int(c, "num_attention_heads", "n_head") or 1
    kv_heads = _int(c, "num_key_value_heads") or heads
    head_dim = _int(c, "head_dim") or hidden // heads
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o + k, v


def _mlp(c: Mapping[str, Any], hidden: int, active: bool) -> int:
    matrices = 2 if c.get("model_type") in UNGATED else 3  # up, down (+ gate: SwiGLU, GeGLU)
    dense = _int(c, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    experts = _int(c, "num_local_experts", "num_experts", "n_routed_experts")
    if experts is None or experts <= 1:
        return matrices * hidden * dense
    expert = _int(c, "moe_intermediate_size") or dense
    routed = _int(c, "num_experts_per_tok", "num_experts_per_token") if active else None
    shared = (_int(c, "shared_expert_intermediate_size") or 0) + (_int(c, "n_shared_experts") or 0) * expert
    return matrices * hidden * ((routed or experts) * expert + shared)


def vocab_size(config: Mapping[str, Any]) -> int | None:
    """The vocabulary size a config names (its text model's, for a multimodal one)."""
    return _int(text_config(config), "vocab_size") or _int(config, "vocab_size")


def dtype_bytes(config: Mapping[str, Any]) -> int:
    """Bytes per parameter of the dtype a config names (2 when it names none: checkpoints on the
    hub are mostly bfloat16)."""
    for part in (config, text_config(config)):
        name = part.get("torch_dtype") or part.get("dtype")
        if isinstance(name, str) and name.removeprefix("torch.") in DTYPE_BYTES:
            return DTYPE_BYTES[name.removeprefix("torch.")]
    return 2


def weights_bytes(folder: Path) -> int | None:
    """The bytes of the weight files in a model folder (one format: safetensors if any), or None."""
    for suffix in WEIGHT_SUFFIXES:
        files = [p for p in folder.glob(f"*{suffix}") if p.is_file()]
        if files:
            return sum(p.stat().st_size for p in files)
    return None


def local_config(name: str, revision: str | None = None) -> Path | None:
    """The config.json of a model where this machine holds it (a bundled model, a local folder,
    or the Hugging Face cache), or None; never downloads."""
    folder = Path(resolve_model(name))
    if (folder / "config.json").is_file():
        return folder / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # installed without the model libraries
        return None
    try:
        cached = try_to_load_from_cache(str(folder), "config.json", revision=revision)
    except ValueError:  # not a repository id (a path that does not exist here)
        return None
    return Path(cached) if isinstance(cached, str) else None


def read_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def local_size(name: str, revision: str | None = None) -> ModelSize | None:
    """The size of a model held on this machine, or None when its config is not here."""
    path = local_config(name, revision)
    config = read_config(path)
    if path is None or config is None:
        return None
    parameters = config_parameters(config)
    on_disk = weights_bytes(path.parent)
    if on_disk is None and parameters is not None:
        on_disk = parameters * dtype_bytes(config)
    return ModelSize(parameters, on_disk)


def has_weights(name: str, revision: str | None = None) -> bool:
    """Whether this machine holds the model whole enough to load it: a config and weight files."""
    path = local_config(name, revision)
    return path is not None and weights_bytes(path.parent) is not None

"""Credit rates: what one completion token of a model is worth, from the model's size.

1 credit = 1 TFLOP of generation: a token costs about 2 x (matrix parameters) FLOPs, so a trace
earns 2 x parameters x tokens / 1e12. Parameters are estimated from the model's config.json, read
without torch (the API and task processes of the coordinator never load the model code for this):
the attention and MLP matrices of every layer (only the experts a token is routed to, for a mixture
of experts) and the output projection. The input embedding is a lookup, not a multiply, and norms
and biases are too small to matter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from coordinator.trust.models_cache import local_config

TFLOP = 1e12
# Architectures whose MLP is two matrices (up, down); the others gate it with a third (SwiGLU, GeGLU).
UNGATED = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode", "starcoder2"}

_SIZES: dict[tuple[str, str | None], int] = {}


def credit(parameters: int, tokens: int) -> float:
    return 2.0 * parameters * tokens / TFLOP


def model_parameters(name: str, revision: str | None = None) -> int | None:
    """The estimated parameter count of a model whose config.json this machine holds, else None.
    Found sizes are kept for the life of the process (a model's size never changes)."""
    key = (name, revision)
    if key not in _SIZES:
        path = local_config(name, revision)
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            config = None
        found = estimate(config) if isinstance(config, dict) else None
        if found is None:
            return None
        _SIZES[key] = found
    return _SIZES[key]


def _first(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def estimate(config: Mapping[str, Any]) -> int | None:
    """Matrix parameters per generated token of a decoder config (or of a multimodal config's text
    model), or None where the config lacks the sizes."""
    text = config.get("text_config")
    if isinstance(text, dict):
        config = {**text, "model_type": text.get("model_type", config.get("model_type"))}
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _first(config, "vocab_size")
    if hidden is None or layers is None or vocab is None:
        return None
    return layers * (_attention(config, hidden) + _mlp(config, hidden)) + vocab * hidden


def _attention(config: Mapping[str, Any], hidden: int) -> int:
    heads = _first(config, "num_attention_heads", "n_head") or 1
    kv_heads = _first(config, "num_key_value_heads") or heads
    head_dim = _first(config, "head_dim") or hidden // heads
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v


def _mlp(config: Mapping[str, Any], hidden: int) -> int:
    matrices = 2 if config.get("model_type") in UNGATED else 3
    dense = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    routed = _first(config, "num_experts_per_tok", "num_experts_per_token")
    if routed is None or _first(config, "num_experts", "num_local_experts", "n_routed_experts") is None:
        return matrices * hidden * dense
    expert = _first(config, "moe_intermediate_size") or dense
    shared = _first(config, "shared_expert_intermediate_size") or 0
    shared += (_first(config, "n_shared_experts") or 0) * expert
    return matrices * hidden * (routed * expert + shared)

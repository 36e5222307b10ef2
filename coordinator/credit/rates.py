"""Credit rates: what one completion token of a model is worth, from the model's size.

1 credit = 1 TFLOP of generation: a token costs about 2 x (matrix parameters) FLOPs, so a trace
earns 2 x parameters x tokens / 1e12. Parameters are estimated from the model's config.json, read
without torch (the API and task processes of the coordinator never load the model code for this):
`shared.model_size.active_parameters`, the matrices one generated token multiplies through.
"""

from __future__ import annotations

from shared.model_size import active_parameters, local_config, read_config

TFLOP = 1e12

_SIZES: dict[tuple[str, str | None], int] = {}


def credit(parameters: int, tokens: int) -> float:
    return 2.0 * parameters * tokens / TFLOP


def model_parameters(name: str, revision: str | None = None) -> int | None:
    """The active parameter count of a model whose config.json this machine holds, else None.
    Found sizes are kept for the life of the process (a model's size never changes)."""
    key = (name, revision)
    if key not in _SIZES:
        config = read_config(local_config(name, revision))
        found = active_parameters(config) if config is not None else None
        if found is None:
            return None
        _SIZES[key] = found
    return _SIZES[key]

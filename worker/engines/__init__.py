"""Generation engines; each backend module is imported only when chosen (torch, vllm are heavy)."""

from __future__ import annotations

import os

from worker.config import WorkerConfig
from worker.engines.base import Engine, Generation, ShouldStop, SwapsWeights

OPENAI_DEFAULT_CONCURRENCY = 16


def select_gpus(config: WorkerConfig) -> None:
    """Make only the chosen GPUs visible; must run before anything initialises CUDA."""
    if config.gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus


def load_engine(config: WorkerConfig, name: str | None = None, path: str | None = None) -> Engine:
    """Load the engine named by `config.engine` with the model `name` (default `config.model`),
    from the directory `path` when given (a policy version the policy cache prepared); raises
    EngineError."""
    select_gpus(config)
    name = name or config.model
    if config.engine == "transformers":
        from worker.engines.hf import TransformersEngine

        fraction = config.gpu_memory_fraction
        return TransformersEngine.load(
            name, path=path, device=config.device, dtype=config.dtype, memory_fraction=fraction
        )
    if config.engine == "vllm":
        from worker.engines.vllm import VllmEngine

        fraction = config.gpu_memory_fraction or config.vllm_gpu_memory_utilization
        return VllmEngine.load(name, path=path, dtype=config.dtype, gpu_memory_utilization=fraction)
    from worker.engines.openai import OpenAIEngine

    assert config.openai_base_url is not None  # enforced by WorkerConfig
    api_key = config.openai_api_key.get_secret_value() if config.openai_api_key else None
    fixed = config.batch_size if isinstance(config.batch_size, int) else None
    return OpenAIEngine(
        config.openai_base_url,
        config.model,
        served_model=config.openai_model,
        api_key=api_key,
        concurrency=fixed or OPENAI_DEFAULT_CONCURRENCY,
        timeout_s=config.request_timeout_s,
    )


__all__ = ["Engine", "Generation", "ShouldStop", "SwapsWeights", "load_engine", "select_gpus"]

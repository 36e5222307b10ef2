"""Generation engines; each backend module is imported only when chosen (torch, vllm are heavy)."""

from __future__ import annotations

import os

from worker.config import WorkerConfig
from worker.engines.base import Engine, Generation, ShouldStop

OPENAI_DEFAULT_CONCURRENCY = 16


def select_gpus(config: WorkerConfig) -> None:
    """Make only the chosen GPUs visible; must run before anything initialises CUDA."""
    if config.gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus


def load_engine(config: WorkerConfig) -> Engine:
    """Load the engine named by `config.engine` with `config.model`; raises EngineError."""
    select_gpus(config)
    if config.engine == "transformers":
        from worker.engines.hf import TransformersEngine

        return TransformersEngine.load(
            config.model, device=config.device, dtype=config.dtype, memory_fraction=config.gpu_memory_fraction
        )
    if config.engine == "vllm":
        from worker.engines.vllm import VllmEngine

        fraction = config.gpu_memory_fraction or config.vllm_gpu_memory_utilization
        return VllmEngine.load(config.model, dtype=config.dtype, gpu_memory_utilization=fraction)
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


__all__ = ["Engine", "Generation", "ShouldStop", "load_engine", "select_gpus"]

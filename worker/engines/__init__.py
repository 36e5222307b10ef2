"""Generation engines; each backend module is imported only when chosen (torch, vllm are heavy)."""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.engines.base import Engine, Generation, ShouldStop


def load_engine(config: WorkerConfig) -> Engine:
    """Load the engine named by `config.engine` with `config.model`; raises EngineError."""
    if config.engine == "transformers":
        from worker.engines.hf import TransformersEngine

        return TransformersEngine.load(config.model, device=config.device, dtype=config.dtype)
    if config.engine == "vllm":
        from worker.engines.vllm import VllmEngine

        return VllmEngine.load(
            config.model, dtype=config.dtype, gpu_memory_utilization=config.vllm_gpu_memory_utilization
        )
    from worker.engines.openai import OpenAIEngine

    assert config.openai_base_url is not None  # enforced by WorkerConfig
    api_key = config.openai_api_key.get_secret_value() if config.openai_api_key else None
    return OpenAIEngine(
        config.openai_base_url,
        config.model,
        served_model=config.openai_model,
        api_key=api_key,
        concurrency=config.batch_size,
        timeout_s=config.request_timeout_s,
    )


__all__ = ["Engine", "Generation", "ShouldStop", "load_engine"]

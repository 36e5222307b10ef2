"""Fixtures for the worker tests: a tiny causal LM on disk and a fake coordinator over real HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from worker_fakes import FakeCoordinator

from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from shared.protocol import (
    ChatMessage,
    EngineInfo,
    FinishReason,
    HardwareInfo,
    JobSpec,
    ModelRef,
    SamplingParams,
)
from worker.client import CoordinatorClient
from worker.config import RetryPolicy, WorkerConfig
from worker.engines.base import Generation, ShouldStop
from worker.loop import Worker
from worker.progress import NoProgress
from worker.spool import Spool

MODEL = "test/echo"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is 12 + 30? The answer is 42.",
    "Compute 7 * 8. 7 * 8 = 56, so the answer is 56.",
    "user assistant system: please solve the following arithmetic problem step by step.",
] * 20


def build_random_tiny_model(directory: Path) -> Path:
    """A randomly initialised two-layer Qwen2 with its own byte-level BPE tokenizer and template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled tiny model when it is there, else a random tiny Qwen2 (same architecture)."""
    if (tiny_model_dir() / "config.json").exists():
        return TINY_MODEL_NAME
    return str(build_random_tiny_model(tmp_path_factory.mktemp("tiny-qwen2")))


def make_job(
    model: str,
    *,
    seed: int = 1,
    sample_index: int = 0,
    prompt: str = "What is 2 + 3?",
    **sampling: float,
) -> JobSpec:
    params = {"temperature": 1.0, "max_tokens": 12, "seed": seed, **sampling}
    return JobSpec(
        job_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        problem_id="p1",
        messages=[ChatMessage(role="user", content=prompt)],
        model=ModelRef(name=model),
        sampling=SamplingParams.model_validate(params),
        sample_index=sample_index,
        samples_per_problem=4,
    )


def deadline(seconds: float = 600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
def coordinator() -> Iterator[FakeCoordinator]:
    server = FakeCoordinator()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class EchoEngine:
    """A deterministic stand-in for a model, for tests whose unit is the daemon around it: it
    echoes the job id, takes `delay_s` per batch (checking `should_stop` as a decode loop does)
    and records when each batch started and ended."""

    info = EngineInfo(name="transformers", version="test", dtype="float32", device="cpu")
    model_name = MODEL
    verifiable = True
    default_batch = 8

    def __init__(self, delay_s: float = 0.0, verifiable: bool = True) -> None:
        self.delay_s = delay_s
        self.traces_verifiable = verifiable
        self.batches: list[list[JobSpec]] = []
        self.spans: list[tuple[float, float]] = []
        self.refuse: Callable[[JobSpec], str | None] = lambda job: None
        self.text: Callable[[JobSpec], str] = lambda job: str(job.job_id)

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        self.batches.append(list(jobs))
        started = time.monotonic()
        deadline = started + self.delay_s
        while time.monotonic() < deadline:
            if should_stop is not None and should_stop():
                return []
            time.sleep(0.01)
        self.spans.append((started, time.monotonic()))
        return [
            Generation(
                self.text(job),
                [1, 2],
                [-0.5, -0.25],
                FinishReason.stop,
                3,
                self.delay_s,
                verifiable=self.traces_verifiable,
            )
            for job in jobs
        ]

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        return 256

    def unsupported(self, job: JobSpec) -> str | None:
        return self.refuse(job)

    def close(self) -> None:
        return None


def make_worker(server: FakeCoordinator, tmp: Path, engine: EchoEngine, **config: object) -> Worker:
    settings = WorkerConfig.model_validate(
        {"coordinator": server.url, "model": MODEL, "state_dir": tmp, "poll_interval_s": 0.1, **config}
    )
    retry = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    stop = threading.Event()
    client = CoordinatorClient(server.url, server.token or "tok", retry=retry, stop=stop)
    spool = Spool(settings.spool_dir)
    return Worker(settings, client, engine, spool, NoProgress(), HardwareInfo(cpu_count=1), stop)

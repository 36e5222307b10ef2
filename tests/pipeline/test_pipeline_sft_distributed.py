"""SFT over two processes (torchrun, FSDP2 on gloo) against one process on the bundled tiny model:
the same loss at every step, the same published weights, an exact resume from the sharded
snapshots, and the pipeline's SFT job taking the two-process path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ml.training import distributed, finetune, sft
from shared.assets import TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import SftSpec
from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import create_job, download, wait_for
from tests.pipeline.test_pipeline_distill import _two_style_campaign
from tests.pipeline.test_pipeline_sft import _no_progress, _rows, _spec

# 20 rows, 3 held out: 17 train rows in batches of 4, so every fifth step's batch is one row and
# the second rank has none (it runs a zero-weighted pass); micro-batches of one row give each rank
# two passes of a full batch. Eval every 5 steps, a sharded snapshot every 5.
RUN = {"max_steps": 20, "micro_batch": 1, "eval_fraction": 0.15, "eval_every": 5, "checkpoint_every": 5}
pytestmark = pytest.mark.slow  # four torchrun launches of two processes each
LOSS_RTOL = 1e-5  # float32 sums in another order, compounded over 20 Adam steps
WEIGHT_ATOL = 1e-4


def _weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _largest_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sft.SftResult, sft.SftResult]]:
    """The same 20-step job in one process and in two (torchrun gives each of those one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root, source, rows = tmp_path_factory.mktemp("sft"), ModelSource(str(tiny_model_dir())), _rows(20)
    one = finetune.train(rows, source, _spec(**RUN), root / "one", _no_progress)
    two = finetune.train(rows, source, _spec(**RUN, nproc=2), root / "two", _no_progress)
    torch.set_num_threads(threads)
    yield one, two


def test_two_processes_take_the_single_process_loss_at_every_step(
    runs: tuple[sft.SftResult, sft.SftResult],
) -> None:
    one, two = runs
    assert [s for s, _ in two.curve["train"]] == list(range(1, 21))
    for (_, single), (_, split) in zip(one.curve["train"], two.curve["train"], strict=True):
        assert split == pytest.approx(single, rel=LOSS_RTOL)
    assert [s for s, _ in two.curve["eval"]] == [0, 5, 10, 15, 20]
    for (_, single), (_, split) in zip(one.curve["eval"], two.curve["eval"], strict=True):
        assert split == pytest.approx(single, rel=LOSS_RTOL)
    assert one.curve["train"][-1][1] < 0.5 * one.curve["train"][0][1]  # it learned: not a flat curve
    assert two.metrics["nproc"] == 2 and two.metrics["engine"] == "fsdp2"
    assert two.metrics["train_tokens"] == one.metrics["train_tokens"]


def test_two_processes_publish_the_single_process_weights(runs: tuple[sft.SftResult, sft.SftResult]) -> None:
    one, two = runs
    before = _weights(tiny_model_dir() / "model.safetensors")
    single, split = _weights(one.weights), _weights(two.weights)
    assert _largest_gap(single, split) < WEIGHT_ATOL
    assert _largest_gap(single, {k: before[k] for k in single}) > 100 * WEIGHT_ATOL  # weights moved


def test_an_interrupted_two_process_run_resumes_from_its_shards(
    runs: tuple[sft.SftResult, sft.SftResult], tmp_path: Path
) -> None:
    _, straight = runs
    rows, source, spec = _rows(20), ModelSource(str(tiny_model_dir())), _spec(**RUN, nproc=2)

    def crash_at_twelve(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
        if metrics["step"] == 12:  # after the snapshot of step 10
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        finetune.train(rows, source, spec, tmp_path, crash_at_twelve)
    assert (tmp_path / distributed.RESUME / "latest").read_text() == "step-10"
    assert sorted(p.name for p in (tmp_path / distributed.RESUME / "step-10").glob("rank-*.pt")) == [
        "rank-0.pt",
        "rank-1.pt",
    ]
    resumed = finetune.train(rows, source, spec, tmp_path, _no_progress)
    assert resumed.curve["train"][:10] == straight.curve["train"][:10]  # restored, not recomputed
    for (_, a), (_, b) in zip(resumed.curve["train"], straight.curve["train"], strict=True):
        assert a == pytest.approx(b, rel=1e-6)
    assert _largest_gap(_weights(resumed.weights), _weights(straight.weights)) < 1e-6


def test_a_batch_that_does_not_split_over_the_processes_is_refused() -> None:
    with pytest.raises(ValidationError, match="multiple of nproc"):
        _spec(batch_size=5, nproc=2)
    assert _spec(batch_size=6, nproc=3).engine == "fsdp2"
    assert SftSpec.model_validate({"dataset": "0" * 64, "model": TINY_MODEL_NAME}).nproc == 1


def test_an_sft_job_with_two_processes_publishes_the_single_process_checkpoint(
    api: Api, tmp_path: Path
) -> None:
    """Through the API: LoRA over two processes, the merged checkpoint a worker downloads against
    the same rows trained in one process here."""
    campaign_id = _two_style_campaign(api)
    selected = wait_for(api, _created(api, {"kind": "select", "campaign_ids": [campaign_id]}), {"done"})
    dataset = selected["outputs"]["dataset"]["sha256"]
    spec = {"kind": "sft", "dataset": dataset, "model": TINY_MODEL_NAME, "method": "lora", "lr": 1e-2,
            "max_steps": 3, "batch_size": 4, "device": "cpu", "eval_fraction": 0.0, "nproc": 2}  # fmt: skip
    trained = wait_for(api, _created(api, spec), {"done"})
    report = json.loads(download(api, trained["outputs"]["report"]["sha256"]))
    assert report["metrics"]["nproc"] == 2 and len(report["curve"]["train"]) == 3
    (tmp_path / "job.safetensors").write_bytes(download(api, trained["outputs"]["checkpoint"]["sha256"]))
    rows = [json.loads(line) for line in download(api, dataset).splitlines()]
    single = finetune.train(
        rows,
        ModelSource(str(tiny_model_dir())),
        SftSpec.model_validate({**spec, "nproc": 1}),
        tmp_path / "one",
        _no_progress,
    )
    for (_, a), (_, b) in zip(report["curve"]["train"], single.curve["train"], strict=True):
        assert a == pytest.approx(b, rel=LOSS_RTOL)
    assert _largest_gap(_weights(tmp_path / "job.safetensors"), _weights(single.weights)) < WEIGHT_ATOL


def _created(api: Api, spec: dict[str, Any]) -> str:
    created = create_job(api, spec)
    api.drain()
    return str(created["id"])

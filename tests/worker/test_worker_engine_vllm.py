"""The vLLM engine: its logits processor logic runs on torch alone; loading vLLM needs a GPU box."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from conftest import make_job

from shared.protocol import SamplingParams
from shared.sampling import sample_step
from worker.engines import vllm as vllm_engine
from worker.engines.vllm import EXTRA_KEY, _RowState, apply_batch_update, force_tokens

SWAP, ONE_WAY = "swap", "one-way"


def request(key: str, seed: int, output: list[int]) -> tuple[SimpleNamespace, list[int]]:
    sampling = SamplingParams(temperature=1.0, top_k=8, seed=seed).model_dump()
    params = SimpleNamespace(extra_args={EXTRA_KEY: {"key": key, "sample_index": 2, "sampling": sampling}})
    return params, output


def test_batch_updates_follow_adds_removes_and_moves() -> None:
    rows: dict[int, _RowState] = {}
    a, b, c = request("a", 1, []), request("b", 2, [5]), request("c", 3, [])
    plain = SimpleNamespace(extra_args=None)
    added = [(0, a[0], None, a[1]), (1, b[0], None, b[1]), (2, c[0], None, c[1]), (3, plain, None, [])]
    apply_batch_update(rows, SimpleNamespace(removed=[], added=added, moved=[]), SWAP)
    assert {i: r.key for i, r in rows.items()} == {0: "a", 1: "b", 2: "c"}
    apply_batch_update(
        rows, SimpleNamespace(removed=[1], added=[], moved=[(0, 2, SWAP), (2, 1, ONE_WAY)]), SWAP
    )
    # remove b; swap a<->c; move a from 2 to 1
    assert {i: r.key for i, r in rows.items()} == {0: "c", 1: "a"}


def test_force_tokens_leaves_only_the_seeded_sample() -> None:
    vllm_engine._RECORDS.clear()
    rows: dict[int, _RowState] = {}
    a, b = request("a", 10, [4, 4, 4]), request("b", 11, [])
    added = [(0, a[0], None, a[1]), (2, b[0], None, b[1])]
    apply_batch_update(rows, SimpleNamespace(removed=[], added=added, moved=[]), SWAP)
    logits = torch.randn(3, 50)
    original = logits.clone()
    forced = force_tokens(logits, rows)
    sampling = [rows[0].sampling, rows[2].sampling]
    tokens, logprobs = sample_step(torch, original[[0, 2]], [10, 11], [2, 2], [3, 0], sampling)
    assert torch.equal(forced[1], original[1])  # a request without our arguments is untouched
    for row, token in zip((0, 2), tokens.tolist(), strict=True):
        assert forced[row].argmax().item() == token
        assert torch.isfinite(forced[row]).sum().item() == 1
    assert vllm_engine._RECORDS["a"] == {3: (tokens[0].item(), pytest.approx(logprobs[0].item()))}
    assert vllm_engine._RECORDS["b"] == {0: (tokens[1].item(), pytest.approx(logprobs[1].item()))}


needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a GPU"
)


@needs_vllm
@pytest.mark.gpu
def test_vllm_engine_generates_seeded_tokens(tiny_model: str) -> None:
    engine = vllm_engine.VllmEngine.load(tiny_model, gpu_memory_utilization=0.3)
    prompt = "zq xv ## ?? 7 ~"  # out of distribution: the model stays uncertain, seeds matter
    jobs = [
        make_job(tiny_model, seed=s, max_tokens=8, prompt=prompt, temperature=1.5)
        for s in (1, 1, *range(2, 10))
    ]
    first, again, *others = engine.generate(jobs)
    assert first.completion_token_ids == again.completion_token_ids
    assert any(o.completion_token_ids != first.completion_token_ids for o in others)
    assert len(first.logprobs) == len(first.completion_token_ids)

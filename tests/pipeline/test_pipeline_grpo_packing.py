"""GRPO's policy-gradient passes on packed rows (SFT's packing: rollouts end to end, positions
restarting with each), on the bundled tiny model: the recomputed logprobs, a minibatch's loss and
gradients, and a whole step equal the padded computation's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ml import loading
from ml.training import batches, grpo
from shared.assets import TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import GrpoSpec
from shared.protocol import SamplingParams

SAMPLING = SamplingParams(temperature=1.0, max_tokens=64)
PACK = 96  # tokens per packed row: room for two or three of the rollouts below


def _model() -> Any:
    return loading.load_model(ModelSource(str(tiny_model_dir())), "cpu", "float32", trainable=True)


def _spec(packing: bool, **overrides: Any) -> GrpoSpec:
    base = {"model": TINY_MODEL_NAME, "problem_set_id": str(uuid.uuid4()), "device": "cpu", "lr": 3e-4}
    fields = {**base, "micro_batch": 8, "pack_length": PACK, "sampling": SAMPLING.model_dump()}
    return GrpoSpec.model_validate({**fields, "packing": packing, **overrides})


def _rollouts(model: Any) -> list[grpo.Rollout]:
    """Two groups of three rollouts of different lengths; the claimed logprobs are the model's own,
    nudged so that ratios differ from 1 and some get clipped."""
    import torch

    tokenizer = loading.load_tokenizer(ModelSource(str(tiny_model_dir())))
    shells = []
    for g, question in enumerate(("What is 12 + 30?", "What is 9 * 7?")):
        for k, answer in enumerate(("42", "The answer is \\boxed{63}.", "It is 7 times 9, so 63 " * 2)):
            example = batches.encode(tokenizer, [{"role": "user", "content": question}], answer)
            zeros = [0.0] * len(example.completion_ids)
            advantage = 1.0 if k % 2 == g % 2 else -1.0
            shells.append(grpo.Rollout(f"g{g}", 0, example.prompt_ids, example.completion_ids, zeros, 0.0,
                                       advantage > 0, advantage))  # fmt: skip
    with torch.inference_mode():
        own = [grpo.token_logprobs(model, grpo._collate([r], 0), SAMPLING).tolist() for r in shells]
    nudged = [[lp + 0.3 * ((j % 3) - 1) for j, lp in enumerate(lps)] for lps in own]
    return [grpo.Rollout(r.group_id, 0, r.prompt_ids, r.completion_ids, lps, r.reward, r.passed, r.advantage)
            for r, lps in zip(shells, nudged, strict=True)]  # fmt: skip


@pytest.fixture(scope="module")
def rollouts() -> list[grpo.Rollout]:
    return _rollouts(_model())


def test_packed_rollouts_share_rows_and_keep_their_tokens_in_rollout_order(
    rollouts: list[grpo.Rollout],
) -> None:
    padded = grpo._batch(rollouts, _spec(packing=False), 0)
    packed = grpo._batch(rollouts, _spec(packing=True), 0)
    assert packed.attention is None and padded.position_ids is None
    assert 1 < packed.ids.shape[0] < len(rollouts) and packed.ids.shape[1] <= PACK
    assert packed.ids.numel() < padded.ids.numel()
    for name in ("tokens", "old", "advantages", "owner"):
        assert getattr(packed, name).tolist() == getattr(padded, name).tolist()
    # Each completion token is read from the logits of the packed position just before it.
    predicted_from = packed.ids[packed.at[:, 0], packed.at[:, 1] + 1]
    assert predicted_from.tolist() == packed.tokens.tolist()


def test_logprobs_recomputed_under_packing_equal_the_padded_ones(rollouts: list[grpo.Rollout]) -> None:
    import torch

    model = _model()
    with torch.inference_mode():
        padded = grpo.token_logprobs(model, grpo._batch(rollouts, _spec(packing=False), 0), SAMPLING)
        packed = grpo.token_logprobs(model, grpo._batch(rollouts, _spec(packing=True), 0), SAMPLING)
    assert packed.shape == padded.shape == (sum(len(r.completion_ids) for r in rollouts),)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)


def _gradients(
    packing: bool, rollouts: list[grpo.Rollout]
) -> tuple[tuple[float, int, float], dict[str, Any]]:
    """One minibatch update with a zero learning rate: its (loss, clipped, grad norm) and gradients."""
    import torch

    policy, reference, spec = _model(), _model(), _spec(packing, kl_coef=0.05, micro_batch=4)
    plan = grpo._plan(reference, rollouts, spec, 0)
    assert len(plan) == 1 and len(plan[0].chunks) == 2  # two micro-batches, gradients accumulated
    out = grpo._update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), plan[0], spec, 0)
    return out, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def test_a_packed_minibatch_gives_the_padded_loss_and_gradients(rollouts: list[grpo.Rollout]) -> None:
    import torch

    (loss, clipped, norm), grads = _gradients(True, rollouts)
    (padded_loss, padded_clipped, padded_norm), padded_grads = _gradients(False, rollouts)
    assert clipped == padded_clipped > 0  # the nudged ratios did reach the clip
    assert loss == pytest.approx(padded_loss, rel=1e-5, abs=1e-7)
    assert norm == pytest.approx(padded_norm, rel=1e-4)
    assert grads.keys() == padded_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-3, atol=1e-6, msg=name)


def test_a_packed_step_takes_the_padded_step(rollouts: list[grpo.Rollout]) -> None:
    import torch

    initial = {n: p.detach().clone() for n, p in _model().named_parameters()}
    results = {}
    for packing in (True, False):
        policy, reference, spec = _model(), _model(), _spec(packing, kl_coef=0.05, updates_per_version=2)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
        metrics = grpo.step(policy, reference, optimizer, rollouts, spec, 0, version=0)
        results[packing] = metrics, {n: p.detach() - initial[n] for n, p in policy.named_parameters()}
    (packed, packed_moves), (padded, padded_moves) = results[True], results[False]
    assert (packed["packing"], padded["packing"]) == (True, False)
    assert packed["rollouts_trained"] == padded["rollouts_trained"] == len(rollouts)
    assert packed["optimizer_steps"] == padded["optimizer_steps"] == 2
    for key in ("loss", "kl", "logprob_gap", "clip_fraction", "grad_norm"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-7), key
    assert max(float(m.abs().max()) for m in padded_moves.values()) > spec.lr  # the weights did move
    # Adam moves a weight by about lr whatever its gradient's size, so the float noise of a near-zero
    # gradient can show in its move: the moves are compared to a share of lr.
    for name, move in packed_moves.items():
        torch.testing.assert_close(move, padded_moves[name], rtol=0, atol=0.05 * spec.lr, msg=name)


def test_a_rollout_without_a_prompt_is_refused() -> None:
    bare = grpo.Rollout("g", 0, [], [5, 6], [-1.0, -1.0], 1.0, True, 1.0)
    with pytest.raises(ValueError, match="without prompt tokens"):
        grpo._collate([bare], 0, PACK)

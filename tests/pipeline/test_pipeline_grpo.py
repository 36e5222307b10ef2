"""GRPO with volunteer rollouts: advantages from coordinator-side rewards, the importance ratio from the
workers' logprobs, zero-advantage groups skipped, stale groups dropped, policy versions published."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from coordinator.db import transaction
from coordinator.pipeline import rl, service
from coordinator.results.models import Trace
from ml import loading
from ml.training import batches, grpo
from shared.assets import TINY_MODEL_NAME, ModelSource, tiny_model_dir
from shared.pipeline_types import GrpoSpec
from shared.protocol import ChatMessage, HardwareInfo, JobSpec, ModelRef, SamplingParams
from tests.coordinator.conftest import Api
from tests.pipeline.pipeline_helpers import (
    campaign,
    create_job,
    download,
    lease_all,
    live_server,
    problem_set,
    submit,
    trace,
    wait_for,
    wait_until,
    worked,
)
from tests.waiting import wait_for as wait_on
from worker.loop import Worker
from worker.rollouts import PolicyEngine

SAMPLING = SamplingParams(temperature=1.0, max_tokens=128)


class Policy:
    """An honest worker's numbers for a chosen completion: its tokens and the sampler's logprobs."""

    def __init__(self, weights: Any = None) -> None:
        source = ModelSource(str(tiny_model_dir()), weights)
        self.model, self.tokenizer = loading.load_model(source, "cpu"), loading.load_tokenizer(source)

    def rollout(self, prompt: str, completion: str) -> tuple[list[int], list[int], list[float]]:
        example = batches.encode(self.tokenizer, [{"role": "user", "content": prompt}], completion)
        batch = grpo._collate([_rollout(example.prompt_ids, example.completion_ids, [0.0] * 999, 0.0)], 0)
        import torch

        with torch.inference_mode():
            logprobs = grpo.token_logprobs(self.model, batch, SAMPLING).tolist()
        return example.prompt_ids, example.completion_ids, logprobs


def _rollout(
    prompt: list[int], completion: list[int], logprobs: list[float], advantage: float
) -> grpo.Rollout:
    return grpo.Rollout("g", 0, prompt, completion, logprobs[: len(completion)], 0.0, False, advantage)


def _spec(**overrides: Any) -> GrpoSpec:
    base = {
        "model": TINY_MODEL_NAME,
        "problem_set_id": str(uuid.uuid4()),
        "device": "cpu",
        "lr": 3e-4,
        "micro_batch": 4,
        "sampling": SAMPLING.model_dump(),
    }
    return GrpoSpec.model_validate({**base, **overrides})


def test_advantages_are_normalised_within_a_group() -> None:
    assert rl.group_advantages([1.0, 0.0, 1.0, 0.0]) == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5)
    assert rl.group_advantages([1.0, 1.0, 1.0]) is None
    assert rl.group_advantages([0.5]) is None


def test_trainer_logprobs_match_what_the_worker_engine_reports() -> None:
    from worker.engines.hf import TransformersEngine

    engine = TransformersEngine.load(TINY_MODEL_NAME, device="cpu", dtype="float32")
    spec = JobSpec(
        job_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        problem_id="p",
        sample_index=3,
        samples_per_problem=4,
        model=ModelRef(name=TINY_MODEL_NAME),
        messages=[ChatMessage(role="user", content="What is 381 + 45?")],
        sampling=SAMPLING.model_copy(update={"seed": 1234}),
    )
    generated = engine.generate([spec])[0]
    policy = Policy()
    prompt = batches.encode(
        policy.tokenizer, [{"role": "user", "content": "What is 381 + 45?"}], ""
    ).prompt_ids
    rollout = _rollout(prompt, generated.completion_token_ids, generated.logprobs, 1.0)
    import torch

    with torch.inference_mode():
        trainer = grpo.token_logprobs(policy.model, grpo._collate([rollout], 0), SAMPLING)
    # Same weights, same sampler rule: the importance ratio of an on-policy rollout is 1.
    assert float((trainer - torch.tensor(generated.logprobs, dtype=torch.float64)).abs().max()) < 1e-4


def _two_groups(policy: Policy) -> list[grpo.Rollout]:
    """Two problems, each answered right (advantage 1) and wrong (advantage -1), on-policy."""
    rollouts = []
    for question, answer in (("What is 12 + 30?", 42), ("What is 9 * 7?", 63)):
        for right in (True, False):
            completion = f"The answer is \\boxed{{{answer if right else answer + 1}}}."
            prompt, tokens, logprobs = policy.rollout(question, completion)
            rollouts.append(
                grpo.Rollout("g", 0, prompt, tokens, logprobs, float(right), right, 1.0 if right else -1.0)
            )
    return rollouts


def test_a_step_makes_rewarded_completions_likelier_and_drops_forged_logprobs() -> None:
    policy, reference = Policy(), Policy()
    rollouts = _two_groups(policy)
    forged = grpo.Rollout(
        "g",
        0,
        rollouts[0].prompt_ids,
        rollouts[0].completion_ids,
        [lp - 3.0 for lp in rollouts[0].old_logprobs],
        1.0,
        True,
        1.0,
    )
    before = [sum(policy.rollout(*_texts(policy, r))[2]) for r in rollouts]
    import torch

    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-4)
    metrics = grpo.step(policy.model, reference.model, optimizer, [*rollouts, forged], _spec(), 0, version=0)
    assert metrics["dropped_logprob"] == 1 and metrics["rollouts_trained"] == 4
    assert metrics["logprob_gap"] < 1e-4 and metrics["kl"] < 1e-8 and metrics["clip_fraction"] == 0.0
    after = [sum(policy.rollout(*_texts(policy, r))[2]) for r in rollouts]
    # Rewarded completions gain on their unrewarded twins (the shared prefix cancels out).
    for rewarded, unrewarded in ((0, 1), (2, 3)):
        assert after[rewarded] - after[unrewarded] > before[rewarded] - before[unrewarded]


def test_minibatches_split_a_batch_evenly_and_in_order() -> None:
    rollouts = [_rollout([1], [2], [0.0], float(i)) for i in range(7)]
    parts = grpo.minibatches(rollouts, 3)
    assert [len(p) for p in parts] == [3, 2, 2] and [r for p in parts for r in p] == rollouts
    assert [len(p) for p in grpo.minibatches(rollouts[:2], 5)] == [1, 1]


@pytest.mark.parametrize(("updates", "epochs"), [(1, 1), (2, 1), (4, 2)])
def test_each_minibatch_of_a_version_is_one_optimizer_step(updates: int, epochs: int) -> None:
    import torch

    policy, reference = Policy(), Policy()
    rollouts = _two_groups(policy)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-4)
    spec = _spec(updates_per_version=updates, epochs_per_step=epochs)
    metrics = grpo.step(policy.model, reference.model, optimizer, rollouts, spec, 0, version=0)
    assert metrics["optimizer_steps"] == updates * epochs and metrics["rollouts_trained"] == 4
    assert {int(state["step"]) for state in optimizer.state.values()} == {updates * epochs}
    assert metrics["tokens"] == sum(len(r.completion_ids) for r in rollouts)


def _texts(policy: Policy, rollout: grpo.Rollout) -> tuple[str, str]:
    prompt = policy.tokenizer.decode(rollout.prompt_ids)
    question = prompt.split("user\n", 1)[1].split("<|im_end|>", 1)[0]
    return question, policy.tokenizer.decode(rollout.completion_ids[:-1])


def _honest(policy: Policy, job: dict[str, Any], ok: bool) -> dict[str, Any]:
    """The trace of a worker that sampled the tiny model's own worked answer (right or not)."""
    _, tokens, logprobs = policy.rollout(job["spec"]["messages"][-1]["content"], worked(job, correct=ok))
    return trace(job, worked(job, correct=ok), tokens, logprobs)


def _submit_group(
    api: Api, volunteer: dict[str, str], policy: Policy, jobs: list[dict[str, Any]], right: list[bool]
) -> None:
    submit(api, volunteer, [_honest(policy, j, ok) for j, ok in zip(jobs, right, strict=True)])


def _groups(jobs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for j in sorted(jobs, key=lambda j: (j["spec"]["problem_id"], j["spec"]["sample_index"])):
        by_problem.setdefault(j["spec"]["problem_id"], []).append(j)
    return list(by_problem.values())


def test_grpo_run_publishes_versions_from_volunteer_rollouts(api: Api) -> None:
    spec = {
        "kind": "grpo",
        "model": TINY_MODEL_NAME,
        "problem_set_id": problem_set(api, 3),
        "steps": 1,
        "group_size": 2,
        "groups_per_step": 2,
        "lr": 3e-4,
        "device": "cpu",
        "poll_s": 0.05,
        "sampling": SAMPLING.model_dump(),
    }
    created = create_job(api, spec, name="rl-test")
    wait_for(api, created["id"], {"waiting"})
    versions = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()
    assert [v["version"] for v in versions] == [0]
    v0 = versions[0]
    volunteer = api.volunteer()
    assert hashlib.sha256(download(api, v0["sha256"], volunteer)).hexdigest() == v0["sha256"]
    query = {"base_model": TINY_MODEL_NAME}
    listed = api.client.get("/v1/pipeline/policies", params=query, headers=volunteer)
    ref = {k: v0[k] for k in ("version", "sha256", "base_model", "size_bytes", "url")}
    assert listed.json() == {"policies": [ref]}
    # workers that pick their own work see the version's rollouts, sized by its weights and its base
    [rollouts] = api.client.get("/v1/models/waiting", headers=volunteer).json()["models"]
    assert rollouts["name"] == v0["model"] and rollouts["base_model"] == TINY_MODEL_NAME
    assert rollouts["queued_jobs"] == 4 and rollouts["size_bytes"] == v0["size_bytes"]
    assert rollouts["parameters"] > 0
    jobs = lease_all(api, volunteer, [v0["model"]])
    assert len(jobs) == 4 and {j["spec"]["samples_per_problem"] for j in jobs} == {2}
    assert all(j["spec"]["policy"] == ref for j in jobs)
    policy = Policy()
    first, second = _groups(jobs)
    # One group per problem, named in every job of it, with the group's size.
    assert {j["spec"]["group"]["size"] for j in jobs} == {2}
    assert [len({j["spec"]["group"]["group_id"] for j in group}) for group in (first, second)] == [1, 1]
    assert first[0]["spec"]["group"] != second[0]["spec"]["group"]
    _submit_group(api, volunteer, policy, first, [True, False])
    _submit_group(api, volunteer, policy, second, [True, True])  # zero advantage: skipped
    # One usable group of the two wanted and none in flight: the run rolls out one more problem.
    wait_until(api, created["id"], lambda body: body["metrics"]["groups"] == {"open": 2, "skipped": 1})
    extra = lease_all(api, volunteer, [v0["model"]])
    assert len(extra) == 2
    _submit_group(api, volunteer, policy, extra, [False, True])
    done = wait_for(api, created["id"], {"done"})
    latest = done["metrics"]["latest"]
    assert done["metrics"]["version"] == 1 and done["metrics"]["groups"] == {"used": 2, "skipped": 1}
    assert latest["reward"] == pytest.approx(4 / 6) and latest["accuracy"] == pytest.approx(4 / 6)
    assert latest["staleness_max"] == 0 and latest["groups_used"] == 2 and latest["rollouts_trained"] == 4
    assert latest["logprob_gap"] < 1e-4 and latest["kl"] == pytest.approx(0.0, abs=1e-8)
    versions = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()
    assert [v["version"] for v in versions] == [0, 1] and versions[1]["sha256"] != v0["sha256"]
    assert done["outputs"]["policy"]["sha256"] == versions[1]["sha256"]
    statuses = {
        api.client.get(f"/v1/campaigns/{c}", headers=api.operator).json()["status"]
        for c in done["campaign_ids"]
    }
    assert statuses <= {"paused", "done"}
    assert api.client.get("/v1/pipeline/policies", headers=volunteer).json() == {"policies": []}


def test_jobs_of_other_campaigns_carry_no_rollout_fields(api: Api) -> None:
    """An older worker refuses unknown keys: a job that is no rollout must not even name them."""
    campaign(api, problem_set(api, 1), samples=1)
    [leased] = lease_all(api, api.volunteer())
    assert "policy" not in leased["spec"] and "group" not in leased["spec"]


def test_rollouts_beyond_the_staleness_bound_are_dropped(api: Api) -> None:
    spec = {
        "kind": "grpo",
        "model": TINY_MODEL_NAME,
        "problem_set_id": problem_set(api, 4),
        "steps": 2,
        "group_size": 2,
        "groups_per_step": 1,
        "max_staleness": 0,
        "device": "cpu",
        "poll_s": 0.05,
        "sampling": SAMPLING.model_dump(),
    }
    created = create_job(api, spec)
    wait_for(api, created["id"], {"waiting"})
    run_id = uuid.UUID(created["id"])
    with transaction(api.runtime.sessions) as session:  # a second v0 campaign, finished too late
        run = service.get_job(session, run_id)
        first = rl.latest(session, run_id)
        assert first is not None
        rl.start_rollouts(session, run, GrpoSpec.model_validate(run.spec), first, 1)
    volunteer = api.volunteer()
    model = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()[0][
        "model"
    ]
    groups = _groups(lease_all(api, volunteer, [model]))
    assert len(groups) == 2
    _submit_group(api, volunteer, Policy(), groups[0], [True, False])
    wait_until(api, created["id"], lambda body: body["metrics"]["version"] == 1)
    _submit_group(api, volunteer, Policy(), groups[1], [False, True])
    body = wait_until(api, created["id"], lambda body: body["metrics"]["groups"].get("stale") == 1)
    assert body["metrics"]["groups"]["used"] == 1 and body["metrics"]["version"] == 1
    paused = api.client.get(f"/v1/campaigns/{body['campaign_ids'][1]}", headers=api.operator).json()
    assert paused["status"] in {"paused", "done"}
    api.client.post(f"/v1/pipeline/jobs/{created['id']}/cancel", headers=api.operator)


def _grpo_spec(api: Api, problems: int, groups_per_step: int) -> dict[str, Any]:
    return {"kind": "grpo", "model": TINY_MODEL_NAME, "problem_set_id": problem_set(api, problems),
            "steps": 1, "group_size": 2, "groups_per_step": groups_per_step, "device": "cpu", "poll_s": 0.05,
            "sampling": SAMPLING.model_dump()}  # fmt: skip


def test_once_every_problem_was_tried_the_run_trains_on_what_it_has(api: Api) -> None:
    created = create_job(api, _grpo_spec(api, problems=2, groups_per_step=2))
    wait_for(api, created["id"], {"waiting"})
    model = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()[0][
        "model"
    ]
    volunteer, policy = api.volunteer(), Policy()
    mixed, solved = _groups(lease_all(api, volunteer, [model]))
    _submit_group(api, volunteer, policy, mixed, [True, False])
    _submit_group(api, volunteer, policy, solved, [True, True])
    done = wait_for(api, created["id"], {"done"})
    assert done["metrics"]["groups"] == {"used": 1, "skipped": 1} and len(done["campaign_ids"]) == 1
    assert done["metrics"]["latest"]["groups_used"] == 1


def test_a_set_without_any_learning_signal_fails_the_run_with_the_reason(api: Api) -> None:
    created = create_job(api, _grpo_spec(api, problems=1, groups_per_step=1))
    wait_for(api, created["id"], {"waiting"})
    model = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()[0][
        "model"
    ]
    volunteer = api.volunteer()
    _submit_group(api, volunteer, Policy(), lease_all(api, volunteer, [model]), [False, False])
    failed = wait_until(api, created["id"], lambda body: body["status"] == "failed")
    assert "same reward" in failed["error"] and failed["metrics"]["groups"] == {"skipped": 1}


def _first_model(api: Api, run_id: str) -> str:
    versions = api.client.get(f"/v1/pipeline/jobs/{run_id}/policy", headers=api.operator).json()
    model: str = versions[0]["model"]
    return model


def _verified(api: Api, campaign_id: str) -> int:
    progress = api.client.get(f"/v1/campaigns/{campaign_id}", headers=api.operator).json()["progress"]
    return int(progress["accepted"]) + int(progress["rejected"])


def test_withdrawn_and_unverifiable_rollouts_never_reach_the_trainer(api: Api) -> None:
    created = create_job(api, {**_grpo_spec(api, problems=1, groups_per_step=1), "group_size": 4})
    waiting = wait_for(api, created["id"], {"waiting"})
    volunteer, policy = api.volunteer(), Policy()
    [group] = _groups(lease_all(api, volunteer, [_first_model(api, created["id"])]))
    withdrawn, unverifiable, wrong, right = group
    first = [_honest(policy, withdrawn, True), _honest(policy, wrong, False)]
    submit(api, volunteer, [*first, {**_honest(policy, unverifiable, True), "verifiable": False}])
    [campaign_id] = waiting["campaign_ids"]
    # The group is not complete yet: the run waits.
    wait_on(lambda: _verified(api, campaign_id) >= 3, 120, lambda: f"{_verified(api, campaign_id)} verified")
    with transaction(api.runtime.sessions) as session:  # what a failed validation of its worker does
        session.execute(
            update(Trace).where(Trace.job_id == uuid.UUID(withdrawn["spec"]["job_id"])).values(withdrawn=True)
        )
    submit(api, volunteer, [_honest(policy, right, True)])  # completes the group
    latest = wait_for(api, created["id"], {"done"})["metrics"]["latest"]
    # Rewarded alone, the other two would be [1, 0, 1, 1]; the trainer saw only the wrong and the last.
    assert latest["rollouts_trained"] == 2 and latest["rollouts_excluded"] == 2
    assert latest["reward"] == pytest.approx(0.5) and latest["groups_used"] == 1


def _daemon(url: str, volunteer: dict[str, str], folder: Path) -> tuple[Worker, PolicyEngine]:
    """A worker daemon that serves the tiny model and the policy versions built on it (CPU)."""
    from worker.client import CoordinatorClient
    from worker.config import RetryPolicy, WorkerConfig
    from worker.progress import NoProgress
    from worker.rollouts import start_serving
    from worker.spool import Spool

    token = volunteer["Authorization"].removeprefix("Bearer ")
    config = WorkerConfig.model_validate(
        {"coordinator": url, "token": token, "model": TINY_MODEL_NAME, "device": "cpu", "dtype": "float32",
         "state_dir": folder, "serve_policies": True, "batch_size": 8, "poll_interval_s": 0.2,
         "policy_poll_s": 0.2, "progress": "none"}
    )  # fmt: skip
    stop = threading.Event()
    retry = RetryPolicy(attempts=4, base_delay_s=0.05, max_delay_s=0.5)
    client = CoordinatorClient(url, token, retry=retry, stop=stop)
    engine, policies = start_serving(config, client, stop)
    assert isinstance(engine, PolicyEngine)
    parts = (Spool(config.spool_dir), NoProgress(), HardwareInfo(cpu_count=1), stop)
    return Worker(config, client, engine, *parts, policies=policies), engine


def test_a_worker_daemon_serves_the_rollouts_of_each_policy_version(api: Api, tmp_path: Path) -> None:
    spec = {**_grpo_spec(api, problems=8, groups_per_step=2), "steps": 2, "group_size": 4, "max_staleness": 0,
            "lr": 3e-4, "sampling": {"temperature": 1.0, "max_tokens": 64}}  # fmt: skip
    created = create_job(api, spec)
    wait_for(api, created["id"], {"waiting"})
    with live_server(api.client.app) as url:
        worker, engine = _daemon(url, api.volunteer(), tmp_path / "worker")
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            done = wait_for(api, created["id"], {"done"}, timeout=240)
        finally:
            worker.stop.set()
            thread.join(timeout=60)
    versions = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()
    history = done["metrics"]["history"]
    assert [v["version"] for v in versions] == [0, 1, 2] and len(history) == 2
    for entry in history:
        # Only on-policy rollouts count (max_staleness 0), and their logprobs are the trainer's own:
        # each version was rolled out with its own downloaded weights.
        assert entry["rollouts_trained"] >= 4 and entry["dropped_logprob"] == 0
        assert entry["logprob_gap"] < 1e-4
    cached = {p.name for p in (tmp_path / "worker" / "policies").iterdir()}
    assert {versions[0]["sha256"], versions[1]["sha256"]} <= cached
    assert engine.running == versions[1]["model"] and worker.stats.accepted >= 16

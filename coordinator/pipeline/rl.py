"""The coordinator's side of GRPO with volunteer rollouts: policy versions, rollout groups, rewards.

Version k of a run's policy is an artifact (safetensors); its rollouts are a campaign whose model
is `flywheel-artifact/<sha256>` and whose `samples_per_problem` is the group size, so a group is
one problem's jobs in that campaign. Rewards are the verifier scores the coordinator stored and
advantages are normalised within each group here, never taken from a worker. A group whose policy
version is more than `max_staleness` behind the newest is dropped unused; a group whose rewards are
all equal is skipped (zero advantage); when too few usable groups remain in flight, more problems
are rolled out under the newest version.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from coordinator.campaigns import repository as campaigns_repository
from coordinator.campaigns import service as campaigns
from coordinator.campaigns.models import Campaign, CampaignStatus
from coordinator.jobs import repository as jobs_repository
from coordinator.pipeline import repository, service
from coordinator.pipeline.artifacts import ArtifactStore
from coordinator.pipeline.models import (
    GROUP_OPEN,
    GROUP_SKIPPED,
    GROUP_STALE,
    GROUP_USED,
    PipelineJob,
    PolicyVersion,
    RolloutGroup,
)
from coordinator.results.models import ACCEPTED
from shared.pipeline_types import GrpoSpec, PolicyVersionOut, artifact_model_name
from shared.protocol import PolicyList, PolicyRef, RolloutGroupRef

LIVE_POLICIES = 64  # versions listed to workers at most: more would never all be served at once
ADV_EPS = 1e-6


def group_advantages(rewards: Sequence[float]) -> list[float] | None:
    """(r - mean) / std within a group; None when every reward is the same (nothing to learn)."""
    if len(rewards) < 2:
        return None
    mean, std = statistics.fmean(rewards), statistics.pstdev(rewards)
    if std < 1e-9:
        return None
    return [(r - mean) / (std + ADV_EPS) for r in rewards]


@dataclass
class GroupRollout:
    group_id: uuid.UUID
    policy_version: int
    prompt: str
    system: str | None
    completion_ids: list[int]
    logprobs: list[float]
    reward: float
    passed: bool
    advantage: float


@dataclass
class Plan:
    """What one look at a run's rollouts found."""

    train: list[GroupRollout] = field(default_factory=list)
    used_groups: list[uuid.UUID] = field(default_factory=list)
    complete: int = 0  # groups fully verified this look (used or skipped)
    skipped: int = 0
    stale: int = 0
    open_groups: int = 0
    verified_open: int = 0  # rollouts verified within still-open groups
    top_up: int = 0  # problems to roll out now under the newest version
    exhausted: bool = False  # every problem was tried under this version and none has a signal
    excluded: int = 0  # rollouts of the trained-on groups left out: withdrawn or unverifiable


# --------------------------------------------------------------------------- policy versions


def publish(
    session: Session,
    files: ArtifactStore,
    run: PipelineJob,
    version: int,
    weights: Path,
    base_model: str,
    metrics: dict[str, Any],
) -> PolicyVersion:
    """Make `weights` version `version` of the run's policy (idempotent per version)."""
    for existing in repository.policy_versions(session, run.id):
        if existing.version == version:
            return existing
    artifact = service.register_artifact(
        session,
        files,
        weights,
        kind="policy",
        name=f"{run.name}/policy",
        filename="model.safetensors",
        media_type="application/octet-stream",
        job_id=run.id,
        meta={"base_model": base_model, "run_id": str(run.id), "policy_version": version},
    )
    return repository.add_policy_version(
        session,
        PolicyVersion(
            run_id=run.id, version=version, sha256=artifact.sha256, base_model=base_model, metrics=metrics
        ),
    )


def latest(session: Session, run_id: uuid.UUID) -> PolicyVersion | None:
    return repository.latest_policy(session, run_id)


def versions(session: Session, run_id: uuid.UUID) -> Sequence[PolicyVersion]:
    return repository.policy_versions(session, run_id)


def version_out(session: Session, version: PolicyVersion) -> PolicyVersionOut:
    artifact = service.get_artifact(session, version.sha256)
    return PolicyVersionOut(
        version=version.version,
        sha256=version.sha256,
        model=artifact_model_name(version.sha256),
        base_model=version.base_model,
        size_bytes=artifact.size_bytes,
        metrics=version.metrics,
        created_at=version.created_at,
        url=service.artifact_url(version.sha256),
    )


def _policy_ref(version: int, sha256: str, base_model: str, size_bytes: int) -> PolicyRef:
    return PolicyRef(
        version=version,
        sha256=sha256,
        base_model=base_model,
        size_bytes=size_bytes,
        url=service.artifact_url(sha256),
    )


def rollout_refs(
    session: Session, job_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[PolicyRef, RolloutGroupRef]]:
    """job id -> (policy version, group) for the GRPO rollout jobs among these, for their specs."""
    policies: dict[tuple[str, int], PolicyRef] = {}  # one ref per version in the batch
    out = {}
    for row in repository.rollout_refs(session, job_ids):
        key = (row.sha256, row.version)
        if key not in policies:
            policies[key] = _policy_ref(row.version, row.sha256, row.base_model, row.size_bytes)
        out[row.job_id] = (policies[key], RolloutGroupRef(group_id=row.group_id, size=row.group_size))
    return out


def live_policies(session: Session, base_model: str | None) -> PolicyList:
    """Versions with rollout jobs waiting, newest first, each once (two runs may share weights)."""
    refs: dict[str, PolicyRef] = {}
    for row in repository.live_policies(session, base_model, LIVE_POLICIES):
        refs.setdefault(row.sha256, _policy_ref(row.version, row.sha256, row.base_model, row.size_bytes))
    return PolicyList(policies=list(refs.values()))


# --------------------------------------------------------------------------- rollout campaigns


def _problem_order(session: Session, spec: GrpoSpec) -> list[uuid.UUID]:
    ids = list(repository.problem_ids(session, spec.problem_set_id))
    random.Random(spec.seed).shuffle(ids)
    return ids


def _campaign_seed(run_seed: int, version: int, serial: int) -> int:
    digest = hashlib.sha256(f"grpo:{run_seed}:{version}:{serial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2  # below 2**62, as campaign seeds are


def start_rollouts(
    session: Session, run: PipelineJob, spec: GrpoSpec, policy: PolicyVersion, count: int
) -> uuid.UUID:
    """A campaign rolling out `count` more problems (group_size samples each) under `policy`."""
    order = _problem_order(session, spec)
    cursor, serial = int(run.state.get("cursor", 0)), int(run.state.get("serial", 0))
    chosen = [order[(cursor + i) % len(order)] for i in range(min(count, len(order)))]
    campaign = campaigns_repository.add(session, _rollout_campaign(run, spec, policy, serial))
    jobs_repository.insert_jobs(session, _rollout_jobs(campaign, chosen))
    repository.insert_groups(session, [
        {"id": uuid.uuid4(), "run_id": run.id, "policy_version": policy.version, "campaign_id": campaign.id,
         "problem_id": problem, "group_size": spec.group_size, "status": GROUP_OPEN,
         "created_at": campaign.created_at}
        for problem in chosen
    ])  # fmt: skip
    tried = run.state.get("tried", {})
    count_here = len(chosen) + (int(tried.get("count", 0)) if tried.get("version") == policy.version else 0)
    run.state = {
        **run.state,
        "cursor": cursor + len(chosen),
        "serial": serial + 1,
        "tried": {"version": policy.version, "count": count_here},  # problems rolled out under it
        "campaigns": [*run.state.get("campaigns", []), str(campaign.id)],
    }
    return campaign.id


def _rollout_campaign(run: PipelineJob, spec: GrpoSpec, policy: PolicyVersion, serial: int) -> Campaign:
    return Campaign(
        id=uuid.uuid4(),
        name=f"grpo-{run.id.hex[:16]}-v{policy.version}-{serial}",
        problem_set_id=spec.problem_set_id,
        model_name=artifact_model_name(policy.sha256),
        model_revision=None,
        sampling=spec.sampling.model_dump(),
        samples_per_problem=spec.group_size,
        seed=_campaign_seed(spec.seed, policy.version, serial),
        budget=None,
    )


def _rollout_jobs(campaign: Campaign, problems: Sequence[uuid.UUID]) -> Iterator[dict[str, Any]]:
    for problem in problems:
        for index in range(campaign.samples_per_problem):
            seed = campaigns.job_seed(campaign.seed, problem, index)
            yield {"id": uuid.uuid4(), "campaign_id": campaign.id, "problem_id": problem,
                   "sample_index": index, "seed": seed}  # fmt: skip


def _rollouts(session: Session, groups: Sequence[RolloutGroup]) -> dict[uuid.UUID, list[GroupRollout]]:
    out: dict[uuid.UUID, list[GroupRollout]] = defaultdict(list)
    for row in repository.rollouts(session, [g.id for g in groups]):
        out[row.group_id].append(
            GroupRollout(
                group_id=row.group_id,
                policy_version=row.policy_version,
                prompt=row.prompt,
                system=row.system,
                completion_ids=list(row.completion_token_ids),
                logprobs=list(row.logprobs),
                reward=float(row.score or 0.0),
                passed=row.status == ACCEPTED,
                advantage=0.0,
            )
        )
    return out


def _drop_stale(
    session: Session, run: PipelineJob, spec: GrpoSpec, current: int, plan: Plan
) -> list[RolloutGroup]:
    open_groups = list(repository.groups_by_status(session, run.id, GROUP_OPEN))
    stale = [g for g in open_groups if current - g.policy_version > spec.max_staleness]
    repository.set_group_status(session, [g.id for g in stale], GROUP_STALE)
    stale_campaigns = {g.campaign_id for g in stale}
    # stop paying for them
    repository.set_campaign_status(session, sorted(stale_campaigns), CampaignStatus.PAUSED)
    plan.stale = len(stale)
    return [g for g in open_groups if g not in stale]


def collect(session: Session, run: PipelineJob, spec: GrpoSpec, current: int) -> Plan:
    """Drop stale groups, score complete ones, and pick the groups to train on (if enough)."""
    plan = Plan()
    live = _drop_stale(session, run, spec, current, plan)
    verified = repository.verified_per_group(session, run.id)
    complete = [g for g in live if verified.get(g.id, 0) >= g.group_size]
    waiting = [g for g in live if verified.get(g.id, 0) < g.group_size]
    plan.open_groups, plan.verified_open = len(waiting), sum(verified.get(g.id, 0) for g in waiting)
    usable: list[tuple[RolloutGroup, list[GroupRollout]]] = []
    for group, rollouts in _scored(session, complete):
        if any(r.advantage != 0.0 for r in rollouts):
            usable.append((group, rollouts))
        else:
            plan.skipped += 1
            _tally(run, rollouts)  # skipped groups still say how well the policy did
    plan.complete = len(complete)
    if len(usable) < spec.groups_per_step and not waiting:
        # Too few groups with a learning signal and none in flight: try more problems under this
        # version; only once every problem has been tried, train on what there is.
        tried = run.state.get("tried", {})
        count = int(tried.get("count", 0)) if tried.get("version") == current else 0
        if count < len(repository.problem_ids(session, spec.problem_set_id)):
            plan.top_up = spec.groups_per_step - len(usable)
            return plan
        plan.exhausted = not usable
    if len(usable) >= spec.groups_per_step or not waiting:
        for group, rollouts in usable[: spec.groups_per_step]:
            plan.used_groups.append(group.id)
            plan.train.extend(rollouts)
            plan.excluded += group.group_size - len(rollouts)
    return plan


def _tally(run: PipelineJob, rollouts: Sequence[GroupRollout]) -> None:
    """Accumulate rewards of groups consumed since the last update (used or skipped) in the run state."""
    tally = dict(run.state.get("tally", {"reward": 0.0, "passed": 0, "n": 0}))
    tally["reward"] = float(tally["reward"]) + sum(r.reward for r in rollouts)
    tally["passed"] = int(tally["passed"]) + sum(r.passed for r in rollouts)
    tally["n"] = int(tally["n"]) + len(rollouts)
    run.state = {**run.state, "tally": tally}


def take_tally(run: PipelineJob) -> dict[str, float]:
    """Reward and accuracy of the rollouts consumed since the last update; resets the tally."""
    tally = run.state.get("tally", {})
    n = int(tally.get("n", 0))
    run.state = {**run.state, "tally": {"reward": 0.0, "passed": 0, "n": 0}}
    if n == 0:
        return {"rollouts": 0}
    return {"rollouts": n, "reward": float(tally["reward"]) / n, "accuracy": int(tally["passed"]) / n}


def _scored(
    session: Session, groups: Sequence[RolloutGroup]
) -> list[tuple[RolloutGroup, list[GroupRollout]]]:
    """Complete groups with rewards and advantages set; zero-advantage groups marked skipped."""
    by_group = _rollouts(session, groups)
    out = []
    skipped = []
    for group in groups:
        # Withdrawn and unverifiable rollouts are not here: the rest of the group is its baseline.
        rollouts = by_group.get(group.id, [])[: group.group_size]
        rewards = [r.reward for r in rollouts]
        if rewards:
            repository.set_group_rewards(
                session, group.id, statistics.fmean(rewards), statistics.pstdev(rewards)
            )
        advantages = group_advantages(rewards)
        if advantages is None:
            skipped.append(group.id)
        else:
            for rollout, advantage in zip(rollouts, advantages, strict=True):
                rollout.advantage = advantage
        out.append((group, rollouts))
    repository.set_group_status(session, skipped, GROUP_SKIPPED)
    return out


def record_step(session: Session, run: PipelineJob, plan: Plan, new_version: int) -> dict[str, float]:
    """Mark the trained-on groups used; returns reward and accuracy of everything consumed since the
    last update (the used groups and the skipped ones)."""
    repository.set_group_status(session, plan.used_groups, GROUP_USED, used_in_version=new_version)
    _tally(run, plan.train)
    return take_tally(run)


def group_counts(session: Session, run_id: uuid.UUID) -> dict[str, int]:
    return repository.group_counts(session, run_id)


def pause_all(session: Session, run: PipelineJob) -> None:
    """The run is over: its remaining rollout jobs are not worth a volunteer's time."""
    ids = [uuid.UUID(c) for c in run.state.get("campaigns", [])]
    repository.set_campaign_status(session, ids, CampaignStatus.PAUSED)
    open_ids = [g.id for g in repository.groups_by_status(session, run.id, GROUP_OPEN)]
    repository.set_group_status(session, open_ids, GROUP_STALE)

"""Wire protocol of Flywheel: every type that crosses HTTP between coordinator and workers.

Only pydantic and the standard library are imported here, so the worker, the verifier and the
coordinator can all depend on this module without pulling in each other.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Flywheel-Protocol"
API_PREFIX = "/v1"

# Hard bounds shared by both sides, so a worker can refuse to send what the coordinator refuses.
MAX_TEXT_CHARS = 200_000
MAX_COMPLETION_TOKENS = 32_768
MAX_TOKEN_ID = (1 << 31) - 1  # above any vocabulary; the coordinator bounds ids by the model's own
MAX_BATCH = 256
MAX_NAME = 128
MAX_ARTIFACT_BYTES = 1 << 40  # 1 TiB: far above any model a volunteer serves, low enough to refuse junk
MAX_GROUP_SIZE = 1024
ARTIFACT_MODEL_PREFIX = "flywheel-artifact/"  # + sha256: weights a pipeline job produced

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
# A public name: no control characters, no leading or trailing space.
_SHOWN, _SHOWN_NOT_SPACE = r"[^\x00-\x1f\x7f]", r"[^\s\x00-\x1f\x7f]"
TeamName = Annotated[
    str, Field(min_length=1, max_length=48, pattern=f"^{_SHOWN_NOT_SPACE}(?:{_SHOWN}*{_SHOWN_NOT_SPACE})?$")
]
# A path under the coordinator's base URL: "/"-separated segments of URL-safe characters, none
# starting with "." (so no "..") and none empty, so it can never name another host.
RelativePath = Annotated[
    str, Field(min_length=2, max_length=512, pattern=r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$")
]


class Wire(BaseModel):
    """Base of all wire models: unknown fields are an error, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- errors


class ErrorInfo(Wire):
    code: str
    message: str
    details: Any = None


class ErrorBody(Wire):
    """The one error shape: `{"error": {"code", "message", "details"}}`."""

    error: ErrorInfo


# --------------------------------------------------------------------------- workers


class Scope(str, Enum):
    volunteer = "volunteer"
    operator = "operator"
    researcher = "researcher"


# The sampler's noise schemes (docs/worker.md, "The noise"): Flywheel's own, and stock vLLM's Model
# Runner V2 Gumbel sampler (shared/vllm_gumbel.py). An engine that names none samples with the first.
NoiseScheme = Literal["flywheel-lowbias32-v1", "vllm-mrv2-philox-gumbel-v1"]
NOISE_FLYWHEEL: NoiseScheme = "flywheel-lowbias32-v1"
NOISE_VLLM_GUMBEL: NoiseScheme = "vllm-mrv2-philox-gumbel-v1"


class EngineInfo(Wire):
    name: Literal["transformers", "vllm", "openai"]
    version: str = Field(default="", max_length=64)
    dtype: str = Field(default="", max_length=32)
    device: str = Field(default="", max_length=64)
    # Left out of the JSON when None, so a coordinator that predates the field (it refuses unknown
    # fields) still takes traces from engines that use Flywheel's own noise.
    noise: NoiseScheme | None = Field(
        default=None,
        description="the seeded sampler's noise scheme; absent: flywheel-lowbias32-v1",
        exclude_if=lambda value: value is None,
    )


class HardwareInfo(Wire):
    cpu: str = Field(default="", max_length=256)
    cpu_count: int = Field(default=0, ge=0, le=100_000)
    memory_gb: float = Field(default=0.0, ge=0)
    gpus: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=64)
    gpu_memory_gb: list[float] = Field(default_factory=list, max_length=64)
    os: str = Field(default="", max_length=256)


class RegisterRequest(Wire):
    name: Name
    engine: EngineInfo
    hardware: HardwareInfo = Field(default_factory=HardwareInfo)
    models: list[Name] = Field(default_factory=list, max_length=64)
    # Needed only where the coordinator's registration mode is `invite`.
    invite_code: str | None = Field(default=None, max_length=256)
    # A team to join (created if no team has the name, case aside): its credit is its members' sum.
    team: TeamName | None = None


class RegisterResponse(Wire):
    worker_id: uuid.UUID
    token: str
    scope: Scope
    protocol_version: int = PROTOCOL_VERSION


class CreditOut(Wire):
    """The calling worker's credit (docs/credit.md): 1 credit = 1 TFLOP of accepted generation."""

    name: str
    team: str | None
    credit: float
    credit_7d: float = Field(description="credit of grants made in the last 7 days")
    tokens: int = Field(description="completion tokens of the credited traces")
    tokens_7d: int
    rank: int | None = Field(description="place on the all-time leaderboard, None without credit")


class ServerInfo(Wire):
    name: str = "flywheel"
    version: str
    protocol_version: int = PROTOCOL_VERSION


# --------------------------------------------------------------------------- jobs


class ChatMessage(Wire):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ModelRef(Wire):
    """Which model generates: a name the worker knows how to load, and an optional revision."""

    name: Name
    revision: str | None = Field(default=None, max_length=128)


class SamplingParams(Wire):
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=100_000, description="0 disables top-k")
    max_tokens: int = Field(default=512, ge=1, le=MAX_COMPLETION_TOKENS)
    seed: int = Field(default=0, ge=0, lt=2**63, description="chosen by the coordinator per job")


class BudgetForcing(Wire):
    """Test-time compute control over the thinking span (everything before `think_end`).

    Until `min_thinking_tokens` are produced, an attempt to emit `think_end` is replaced by
    `wait_text` (at most `max_waits` times); at `max_thinking_tokens`, `think_end` is forced.
    """

    min_thinking_tokens: int = Field(default=0, ge=0, le=MAX_COMPLETION_TOKENS)
    max_thinking_tokens: int | None = Field(default=None, ge=1, le=MAX_COMPLETION_TOKENS)
    max_waits: int = Field(default=1, ge=0, le=64)
    think_end: str = Field(default="</think>", min_length=1, max_length=64)
    wait_text: str = Field(default="Wait", min_length=1, max_length=64)


class PolicyRef(Wire):
    """One version of an RL run's policy: one safetensors file of full weights on top of a base
    model, whose config and tokenizer the worker supplies. Rollout jobs run it under the model name
    `flywheel-artifact/<sha256>`."""

    version: int = Field(ge=0, le=2**31 - 1)
    sha256: Sha256 = Field(description="of the weights file; the worker checks it before use")
    base_model: Name = Field(description="the model that supplies config and tokenizer")
    size_bytes: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)
    url: RelativePath = Field(description="download path under the coordinator URL; honours Range")

    @property
    def model_name(self) -> str:
        return ARTIFACT_MODEL_PREFIX + self.sha256


class RolloutGroupRef(Wire):
    """The group a GRPO rollout belongs to: the jobs of one problem under one policy version, whose
    rewards are normalised together by the coordinator."""

    group_id: uuid.UUID
    size: int = Field(ge=1, le=MAX_GROUP_SIZE)


class PolicyList(Wire):
    """Policy versions with rollout jobs waiting now, newest first."""

    policies: list[PolicyRef] = Field(default_factory=list, max_length=256)


class WaitingModel(Wire):
    """A model with jobs waiting: what a worker that picks its own work chooses from. The sizes
    are the coordinator's estimate from the model's config where it holds one, else None."""

    name: Name
    revision: str | None = Field(default=None, max_length=128)
    queued_jobs: int = Field(ge=0, description="jobs a lease could take now, of running campaigns")
    parameters: int | None = Field(default=None, ge=0, description="estimated from the config")
    size_bytes: int | None = Field(
        default=None, ge=0, le=MAX_ARTIFACT_BYTES, description="of the weights, as stored"
    )
    base_model: Name | None = Field(
        default=None, description="a policy version (flywheel-artifact/<sha256>): the model it is built on"
    )


class WaitingModels(Wire):
    """Models with jobs waiting now, most jobs first."""

    models: list[WaitingModel] = Field(default_factory=list, max_length=256)


class JobSpec(Wire):
    """One generation job: one problem, one sample index, within a campaign.

    `policy` and `group` are set on GRPO rollout jobs only (their model is `policy.model_name`).
    """

    job_id: uuid.UUID
    campaign_id: uuid.UUID
    problem_id: str = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    model: ModelRef
    sampling: SamplingParams
    sample_index: int = Field(ge=0)
    samples_per_problem: int = Field(ge=1)
    budget: BudgetForcing | None = None
    policy: PolicyRef | None = None
    group: RolloutGroupRef | None = None

    # No return annotation on purpose: pydantic then keeps the model's own serialisation schema
    # (the OpenAPI document), where any annotation would replace it.
    @model_serializer(mode="wrap")
    def _omit_absent_rollout_fields(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # Workers that predate these fields forbid unknown keys: a job that is not a rollout must
        # serialise exactly as it did before them.
        data = handler(self)
        if isinstance(data, dict):
            for key in ("policy", "group"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data


class LeaseRequest(Wire):
    max_jobs: int = Field(default=8, ge=1, le=MAX_BATCH)
    models: list[Name] = Field(default_factory=list, max_length=64)
    dtype: str = Field(
        default="",
        max_length=32,
        description="the engine's compute dtype (EngineInfo.dtype): campaigns that take only other "
        "dtypes are skipped; empty: the dtype the worker registered with",
    )


class LeasedJob(Wire):
    lease_id: uuid.UUID
    deadline: datetime
    spec: JobSpec


class LeaseGrant(Wire):
    jobs: list[LeasedJob]
    heartbeat_interval_s: float
    lease_ttl_s: float


class HeartbeatRequest(Wire):
    lease_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_BATCH)


class ReleaseRequest(Wire):
    """Give leases back before their deadline (a worker shutting down)."""

    lease_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_BATCH)


class ReleaseResponse(Wire):
    released: list[uuid.UUID]


class HeartbeatResponse(Wire):
    extended: dict[uuid.UUID, datetime]
    lost: list[uuid.UUID] = Field(description="leases that expired or were taken back")


# --------------------------------------------------------------------------- results


class FinishReason(str, Enum):
    stop = "stop"
    length = "length"
    error = "error"


class Timings(Wire):
    queued_s: float = Field(default=0.0, ge=0)
    generate_s: float = Field(default=0.0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)


class TraceSubmission(Wire):
    lease_id: uuid.UUID
    attempt_id: uuid.UUID = Field(description="chosen by the worker; makes re-sends idempotent")
    job_id: uuid.UUID
    text: str = Field(max_length=MAX_TEXT_CHARS)
    completion_token_ids: list[TokenId] = Field(max_length=MAX_COMPLETION_TOKENS)
    logprobs: list[float] = Field(max_length=MAX_COMPLETION_TOKENS)
    finish_reason: FinishReason
    timings: Timings = Field(default_factory=Timings)
    engine: EngineInfo
    hardware: HardwareInfo = Field(default_factory=HardwareInfo)
    verifiable: bool = Field(
        default=True, description="False when the engine could not apply the seeded sampler"
    )


class SubmitRequest(Wire):
    results: list[TraceSubmission] = Field(min_length=1, max_length=MAX_BATCH)


class AckStatus(str, Enum):
    accepted = "accepted"  # stored; verification queued
    duplicate = "duplicate"  # this attempt was stored before; nothing changed
    rejected = "rejected"  # not stored (lease lost, wrong job, malformed trace): do not re-send


class Ack(Wire):
    lease_id: uuid.UUID
    attempt_id: uuid.UUID
    status: AckStatus
    reason: str | None = None


class SubmitResponse(Wire):
    acks: list[Ack]


# --------------------------------------------------------------------------- verdicts


class VerifierSpec(Wire):
    """How to check an answer; travels only inside the coordinator, never to workers."""

    kind: Literal["math", "reasoning_gym", "code", "verifiers"]
    gold: Any = None
    config: dict[str, Any] = Field(default_factory=dict)


class Verdict(Wire):
    score: float = Field(ge=0.0, le=1.0)
    passed: bool
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class TraceStatus(str, Enum):
    pending = "pending"
    accepted = "accepted"
    rejected = "rejected"


class ResultStatus(Wire):
    job_id: uuid.UUID
    status: TraceStatus
    verdict: Verdict | None = None


# --------------------------------------------------------------------------- operators


class ProblemIn(Wire):
    """One line of a problem-set JSONL file (see docs/problems.md)."""

    id: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    answer: Any = None
    verifier: Literal["math", "reasoning_gym", "code", "verifiers"] = "math"
    system: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProblemSetCreate(Wire):
    name: Name
    source: Literal[
        "jsonl", "dataset", "code", "verifiers", "gsm8k", "arithmetic", "reasoning_gym", "humaneval"
    ]
    split: str = Field(default="test", max_length=32)
    limit: int | None = Field(default=None, ge=1, le=10_000_000)
    seed: int = Field(default=0, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)


class ProblemSetOut(Wire):
    id: uuid.UUID
    name: str
    source: str
    size: int
    created_at: datetime


ComputeDtype = Literal["float32", "bfloat16", "float16"]


class CampaignCreate(Wire):
    name: Name
    problem_set_id: uuid.UUID
    model: ModelRef
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    samples_per_problem: int = Field(default=1, ge=1, le=1024)
    seed: int = Field(default=0, ge=0, lt=2**62)
    budget: BudgetForcing | None = None
    worker_dtypes: list[ComputeDtype] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="compute dtypes whose traces the campaign accepts (none: any); float32 alone "
        "holds every trace to the tight validation tolerance (docs/trust.md)",
    )


class CampaignProgress(Wire):
    jobs: int
    queued: int
    leased: int
    submitted: int
    accepted: int
    rejected: int
    completion_tokens: int


class CampaignOut(Wire):
    id: uuid.UUID
    name: str
    problem_set_id: uuid.UUID
    model: ModelRef
    sampling: SamplingParams
    samples_per_problem: int
    budget: BudgetForcing | None = None
    worker_dtypes: list[ComputeDtype] | None = None
    status: Literal["running", "paused", "done"]
    created_at: datetime
    progress: CampaignProgress


class StrategyReport(Wire):
    """How one test-time-compute strategy did over a campaign's problems."""

    # fuzzy_majority and likelihood are computed by evaluation jobs (docs/pipeline.md), not campaigns.
    strategy: Literal["pass@1", "majority", "shortest", "pass@n", "fuzzy_majority", "likelihood"]
    problems: int
    accuracy: float
    tokens_per_problem: float = Field(description="completion tokens generated per problem")


class TokenCreate(Wire):
    name: Name
    scope: Scope


class TokenOut(Wire):
    worker_id: uuid.UUID
    token: str
    scope: Scope


class WorkerOut(Wire):
    id: uuid.UUID
    name: str
    scope: Scope
    banned: bool
    created_at: datetime
    last_seen_at: datetime | None
    jobs_submitted: int
    jobs_accepted: int
    in_flight: int
    in_flight_limit: int = Field(
        description="jobs it may hold at once: grows with each usable trace, up to the maximum"
    )


class Stats(Wire):
    workers: int
    problems: int
    campaigns: int
    jobs_queued: int
    jobs_leased: int
    traces_pending: int
    traces_accepted: int
    traces_rejected: int


class DatasetInfo(Wire):
    campaign_id: uuid.UUID
    name: str
    model: str
    accepted: int
    rejected: int
    pending: int


class Routes:
    """Paths under API_PREFIX; the worker client and the coordinator both read them from here."""

    info = "/info"
    register = "/workers/register"
    lease = "/leases"
    heartbeat = "/leases/heartbeat"
    release = "/leases/release"
    submit = "/results"
    artifacts = "/pipeline/artifacts"  # + /<sha256>: bytes (Range), + /<sha256>/info: the record
    policies = "/pipeline/policies"
    waiting_models = "/models/waiting"
    problem_sets = "/problem-sets"
    campaigns = "/campaigns"
    workers = "/workers"
    tokens = "/tokens"
    stats = "/stats"
    credit = "/credit"  # the caller's own; /credit/leaderboard: everyone's (public)
    datasets = "/datasets"

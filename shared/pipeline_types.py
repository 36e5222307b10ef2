"""Request and response models of the pipeline API: the operator's job specs and what it reads back.

They live in shared/ because three sides use them: the coordinator serves them, the model code
(ml/training) trains by the specs, and a worker reads an artifact's record (`ArtifactInfo`) to
fetch a policy version's weights.

A job is created from a typed spec, one per kind; a selection spec is an ordered list of steps.
Model names are either a base model a worker can load (`flywheel/tiny-arith`, a Hugging Face id)
or `flywheel-artifact/<sha256>`: weights produced by a pipeline job on top of a base model.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.protocol import (
    ARTIFACT_MODEL_PREFIX,
    MAX_ARTIFACT_BYTES,
    BudgetForcing,
    RelativePath,
    SamplingParams,
    Sha256,
)

ModelName = Annotated[str, Field(min_length=1, max_length=128)]
Device = Literal["auto", "cpu", "cuda"]
# A trainer's arithmetic: `auto` is bf16-mixed on CUDA and float32 elsewhere (ml.devices.pick_precision).
Precision = Literal["auto", "float32", "bf16-mixed"]
PRECISION_HELP = (
    "auto: bf16-mixed on CUDA, float32 on CPU; bf16-mixed: float32 weights and optimizer state, "
    "forward passes under bfloat16 autocast; float32: everything in float32"
)
JobKind = Literal["select", "sft", "evaluate", "grpo"]
JobStatus = Literal["queued", "running", "waiting", "done", "failed", "cancelled"]


def artifact_model_name(sha256: str) -> str:
    """The model name under which volunteers are asked to run an artifact's weights."""
    return ARTIFACT_MODEL_PREFIX + sha256


class Schema(BaseModel):
    """Unknown fields are an error, so a misspelt parameter never silently takes its default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- selection steps


class PassRate(Schema):
    """Keep problems whose pass rate lies in [low, high]: drop what the student already solves
    and what nobody solves. Rates come from `campaign_ids` (e.g. a student evaluation campaign over
    the same problems), or from the source campaigns when empty. Problems match by problem id."""

    op: Literal["pass_rate"] = "pass_rate"
    campaign_ids: list[uuid.UUID] = Field(default_factory=list, max_length=64)
    low: float = Field(default=0.1, ge=0.0, le=1.0)
    high: float = Field(default=0.8, ge=0.0, le=1.0)
    min_samples: int = Field(default=1, ge=1, description="problems with fewer verified samples are dropped")

    @model_validator(mode="after")
    def _band(self) -> PassRate:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


class RewardVariance(Schema):
    """Keep problems whose rewards across samples vary (std > min_std): a prompt every sample
    gets equally right or wrong teaches a policy-gradient method nothing."""

    op: Literal["reward_variance"] = "reward_variance"
    min_std: float = Field(default=0.0, ge=0.0, le=0.5)
    min_samples: int = Field(default=2, ge=2)


class StudentLoss(Schema):
    """Score each trace's completion under the student; keep the in-distribution, low-loss ones."""

    op: Literal["student_loss"] = "student_loss"
    model: ModelName
    max_loss: float | None = Field(default=None, gt=0, description="mean nats per completion token")
    keep_fraction: float | None = Field(default=None, gt=0, le=1, description="the lowest-loss share")
    batch_size: int = Field(default=16, ge=1, le=1024)
    device: Device = "auto"

    @model_validator(mode="after")
    def _threshold(self) -> StudentLoss:
        if self.max_loss is None and self.keep_fraction is None:
            raise ValueError("give max_loss, keep_fraction or both")
        return self


class TokenMask(Schema):
    """Exclude from the SFT loss the completion tokens whose loss under the student exceeds
    `max_token_loss` (nats); the mask is exported with the dataset, aligned to the student's tokens."""

    op: Literal["token_mask"] = "token_mask"
    model: ModelName
    max_token_loss: float = Field(gt=0)
    batch_size: int = Field(default=16, ge=1, le=1024)
    device: Device = "auto"


class LengthPrune(Schema):
    """Shorten and thin out passing traces, keeping only what still verifies: text after the final
    answer is cut (and the cut trace re-verified), then over-long traces are dropped."""

    op: Literal["length_prune"] = "length_prune"
    trim_after_answer: bool = True
    max_tokens: int | None = Field(default=None, ge=1, description="drop completions longer than this")
    max_ratio: float | None = Field(
        default=None, ge=1.0, description="drop traces longer than this times the problem's shortest"
    )
    per_problem: int | None = Field(default=None, ge=1, description="keep the N shortest per problem")


class Diversity(Schema):
    """Cluster sentence embeddings (all-MiniLM-L6-v2, offline) and sample evenly across clusters."""

    op: Literal["diversity"] = "diversity"
    max_records: int = Field(ge=1)
    clusters: int | None = Field(default=None, ge=1, description="default: sqrt of the record count")
    text: Literal["prompt", "completion", "both"] = "both"
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: Device = "auto"


class ShortestVerified(Schema):
    """Per problem, keep only the shortest trace that passes its verifier again (re-verified here,
    not taken from the stored verdict): the shortest correct way the sources found. Lengths are the
    generator's token counts, or characters for a problem where an earlier step edited a trace."""

    op: Literal["shortest_verified"] = "shortest_verified"


class LossRewrite(Schema):
    """Re-sample the highest-loss span of each trace: the student scores the completion, the window
    of `span_tokens` tokens with the largest summed loss is re-sampled by `sampler_model` (default:
    the student) conditioned on the prompt and the text before it, and a rewrite replaces the trace
    only if it passes the verifier and lowers the student's mean token loss."""

    op: Literal["loss_rewrite"] = "loss_rewrite"
    model: ModelName = Field(description="the student whose loss is measured")
    sampler_model: ModelName | None = Field(default=None, description="who re-samples; default: model")
    span_tokens: int = Field(default=8, ge=1, le=4096)
    spans: int = Field(default=1, ge=1, le=64, description="windows tried per trace, highest loss first")
    samples: int = Field(default=4, ge=1, le=256, description="rewrites sampled per window")
    mode: Literal["span", "suffix"] = Field(
        default="span",
        description="span: replace the window by `span_tokens` sampled tokens and keep the text after "
        "it; suffix: the sampler writes everything from the window on",
    )
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=1.0, max_tokens=256))
    seed: int = Field(default=0, ge=0, lt=2**62)
    batch_size: int = Field(default=16, ge=1, le=1024)
    device: Device = "auto"


CONDENSE_PROMPT = (
    "Rewrite the reasoning below as a short, plain chain of thought that reaches the same answer.\n\n"
    "Problem: {problem}\n\nReasoning:\n{thinking}"
)


class Condense(Schema):
    """Fold a trace's thinking (the text between `think_start` and `think_end`) into a shorter plain
    chain of thought written by `model` conditioned on it; the new completion is that chain of
    thought followed by the trace's text after `think_end`. Kept only if it passes the verifier and
    has fewer tokens than the original (counted with `model`'s tokenizer)."""

    op: Literal["condense"] = "condense"
    model: ModelName
    think_start: str = Field(default="<think>", min_length=1, max_length=64)
    think_end: str = Field(default="</think>", min_length=1, max_length=64)
    prompt: str = Field(
        default=CONDENSE_PROMPT, min_length=1, max_length=4096, description="with {problem} and {thinking}"
    )
    keep_answer: bool = Field(default=True, description="append the trace's text after think_end")
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=512))
    seed: int = Field(default=0, ge=0, lt=2**62)
    batch_size: int = Field(default=16, ge=1, le=1024)
    device: Device = "auto"

    @model_validator(mode="after")
    def _placeholders(self) -> Condense:
        if "{thinking}" not in self.prompt:
            raise ValueError("the prompt must contain {thinking}")
        return self


SelectionStep = Annotated[
    PassRate
    | RewardVariance
    | StudentLoss
    | TokenMask
    | LengthPrune
    | Diversity
    | ShortestVerified
    | LossRewrite
    | Condense,
    Field(discriminator="op"),
]


# --------------------------------------------------------------------------- job specs


class SelectSpec(Schema):
    """Accepted traces of `campaign_ids`, through `steps` in order, into a dataset + manifest."""

    kind: Literal["select"] = "select"
    campaign_ids: list[uuid.UUID] = Field(min_length=1, max_length=64)
    steps: list[SelectionStep] = Field(default_factory=list, max_length=32)


class SftSpec(Schema):
    """Fine-tune `model` on a selected dataset; loss only on completion tokens (and the mask)."""

    kind: Literal["sft"] = "sft"
    dataset: Sha256 = Field(description="sha256 of a selection job's dataset artifact")
    model: ModelName
    method: Literal["full", "lora", "dora"] = "lora"
    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    micro_batch: int | None = Field(
        default=None, ge=1, description="rows per forward pass; default: batch_size"
    )
    lr: float = Field(default=2e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0)
    lora_r: int = Field(default=16, ge=1, le=1024)
    lora_alpha: int = Field(default=32, ge=1, le=4096)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, description="default: every linear layer")
    max_length: int = Field(default=2048, ge=8, le=131_072)
    eval_fraction: float = Field(default=0.05, ge=0, lt=1, description="rows held out for the eval loss")
    eval_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=100, ge=1, description="steps between resumable snapshots")
    seed: int = Field(default=0, ge=0)
    device: Device = "auto"
    precision: Precision = Field(default="auto", description=PRECISION_HELP)
    packing: bool = Field(
        default=True,
        description="lay a micro-batch's sequences end to end in rows of max_length tokens, each "
        "attending only to itself, instead of padding every sequence to the longest",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in the backward pass: less memory, about 30% slower"
    )
    nproc: int = Field(
        default=1,
        ge=1,
        le=64,
        description="training processes on the train machine, launched by torchrun (one per GPU on "
        "CUDA); 1 trains in the task's own process. Each takes its share of every batch, gradients "
        "are averaged, so the loss is the single-process one",
    )
    engine: Literal["fsdp2"] = Field(
        default="fsdp2",
        description="the distributed engine when nproc > 1: PyTorch FSDP2 (fully_shard), parameters, "
        "gradients and optimizer state sharded over the processes; gloo on the CPU, NCCL on CUDA",
    )

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> SftSpec:
        # Every process takes the same number of rows of a full batch, so none waits on the others.
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of nproc {self.nproc}")
        return self


class FuzzyMajority(Schema):
    """Majority vote over clusters of embeddings instead of equal answers: each sample joins the
    first cluster whose first member's embedding has cosine similarity >= `threshold` with its own;
    the largest cluster wins (ties: the earliest) and its first member is the choice."""

    text: Literal["answer", "completion"] = Field(
        default="answer",
        description="embed the final answer (samples with none do not vote) or the completion",
    )
    threshold: float = Field(default=0.9, gt=0, le=1)
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: Device = "auto"


class LikelihoodSelect(Schema):
    """Choose, per problem, the answered sample with the highest mean token log-likelihood under
    `model` (default: the evaluated model itself, so the student's own confidence)."""

    model: ModelName | None = None
    batch_size: int = Field(default=16, ge=1, le=1024)
    device: Device = "auto"


class EvaluateSpec(Schema):
    """Accuracy of `model` on a held-out problem set, generated by volunteers as a campaign, with the
    test-time-compute strategies (pass@1, majority, shortest-of-n, pass@n, and on request fuzzy
    majority and likelihood selection) over its samples."""

    kind: Literal["evaluate"] = "evaluate"
    model: ModelName
    problem_set_id: uuid.UUID
    samples_per_problem: int = Field(default=1, ge=1, le=1024)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0))
    budget: BudgetForcing | None = None
    seed: int = Field(default=0, ge=0, lt=2**62)
    poll_s: float = Field(default=5.0, gt=0, le=60, description="how often the campaign is checked")
    fuzzy_majority: FuzzyMajority | None = Field(default=None, description="also report fuzzy majority")
    likelihood: LikelihoodSelect | None = Field(
        default=None, description="also report selection by likelihood under a scorer model"
    )


class GrpoSpec(Schema):
    """GRPO with volunteer rollouts: each policy version is published as safetensors, rolled out by
    workers in groups, rewarded by the verifiers, and trained on with group-normalised advantages."""

    kind: Literal["grpo"] = "grpo"
    model: ModelName
    problem_set_id: uuid.UUID
    steps: int = Field(default=20, ge=1, le=100_000, description="policy updates (versions after v0)")
    group_size: int = Field(default=8, ge=2, le=1024)
    groups_per_step: int = Field(default=16, ge=1, le=65_536)
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=1.0, max_tokens=256))
    lr: float = Field(default=1e-5, gt=0, le=1.0)
    clip_eps: float = Field(default=0.2, gt=0, lt=1)
    ratio_cap: float = Field(default=4.0, gt=1, description="dual clip: bounds any one ratio's weight")
    kl_coef: float = Field(default=0.0, ge=0, description="weight of the KL to the initial policy")
    epochs_per_step: int = Field(default=1, ge=1, le=64, description="passes over a version's batch")
    updates_per_version: int = Field(
        default=1, ge=1, le=64, description="optimizer steps per pass, one per minibatch of the batch"
    )
    micro_batch: int = Field(default=16, ge=1, le=4096)
    max_staleness: int = Field(default=1, ge=0, le=1000, description="versions a rollout may lag")
    max_logprob_gap: float = Field(
        default=1.0, gt=0, description="on-policy rollouts whose claimed logprobs stray further are dropped"
    )
    seed: int = Field(default=0, ge=0, lt=2**62)
    device: Device = "auto"
    precision: Precision = Field(default="auto", description=PRECISION_HELP)
    packing: bool = Field(
        default=True,
        description="lay a micro-batch's rollouts end to end in rows of pack_length tokens, each "
        "attending only to itself, instead of padding every rollout to the longest",
    )
    pack_length: int = Field(
        default=4096, ge=8, le=131_072, description="tokens per packed row; a longer rollout has its own"
    )
    poll_s: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _sampled(self) -> GrpoSpec:
        if self.sampling.temperature == 0.0:
            raise ValueError("GRPO needs sampled rollouts: temperature must be above 0")
        return self


JobSpecIn = Annotated[SelectSpec | SftSpec | EvaluateSpec | GrpoSpec, Field(discriminator="kind")]


class PipelineJobCreate(Schema):
    name: str | None = Field(default=None, min_length=1, max_length=128)
    spec: JobSpecIn


# --------------------------------------------------------------------------- responses


class ArtifactInfo(BaseModel):
    """What a worker reads of an artifact's record (`GET /v1/pipeline/artifacts/<sha256>/info`) to
    fetch its weights. Fields it does not name are ignored, so a record may grow without breaking
    the workers already running."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sha256: Sha256
    kind: str
    size_bytes: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)
    url: RelativePath = Field(description="download path under the API prefix; supports HTTP Range")
    metadata: dict[str, Any] = Field(default_factory=dict)


class ArtifactOut(ArtifactInfo):
    """The whole record, as the coordinator serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int
    filename: str
    media_type: str
    job_id: uuid.UUID | None
    metadata: dict[str, Any]
    created_at: datetime


class PipelineJobOut(Schema):
    id: uuid.UUID
    name: str
    kind: JobKind
    status: JobStatus
    stage: str
    progress: float = Field(description="0..1")
    spec: dict[str, Any]
    metrics: dict[str, Any]
    outputs: dict[str, ArtifactOut]
    campaign_ids: list[uuid.UUID]
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PolicyVersionOut(Schema):
    version: int
    sha256: str
    model: str = Field(description="the model name rollout jobs carry: flywheel-artifact/<sha256>")
    base_model: str
    size_bytes: int
    metrics: dict[str, Any]
    created_at: datetime
    url: str

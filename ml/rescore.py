"""Validation by re-scoring: is a claimed trace what the seeded sampler picks from the model's logits?

Input: the logits of one prefill of prompt + claimed completion (row p predicts completion token p)
and what the job told the worker. At each position the rule of docs/worker.md is recomputed with
shared/sampling.py and budget forcing is replayed (shared/budget.py), then:

* a forced position must carry the forced token, with the raw log-softmax as its logprob;
* a sampled position must carry the perturbed argmax *within a tolerance*: with scores
  s = logits/T + G, its margin T * (s[claimed] - max over other allowed s) must be >= -2 eps,
  where eps bounds the honest difference between the worker's logits and the validator's
  (another device, dtype, batch or padding). Honest arithmetic moves each logit by at most eps,
  so the worker's winner can trail by at most 2 eps here; a token it did not pick trails by O(1);
* the claimed logprob must lie in the range honest arithmetic allows (2 eps / T around it).

The allowed set itself (top-k, top-p) can shift with the same noise, so two are built: a loose one
(every token an honest worker could have allowed) that must contain the claimed token, and a strict
one (every token it must have allowed) whose best competitor the claimed token must beat.
Margins are reported in logit units, so one tolerance serves every temperature. The sampled rows
of many traces are scored together (`rescore_many`): the work is a few array operations per chunk
of rows, not per trace, which is what keeps validation cheap next to generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.sampling import raw_logprobs
from shared import evidence, vllm_gumbel
from shared.budget import NO_IDS, BudgetState, BudgetTokens
from shared.protocol import NOISE_FLYWHEEL, NOISE_VLLM_GUMBEL, BudgetForcing, NoiseScheme, SamplingParams
from shared.sampling import GUMBEL_MAX, allowed_floor, gumbel_at, noise_keys
from shared.trust_types import Outcome

CHUNK_ELEMENTS = 1 << 22  # rows x vocab scored at once: bounds the float64 temporaries (~32 MiB each)
CHUNK_ELEMENTS_CUDA = 1 << 25  # on a GPU, larger passes (256 MiB each) keep kernel launches few
MARGIN_WINDOW = 8.0  # margins are exact up to this many logits (or 4 eps); larger ones read as it
SORTED_PREFIX = 1024  # top-k/top-p cuts are looked for among each row's largest values first
DENSE_SHARE = 8  # noise is drawn for every token once candidates are more than 1/8 of the rows' tokens
FLOAT_SLACK = 1e-9  # float64 rounding in the recomputation itself, far below any honest noise


@dataclass(frozen=True)
class JobRules:
    """What the validator knows about the job: exactly what the worker was told, plus the model's
    stop ids and the completion length the worker's context allowed."""

    sampling: SamplingParams
    sample_index: int
    limit: int
    stops: frozenset[int]
    budget: BudgetForcing | None = None
    budget_tokens: BudgetTokens | None = None
    # The worker's noise scheme (its EngineInfo.noise; None: Flywheel's own), and the prompt's
    # token count, which vLLM's noise counter starts from.
    noise: NoiseScheme | None = None
    prompt_tokens: int = 0

    @property
    def scheme(self) -> NoiseScheme:
        return self.noise or NOISE_FLYWHEEL


@dataclass(frozen=True)
class Claim:
    tokens: Sequence[int]
    logprobs: Sequence[float]
    finish_reason: str


@dataclass(frozen=True)
class Case:
    """One trace to re-score: its prefill logits ([n, vocab], any float dtype and device)."""

    logits: Any
    rules: JobRules
    claim: Claim
    eps: float


@dataclass
class _Plan:
    """Per position: the forced token, or the ids suppressed / watched before sampling."""

    forced: dict[int, int] = field(default_factory=dict)
    suppress: dict[int, frozenset[int]] = field(default_factory=dict)
    watch: dict[int, frozenset[int]] = field(default_factory=dict)


@dataclass
class _Scores:
    """Per position: margin (logit units), the honest logprob range, and how many eps of logprob
    error honest noise can cause there (2 / T when sampled, 2 for the raw log-softmax)."""

    margin: list[float]
    low: list[float]
    high: list[float]
    slack: list[float]

    @classmethod
    def empty(cls, claim: Claim) -> _Scores:
        n = len(claim.tokens)
        return cls([math.inf] * n, list(claim.logprobs), list(claim.logprobs), [0.0] * n)

    def put(self, positions: list[int], part: _Scores, start: int, end: int) -> None:
        """Take rows start:end of a scored chunk for these positions."""
        if len(positions) == len(self.margin):  # every position sampled: one slice each
            self.margin, self.low = part.margin[start:end], part.low[start:end]
            self.high, self.slack = part.high[start:end], part.slack[start:end]
            return
        for k, p in enumerate(positions, start):
            self.margin[p], self.low[p], self.high[p], self.slack[p] = (
                part.margin[k],
                part.low[k],
                part.high[k],
                part.slack[k],
            )


@dataclass
class _Rows:
    """Sampled rows to score together, from one or many traces of one noise scheme."""

    scheme: NoiseScheme = NOISE_FLYWHEEL
    prompt_tokens: list[int] = field(default_factory=list)
    sampling: list[SamplingParams] = field(default_factory=list)
    sample_indices: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    suppress: list[frozenset[int]] = field(default_factory=list)
    eps: list[float] = field(default_factory=list)

    def add(self, rules: JobRules, position: int, token: int, suppress: frozenset[int], eps: float) -> None:
        self.prompt_tokens.append(rules.prompt_tokens)
        self.sampling.append(rules.sampling)
        self.sample_indices.append(rules.sample_index)
        self.positions.append(position)
        self.tokens.append(token)
        self.suppress.append(suppress)
        self.eps.append(eps)

    def extend(
        self,
        rules: JobRules,
        positions: list[int],
        tokens: list[int],
        suppress: list[frozenset[int]],
        eps: float,
    ) -> None:
        """Many positions of one trace at once (list extends, not a call per position)."""
        n = len(positions)
        self.prompt_tokens.extend([rules.prompt_tokens] * n)
        self.sampling.extend([rules.sampling] * n)
        self.sample_indices.extend([rules.sample_index] * n)
        self.positions.extend(positions)
        self.tokens.extend(tokens)
        self.suppress.extend(suppress)
        self.eps.extend([eps] * n)


class _Failure(Exception):
    def __init__(self, position: int | None, reason: str) -> None:
        super().__init__(reason)
        self.position = position
        self.reason = reason


def rescore(logits: Any, rules: JobRules, claim: Claim, eps: float) -> Outcome:
    """Check one claim against `logits` ([n, vocab] torch tensor, any float dtype, any device)."""
    return rescore_many([Case(logits, rules, claim, eps)])[0]


def rescore_many(cases: Sequence[Case]) -> list[Outcome]:
    """Check many claims, scoring the sampled rows of all of them in shared chunks."""
    plans: list[_Plan | Outcome] = [_prepare(case) for case in cases]
    scores = [_Scores.empty(case.claim) for case in cases]
    for i, case in enumerate(cases):
        plan = plans[i]
        if isinstance(plan, _Plan):
            _forced_scores(case, plan, scores[i])
    _sampled_scores(cases, plans, scores)
    return [
        plan if isinstance(plan, Outcome) else _verdict(case, plan, score)
        for case, plan, score in zip(cases, plans, scores, strict=True)
    ]


def _prepare(case: Case) -> _Plan | Outcome:
    try:
        _check_shape(case)
        plan = _replay(case)
        _check_ending(case.rules, case.claim, plan)
        return plan
    except _Failure as failure:
        n = len(case.claim.tokens)
        return Outcome(False, failure.reason, failure.position, -math.inf, math.nan, case.eps, n)


def _check_shape(case: Case) -> None:
    claim, rules, rows = case.claim, case.rules, int(case.logits.shape[0])
    n = len(claim.tokens)
    if len(claim.logprobs) != n or rows != n:
        raise _Failure(None, f"{n} tokens, {len(claim.logprobs)} logprobs, {rows} logit rows")
    if n > rules.limit:
        raise _Failure(rules.limit, f"{n} tokens exceed the {rules.limit} the job allowed")
    vocab = int(case.logits.shape[-1])
    for p, token in enumerate(claim.tokens):
        if not 0 <= token < vocab:
            raise _Failure(p, f"token id {token} is outside the vocabulary")


def _replay(case: Case) -> _Plan:
    """Walk the budget-forcing rule over the claimed tokens (no budget: every position sampled)."""
    plan, rules = _Plan(), case.rules
    if rules.budget is None or rules.budget_tokens is None:
        return plan
    state = BudgetState(rules.budget, rules.budget_tokens)
    wait_start = rules.budget_tokens.wait[0]
    for p, token in enumerate(case.claim.tokens):
        step = state.step()
        if step.forced is not None:
            if token != step.forced:
                raise _Failure(p, f"budget forcing puts token {step.forced} here, the trace has {token}")
            plan.forced[p] = token
        elif step.watch and token == wait_start and _was_early_end(case, p, step.watch, wait_start):
            plan.forced[p] = state.start_wait()
        else:
            plan.suppress[p], plan.watch[p] = step.suppress, step.watch
        state.advance(token)
    return plan


def _was_early_end(case: Case, p: int, watch: frozenset[int], wait_start: int) -> bool:
    """The wait text's first token at a watched position: the worker either sampled it, or sampled
    an early end of thinking and replaced it. The reading whose winner wins by more is taken; they
    tie only if the wait token and an end token score within 2 eps of each other, and a wrong
    reading then shows up as a failure at the next positions."""
    import torch

    rows = _Rows(case.rules.scheme)
    rows.add(case.rules, p, wait_start, frozenset(), case.eps)
    block = _Block(case.logits[p : p + 1], rows)
    as_sampled = _score_block(block).margin[0]
    z = block.z()
    scores = z + block.noise_at(torch.arange(z.shape[-1], device=block.device)[None, :])
    ends = torch.zeros_like(z, dtype=torch.bool)
    ends[0, sorted(watch)] = True
    finite = torch.isfinite(z)
    loose, strict = finite & (z >= block.loose_floor), finite & (z >= block.strict_floor)
    best_end = float(torch.where(ends & loose, scores, -math.inf).max())
    best_other = float(torch.where(strict & ~ends, scores, -math.inf).max())
    as_replaced = (best_end - best_other) * float(block.temps[0, 0]) if best_end > -math.inf else -math.inf
    return as_replaced > as_sampled


def _check_ending(rules: JobRules, claim: Claim, plan: _Plan) -> None:
    """A sampled stop token ends the completion: nothing may follow it, and 'stop' needs one last;
    'length' means the job's limit was reached."""
    tokens, n = claim.tokens, len(claim.tokens)
    for p, token in enumerate(tokens[:-1]):
        if token in rules.stops and p not in plan.forced:
            raise _Failure(p, "the trace goes on after a stop token")
    ends_on_stop = n > 0 and tokens[-1] in rules.stops and (n - 1) not in plan.forced
    if claim.finish_reason == "stop" and not ends_on_stop:
        raise _Failure(n - 1 if n else None, "finish_reason 'stop' without a final stop token")
    if claim.finish_reason == "length" and (ends_on_stop or n != rules.limit):
        raise _Failure(n - 1 if n else None, f"finish_reason 'length' after {n} of {rules.limit} tokens")
    if claim.finish_reason not in ("stop", "length"):
        raise _Failure(None, f"finish_reason {claim.finish_reason!r} cannot be validated")


def _forced_scores(case: Case, plan: _Plan, scores: _Scores) -> None:
    """A forced token's logprob is the model's raw log-softmax (no temperature, no filter)."""
    if not plan.forced:
        return
    rows = sorted(plan.forced)
    for p, value in zip(
        rows, raw_logprobs(case.logits, rows, [case.claim.tokens[p] for p in rows]), strict=True
    ):
        scores.low[p] = scores.high[p] = value
        scores.slack[p] = 2.0


def _sampled_scores(cases: Sequence[Case], plans: Sequence[_Plan | Outcome], scores: list[_Scores]) -> None:
    """Score every sampled row of every case, whole cases at a time, about a chunk's elements per
    pass; cases of each noise scheme apart."""
    for scheme in (NOISE_FLYWHEEL, NOISE_VLLM_GUMBEL):
        _scheme_scores(cases, plans, scores, scheme)


def _scheme_scores(
    cases: Sequence[Case], plans: Sequence[_Plan | Outcome], scores: list[_Scores], scheme: NoiseScheme
) -> None:
    batch: list[tuple[int, list[int]]] = []
    size = 0
    for i, (case, plan) in enumerate(zip(cases, plans, strict=True)):
        if not isinstance(plan, _Plan) or case.rules.scheme != scheme:
            continue
        n = len(case.claim.tokens)
        rows = [p for p in range(n) if p not in plan.forced] if plan.forced else list(range(n))
        if not rows:
            continue
        batch.append((i, rows))
        size += len(rows) * int(case.logits.shape[-1])
        if size >= _chunk_elements(case.logits):
            _score_batch(cases, plans, scores, batch)
            batch, size = [], 0
    if batch:
        _score_batch(cases, plans, scores, batch)


def _chunk_elements(logits: Any) -> int:
    return CHUNK_ELEMENTS_CUDA if logits.device.type == "cuda" else CHUNK_ELEMENTS


def _score_batch(
    cases: Sequence[Case],
    plans: Sequence[_Plan | Outcome],
    scores: list[_Scores],
    batch: list[tuple[int, list[int]]],
) -> None:
    import torch

    rows, parts = _Rows(cases[batch[0][0]].rules.scheme), []
    for i, positions in batch:
        case, plan = cases[i], plans[i]
        assert isinstance(plan, _Plan)
        tokens = [case.claim.tokens[p] for p in positions]
        suppress = (
            [plan.suppress.get(p, NO_IDS) for p in positions] if plan.suppress else [NO_IDS] * len(positions)
        )
        rows.extend(case.rules, positions, tokens, suppress, case.eps)
        if len(positions) == int(case.logits.shape[0]):
            parts.append(case.logits)
        else:
            parts.append(case.logits.index_select(0, torch.tensor(positions, device=case.logits.device)))
    part = _score_rows(torch.cat(parts) if len(parts) > 1 else parts[0], rows)
    start = 0
    for i, positions in batch:
        end = start + len(positions)
        scores[i].put(positions, part, start, end)
        start = end


def _verdict(case: Case, plan: _Plan, scores: _Scores) -> Outcome:
    claim, eps = case.claim, case.eps
    n, margins = len(claim.tokens), scores.margin
    worst_margin = min(margins, default=math.inf)
    worst_at = margins.index(worst_margin) if n and math.isfinite(worst_margin) else None
    errors = [max(scores.low[p] - lp, lp - scores.high[p], 0.0) for p, lp in enumerate(claim.logprobs)]
    worst_error = max(errors, default=0.0)
    # a margin m needs eps >= -m / 2; a logprob error e at a position allowing k * eps needs e / k
    needed = max(
        [0.0, *(-m / 2 for m in margins), *(e / k for e, k in zip(errors, scores.slack, strict=True))]
    )
    cells = _cells(plan, margins, errors, scores.slack, eps)
    for p in range(n):
        reason = None
        if claim.tokens[p] in plan.watch.get(p, frozenset()):
            reason = "an early end of thinking was kept instead of the wait text"
        elif margins[p] < -2 * eps:
            reason = f"token {claim.tokens[p]} is not the sampler's pick (margin {margins[p]:.4g})"
        elif errors[p] > scores.slack[p] * eps + FLOAT_SLACK:
            reason = f"claimed logprob {claim.logprobs[p]:.6g} is off by {errors[p]:.4g}"
        if reason is not None:
            return Outcome(False, reason, p, worst_margin, worst_error, eps, n, needed, cells)
    return Outcome(True, "", worst_at, worst_margin, worst_error, eps, n, needed, cells)


def _cells(
    plan: _Plan, margins: list[float], errors: list[float], slack: list[float], eps: float
) -> tuple[int, ...]:
    """The evidence cells of every position (shared/evidence.py): its margin, and its logprob
    residual over the allowance's factor, both in logit units, each as a share of eps."""
    cells = [
        evidence.cell(m, e / k if k > 0 else 0.0, eps, p in plan.forced)
        for p, (m, e, k) in enumerate(zip(margins, errors, slack, strict=True))
    ]
    return tuple(evidence.histogram(cells))


# --------------------------------------------------------------------------- row arithmetic


class _Block:
    """Rows to score. Full-vocabulary passes read the logits in float32 (`raw`, suppressed ids at
    -inf); every value a verdict depends on is recomputed in float64 from the float32 logit it
    comes from (z = logit / T, exactly what the worker's sampler computes), only where it is needed:
    the claimed token, the candidates, the sorted prefix. Greedy rows have T = 1 and no noise.
    Under vLLM's scheme z is its float32 quotient, T its float32 temperature, and the noise its own
    (shared/vllm_gumbel.py)."""

    def __init__(self, logits: Any, rows: _Rows) -> None:
        import torch

        self.rows = rows
        self.device = logits.device
        self.vllm = rows.scheme == NOISE_VLLM_GUMBEL
        self.gumbel_max = vllm_gumbel.GUMBEL_MAX if self.vllm else GUMBEL_MAX
        ops = {"dtype": torch.float64, "device": self.device}
        temps = [s.temperature or 1.0 for s in rows.sampling]
        if self.vllm:  # vLLM holds temperatures in float32
            single = torch.tensor(temps, dtype=torch.float32, device=self.device)
            self.temps = single.to(torch.float64)[:, None]
        else:
            self.temps = torch.tensor(temps, **ops)[:, None]
        self.stochastic = torch.tensor([float(s.temperature > 0.0) for s in rows.sampling], **ops)[:, None]
        self.eps = torch.tensor(rows.eps, **ops)[:, None]
        self.raw = _masked(logits, rows.suppress)
        self.scaled = self.raw / self.temps.to(torch.float32)  # z in float32, for the full-row sums
        self.on = [k for k, s in enumerate(rows.sampling) if s.temperature > 0 and _filters(s)]
        self.strict_floor, self.loose_floor, self.prefix = _floors(self)
        self.keys = _keys(self)

    def z(self, index: Any = None) -> Any:
        """float64 z of whole rows (all, or those in `index`)."""
        import torch

        if self.vllm:
            return (self.scaled if index is None else self.scaled[index]).to(torch.float64)
        if index is None:
            return self.raw.to(torch.float64) / self.temps
        return self.raw[index].to(torch.float64) / self.temps[index]

    def z_at(self, rows: Any, token_ids: Any) -> Any:
        """float64 z at (row, token) pairs: arrays of equal shape."""
        import torch

        if self.vllm:
            return self.scaled[rows, token_ids].to(torch.float64)
        return self.raw[rows, token_ids].to(torch.float64) / self.temps[rows, 0]

    def sorted_z(self, index: Any, top_k: int) -> Any:
        """The largest values of z of the rows in `index`, in descending order (see _sorted_prefix)."""
        import torch

        if self.vllm:
            return _sorted_prefix(self.scaled[index], top_k).to(torch.float64)
        return _sorted_prefix(self.raw[index], top_k).to(torch.float64) / self.temps[index]

    def noise_at(self, token_ids: Any, rows: Any = None) -> Any:
        """G at `token_ids` for each row (or for the rows `rows` names, one per id); 0 on greedy rows."""
        import torch

        k1, k2, on = self.keys[0][:, None], self.keys[1][:, None], self.stochastic
        if rows is not None:
            k1, k2, on = k1[rows, 0], k2[rows, 0], on[rows, 0]
        if self.vllm:
            return vllm_gumbel.gumbel_at(torch, k1, k2, token_ids) * on
        return gumbel_at(torch, k1, k2, token_ids) * on


def _keys(block: _Block) -> Any:
    """The noise's row keys, [2, rows] int64: Flywheel's from (job seed, sample index, completion
    position); vLLM's from (request seed, position in the whole sequence)."""
    import torch

    rows = block.rows
    seeds = [s.seed for s in rows.sampling]
    if not block.vllm:
        return noise_keys(torch, block.temps, seeds, rows.sample_indices, rows.positions)
    requests: dict[tuple[int, int], int] = {}  # rows of one trace share one request seed
    for pair in zip(seeds, rows.sample_indices, strict=True):
        if pair not in requests:
            requests[pair] = vllm_gumbel.request_seed(*pair)
    request_seeds = [requests[pair] for pair in zip(seeds, rows.sample_indices, strict=True)]
    positions = [
        vllm_gumbel.noise_position(n, p) for n, p in zip(rows.prompt_tokens, rows.positions, strict=True)
    ]
    return vllm_gumbel.noise_keys(torch, block.temps, request_seeds, positions)


def _filters(sampling: SamplingParams) -> bool:
    return sampling.top_k > 0 or sampling.top_p < 1.0


def _masked(logits: Any, suppress: Sequence[frozenset[int]]) -> Any:
    """The rows in float32 (a copy only where ids are suppressed or the dtype differs), with each
    row's suppressed ids at -inf. float32 holds every logit a float32 or bfloat16 model produces."""
    import torch

    if not any(suppress):
        return logits.to(torch.float32)
    rows = logits.to(torch.float32, copy=True)
    for k, ids in enumerate(suppress):
        if ids:
            rows[k, sorted(ids)] = -math.inf
    return rows


def _floors(block: _Block) -> tuple[Any, Any, Any]:
    """Per row, the strict and loose floors of the allowed set in z units ([rows, 1] float64), and
    the filtered rows' largest values of z, sorted (None when no row filters).

    Logit noise up to eps moves each z by eps/T, and each probability by a factor within
    exp(2 eps/T), so the mass before a token (top-p) by less than expm1(2 eps/T). Strict: the
    filter at top_p minus that much (every token it keeps, the worker kept too). Loose: the filter
    at top_p plus that much, widened by 2 eps/T for ranks that noise may swap (top-k and top-p).
    Rows without top-k or top-p (and greedy rows) allow every finite token.
    """
    import torch

    rows, n = block.rows, len(block.rows.sampling)
    strict = torch.full((n, 1), -math.inf, dtype=torch.float64, device=block.device)
    loose = strict.clone()
    if not block.on:
        return strict, loose, None
    index = torch.tensor(block.on, device=block.device)
    shift = 2 * block.eps[index] / block.temps[index]
    wide, narrow = [], []
    bounds: dict[tuple[int, float], tuple[SamplingParams, SamplingParams]] = {}
    for k, margin in zip(block.on, shift[:, 0].tolist(), strict=True):
        key = (id(rows.sampling[k]), margin)  # rows of one trace share one settings object
        pair = bounds.get(key)
        if pair is None:  # build each pair once per trace, not per row
            pair = bounds[key] = _top_p_bounds(rows.sampling[k], margin)
        wide.append(pair[0])
        narrow.append(pair[1])
    sub = block.raw[index]
    ordered = block.sorted_z(index, max(s.top_k for s in wide))
    total = None
    if ordered.shape[-1] < sub.shape[-1]:  # the whole row's mass, for top-p cuts within the prefix
        peak = ordered[:, :1].to(torch.float32)
        total = torch.exp(block.scaled[index] - peak).sum(dim=-1, keepdim=True).to(torch.float64)
    floor_wide, settled_wide = allowed_floor(torch, ordered, wide, sub.shape[-1], total)
    floor_narrow, settled_narrow = allowed_floor(torch, ordered, narrow, sub.shape[-1], total)
    unsettled = (~(settled_wide & settled_narrow))[:, 0].nonzero()[:, 0]
    if unsettled.numel():  # a cut beyond the prefix: sort those rows whole
        whole = torch.sort(block.z(index[unsettled]), dim=-1, descending=True).values
        again = [int(k) for k in unsettled.tolist()]
        floor_wide[unsettled] = allowed_floor(torch, whole, [wide[k] for k in again], whole.shape[-1])[0]
        floor_narrow[unsettled] = allowed_floor(torch, whole, [narrow[k] for k in again], whole.shape[-1])[0]
    loose[index] = floor_wide - shift
    strict[index] = torch.minimum(floor_narrow, ordered[:, :1])
    return strict, loose, ordered


def _sorted_prefix(raw: Any, top_k: int) -> Any:
    """The largest values of each row in descending order: enough for most top-k/top-p cuts, a
    fraction of the cost of sorting a large vocabulary (_floors sorts whole rows when it is not)."""
    import torch

    vocab = raw.shape[-1]
    size = max(SORTED_PREFIX, 2 * top_k + 1)
    if size * 4 >= vocab:
        return torch.sort(raw, dim=-1, descending=True).values
    return torch.topk(raw, size, dim=-1, sorted=True).values


def _top_p_bounds(sampling: SamplingParams, shift: float) -> tuple[SamplingParams, SamplingParams]:
    # shift = 2 eps / T bounds how far noise moves a probability's log, so a mass (a sum of them)
    # moves by at most that factor: top_p -/+ expm1(shift) brackets the worker's cut.
    delta = math.expm1(shift) if sampling.top_p < 1.0 else 0.0
    wide = sampling.model_copy(update={"top_p": min(1.0, sampling.top_p + delta)})
    return wide, sampling.model_copy(update={"top_p": max(sampling.top_p - delta, 1e-12)})


def _score_rows(logits: Any, rows: _Rows) -> _Scores:
    """Margins and honest logprob ranges of the claimed tokens at sampled rows."""
    return _score_block(_Block(logits, rows))


def _score_block(block: _Block) -> _Scores:
    import torch

    rows = block.rows
    n = len(rows.tokens)
    every = torch.arange(n, device=block.device)
    claimed = torch.tensor(rows.tokens, dtype=torch.int64, device=block.device)
    z_c = block.z_at(every, claimed)[:, None]
    own = z_c + block.noise_at(claimed[:, None])
    window = torch.clamp(4 * block.eps, min=MARGIN_WINDOW)  # margins are exact up to this many logits
    rival = _rival(block, claimed[:, None], own, window)
    inside = torch.isfinite(z_c) & (z_c >= block.loose_floor)
    margin = (own - rival) * block.temps
    high, low = _logprob_range(block, z_c)
    if block.vllm:  # vLLM's float32 scores and logprobs, next to the float64 ones here
        margin = margin + 2 * block.temps * vllm_gumbel.float32_allowance(own.abs() + window / block.temps)
        spread = vllm_gumbel.float32_allowance(z_c.abs()[:, 0] + high.abs())
        high, low = high + spread, low - spread
    margin = torch.where(inside, torch.minimum(margin, window), -math.inf)[:, 0]
    slack = 2.0 / block.temps[:, 0]
    table = torch.stack([margin, low, high, slack]).cpu().tolist()  # one copy to the host per chunk
    return _Scores(*table)


def _rival(block: _Block, claimed: Any, own: Any, window: Any) -> Any:
    """Per row, the best perturbed score among the other tokens the strict set allows, wherever it
    is within `window` logits of the claimed token's (below that, any value under it).

    A token can reach own - window/T only if z + G_max does, so noise is drawn only for those
    candidates; when they are a large share of the rows (flat distributions), densely for all.
    Candidates are picked on float32 logits with room to spare, then scored in float64."""
    import torch

    reach = own - window / block.temps - block.gumbel_max * block.stochastic
    reach = torch.where(torch.isfinite(own), reach, math.inf)
    # one comparison on raw logits (T > 0); a finite floor also leaves out -inf (suppressed) tokens
    bar = (torch.maximum(reach, block.strict_floor) * block.temps).to(torch.float32)
    candidates = block.raw >= bar - (bar.abs() * 1e-6 + 1e-6)
    candidates.scatter_(-1, claimed, False)
    counts = candidates.sum(dim=-1)
    if int(counts.sum()) * DENSE_SHARE >= candidates.numel():
        vocab = torch.arange(block.raw.shape[-1], dtype=torch.int64, device=block.device)[None, :]
        z = block.z()
        scores = torch.where(candidates & (z >= block.strict_floor), z + block.noise_at(vocab), -math.inf)
        return scores.max(dim=-1, keepdim=True).values
    row, token = candidates.nonzero(as_tuple=True)
    values = block.z_at(row, token)
    values = torch.where(values >= block.strict_floor[row, 0], values + block.noise_at(token, row), -math.inf)
    best = torch.segment_reduce(values, "max", lengths=counts, unsafe=True, initial=-math.inf)
    return best[:, None]


def _logprob_range(block: _Block, z_c: Any) -> tuple[Any, Any]:
    """The claimed token's logprob over the strict and over the loose set (each with the token
    itself in it): the highest and lowest an honest worker can have reported. Rows without a
    filter allow every finite token: both are the log-softmax (its log-sum-exp in float32, whose
    error, about 1e-6, is far below the smallest allowance). Filtered rows sum over the sorted
    prefix when it holds the whole loose set, else over the whole row."""
    import torch

    high = z_c - torch.logsumexp(block.scaled, dim=-1, keepdim=True).to(torch.float64)
    low = high.clone()
    if block.prefix is None:
        return high[:, 0], low[:, 0]
    index = torch.tensor(block.on, device=block.device)
    values, c = block.prefix, z_c[index]
    strict, loose = block.strict_floor[index], block.loose_floor[index]
    outside = (values[:, -1:] >= loose)[:, 0].nonzero()[:, 0]
    high[index] = c - _set_logsumexp(values, strict, c)
    low[index] = c - _set_logsumexp(values, loose, c)
    if outside.numel():  # the loose set runs past the prefix: these rows whole
        rows, whole = index[outside], block.z(index[outside])
        high[rows] = c[outside] - _set_logsumexp(whole, strict[outside], c[outside])
        low[rows] = c[outside] - _set_logsumexp(whole, loose[outside], c[outside])
    return high[:, 0], low[:, 0]


def _set_logsumexp(z: Any, floor: Any, z_c: Any) -> Any:
    """log of the sum of exp(z) over {z >= floor}, plus the claimed token's when it lies below."""
    import torch

    kept = torch.where(z >= floor, z, -math.inf).logsumexp(dim=-1, keepdim=True)
    return torch.where(z_c >= floor, kept, torch.logaddexp(kept, z_c))

"""Budget forcing: a deterministic controller over the thinking span of a completion.

The thinking span is every completion token before the first occurrence of the token sequence
`E` (the job's `think_end`, tokenized alone). At each completion position the controller says
whether the token is *forced* (and which) or *sampled* (and which ids are suppressed first), and
whether a sampled token must be checked as an attempt to end thinking early. It depends only on
the completion tokens so far, the job's `BudgetForcing` and, at the positions where it asks, the
token the seeded sampler picked there; so a validator that holds the logits of one prefill can
replay it over a claimed trace (docs/worker.md, "Budget forcing", states the rule in full).

Only the standard library and shared.protocol are imported, so the worker and the validator share it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from shared.protocol import BudgetForcing

NO_IDS: frozenset[int] = frozenset()


@dataclass(frozen=True)
class BudgetTokens:
    """The budget's strings as token ids, for one tokenizer."""

    think_end: tuple[int, ...]
    wait: tuple[int, ...]
    stops: frozenset[int]

    @classmethod
    def encode(
        cls, budget: BudgetForcing, encode: Callable[[str], Sequence[int]], stops: Iterable[int]
    ) -> BudgetTokens:
        think_end, wait = tuple(encode(budget.think_end)), tuple(encode(budget.wait_text))
        if not think_end or not wait:
            raise ValueError("think_end and wait_text must each encode to at least one token")
        return cls(think_end, wait, frozenset(stops))


@dataclass(frozen=True)
class Step:
    """What to do at one position: force `forced`, or sample with `suppress` masked out.

    `watch`: when the sampled token is one of these ids, it is an attempt to end thinking before
    the minimum; the caller discards it and forces `BudgetState.start_wait()` instead.
    """

    forced: int | None = None
    suppress: frozenset[int] = NO_IDS
    watch: frozenset[int] = NO_IDS


SAMPLE = Step()


@dataclass
class BudgetState:
    """The controller for one completion; feed it every emitted token with `advance`."""

    budget: BudgetForcing
    tokens: BudgetTokens
    completion: list[int] = field(default_factory=list)
    thinking: bool = True
    waits_used: int = 0
    pending: deque[int] = field(default_factory=deque)

    @property
    def position(self) -> int:
        return len(self.completion)

    def step(self) -> Step:
        """The rule at the current position (docs/worker.md, "Budget forcing", steps 1-5)."""
        if self.pending:
            return Step(forced=self.pending[0])
        if not self.thinking:
            return SAMPLE
        cap = self.budget.max_thinking_tokens
        if cap is not None and self.position >= cap:
            self.pending.extend(self.tokens.think_end[self._overlap() :])
            return Step(forced=self.pending[0])
        if self.position >= self.budget.min_thinking_tokens:
            return SAMPLE
        attempts = self._end_attempts()
        if self.waits_used < self.budget.max_waits:
            return Step(watch=attempts)
        return Step(suppress=attempts)

    def start_wait(self) -> int:
        """The sampled token was an early end: queue the wait text; returns its first token."""
        self.waits_used += 1
        self.pending.extend(self.tokens.wait)
        return self.pending[0]

    def advance(self, token: int) -> None:
        """Record the token emitted at the current position (forced or sampled)."""
        if self.pending:
            if token != self.pending[0]:
                raise ValueError(f"forced token {self.pending[0]} expected, got {token}")
            self.pending.popleft()
        self.completion.append(token)
        if self.thinking and self._ends_with(self.tokens.think_end):
            self.thinking = False

    def _end_attempts(self) -> frozenset[int]:
        """Ids that would end thinking here: a stop token, or the token completing `think_end`."""
        end = self.tokens.think_end
        if self._ends_with(end[:-1]):
            return self.tokens.stops | {end[-1]}
        return self.tokens.stops

    def _ends_with(self, suffix: Sequence[int]) -> bool:
        n = len(suffix)
        return n == 0 or (len(self.completion) >= n and tuple(self.completion[-n:]) == tuple(suffix))

    def _overlap(self) -> int:
        """Longest proper prefix of `think_end` the completion already ends with (forced: the rest)."""
        end = self.tokens.think_end
        for k in range(len(end) - 1, 0, -1):
            if self._ends_with(end[:k]):
                return k
        return 0


def thinking_length(completion: Sequence[int], think_end: Sequence[int]) -> int | None:
    """Tokens before the first complete `think_end` (its own tokens excluded); None when absent."""
    n = len(think_end)
    for start in range(len(completion) - n + 1):
        if tuple(completion[start : start + n]) == tuple(think_end):
            return start
    return None

"""Problems from an installed `verifiers` environment (docs/problems.md, "verifiers environments").

The environment is loaded and its tasks listed in the verifier sandbox (verifier/environments.py);
this module only turns each single-turn task row into a problem: its system and user messages
become the prompt, and the row itself, hidden, is what the environment's rubric scores against.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coordinator.errors import ValidationFailed
from coordinator.problems.sources.options import parse_options
from shared.protocol import ProblemIn

SPLITS = {"train": "train", "eval": "eval", "test": "eval"}  # a set's default split, test, is eval


class EnvironmentOptions(BaseModel):
    """`options` of a `verifiers` problem set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str = Field(min_length=1, max_length=200, description="the id load_environment takes")
    args: dict[str, Any] = Field(default_factory=dict, description="load_environment's keyword arguments")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> EnvironmentOptions:
        return parse_options(cls, options, "verifiers")


def split_of(split: str) -> str:
    if split not in SPLITS:
        raise ValidationFailed(f"no split {split!r} in an environment: use 'train' or 'eval' (or 'test')")
    return SPLITS[split]


class TaskReader:
    """Turns an environment's task rows into problems."""

    def __init__(self, options: EnvironmentOptions, split: str) -> None:
        self.options = options
        self.split = split

    def problem(self, index: int, row: dict[str, Any]) -> ProblemIn:
        system, prompt = _messages(row.get("prompt"))
        example = row.get("example_id", index)
        name = self.options.environment
        record = {"environment": name, "args": self.options.args, "row": row}
        metadata: dict[str, Any] = {"source": "verifiers", "environment": name, "split": self.split}
        metadata |= {"example_id": example, "record": record}
        if isinstance(row.get("task"), str):
            metadata["task"] = row["task"]
        ident = f"{name}-{self.split}-{example}"
        return ProblemIn(id=ident, prompt=prompt, system=system, verifier="verifiers", metadata=metadata)


def _messages(prompt: Any) -> tuple[str | None, str]:
    """(system, user) text of a single-turn prompt: an optional system message, then one user
    message. Few-shot examples (earlier user/assistant turns) and non-text content have no place
    in a Flywheel problem, whose prompt is one user message."""
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise ValidationFailed("prompt: must be a list of chat messages")
    system = None
    if prompt and prompt[0].get("role") == "system":
        system, prompt = _text(prompt[0]), prompt[1:]
    if len(prompt) != 1 or prompt[0].get("role") != "user":
        roles = [m.get("role") for m in prompt]
        raise ValidationFailed(f"prompt: needs one user message after the system one, not {roles} (few-shot)")
    return system, _text(prompt[0])


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValidationFailed(f"prompt: a {message.get('role')} message's content must be text")
    return content

"""A multi-turn verifiers environment (the user answers back): Flywheel refuses it."""

from __future__ import annotations

from typing import Any

import verifiers as vf
from datasets import Dataset


class EchoEnv(vf.MultiTurnEnv):
    async def env_response(self, messages: Any, state: Any, **kwargs: Any) -> Any:
        return [{"role": "user", "content": "Are you sure?"}]


def load_environment() -> vf.Environment:
    rows = Dataset.from_dict({"question": ["Say hi."], "answer": ["hi"]})
    return EchoEnv(dataset=rows, eval_dataset=rows, max_turns=3)

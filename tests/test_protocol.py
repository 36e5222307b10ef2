"""The wire protocol's JSON schema is snapshotted: a change to it must be deliberate.

After an intended change, regenerate with `python -m tests.test_protocol` and bump
PROTOCOL_VERSION if old workers would break.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import shared.protocol as protocol

SNAPSHOT = Path(__file__).parent / "protocol_schema.json"


def current_schema() -> dict[str, Any]:
    models = {
        name: obj
        for name, obj in vars(protocol).items()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == protocol.__name__
    }
    schemas = {name: model.model_json_schema() for name, model in sorted(models.items())}
    return {"protocol_version": protocol.PROTOCOL_VERSION, "models": schemas}


def test_protocol_schema_matches_snapshot() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    assert current_schema() == expected, "the wire protocol changed: see this module's docstring"


def test_error_body_shape() -> None:
    body = protocol.ErrorBody(error=protocol.ErrorInfo(code="x", message="y"))
    assert set(body.model_dump()) == {"error"}
    assert set(body.model_dump()["error"]) == {"code", "message", "details"}


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current_schema(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")

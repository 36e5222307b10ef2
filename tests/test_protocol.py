"""The wire protocol's JSON schema is snapshotted: a change to it must be deliberate.

After an intended change, regenerate with `python -m tests.test_protocol` and bump
PROTOCOL_VERSION if old workers would break.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, create_model

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


def _job(**extra: Any) -> protocol.JobSpec:
    return protocol.JobSpec(
        job_id=uuid.uuid4(), campaign_id=uuid.uuid4(), problem_id="p", sample_index=0, samples_per_problem=2,
        messages=[protocol.ChatMessage(role="user", content="1+1")], model=protocol.ModelRef(name="m"),
        sampling=protocol.SamplingParams(), **extra,
    )  # fmt: skip


def test_a_job_without_rollout_fields_parses_on_a_worker_that_predates_them() -> None:
    fields: dict[str, Any] = {
        k: (f.annotation, f) for k, f in protocol.JobSpec.model_fields.items() if k not in ("policy", "group")
    }
    older = create_model("OlderJobSpec", __base__=protocol.Wire, **fields)
    job = _job()
    assert older.model_validate_json(job.model_dump_json()).model_dump() == job.model_dump()
    sha = "0" * 64
    policy = protocol.PolicyRef(version=2, sha256=sha, base_model="m", size_bytes=9, url=f"/v1/a/{sha}")
    rollout = _job(policy=policy, group=protocol.RolloutGroupRef(group_id=uuid.uuid4(), size=2))
    assert protocol.JobSpec.model_validate_json(rollout.model_dump_json()) == rollout
    assert policy.model_name == "flywheel-artifact/" + sha


@pytest.mark.parametrize(
    "url", ["https://elsewhere/x", "//elsewhere/x", "/v1/../x", "/v1/./x", "/v1//x", "/x?y"]
)
def test_a_policy_url_is_a_plain_path_under_the_coordinator(url: str) -> None:
    with pytest.raises(ValidationError):
        protocol.PolicyRef(version=0, sha256="0" * 64, base_model="m", size_bytes=1, url=url)


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current_schema(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")


def test_an_engine_without_a_noise_scheme_is_read_by_a_coordinator_that_predates_it() -> None:
    fields: dict[str, Any] = {
        k: (f.annotation, f) for k, f in protocol.EngineInfo.model_fields.items() if k != "noise"
    }
    older = create_model("OlderEngineInfo", __base__=protocol.Wire, **fields)
    plain = protocol.EngineInfo(name="transformers", dtype="float32")
    assert "noise" not in plain.model_dump_json()
    assert older.model_validate_json(plain.model_dump_json()).model_dump() == plain.model_dump(
        exclude={"noise"}
    )
    vllm = protocol.EngineInfo(name="vllm", noise=protocol.NOISE_VLLM_GUMBEL)
    assert protocol.EngineInfo.model_validate_json(vllm.model_dump_json()).noise == protocol.NOISE_VLLM_GUMBEL
    with pytest.raises(ValidationError):  # an older coordinator refuses what it cannot replay
        older.model_validate_json(vllm.model_dump_json())

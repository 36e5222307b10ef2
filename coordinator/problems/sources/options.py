"""Validating a source's options: one clear line naming the first bad field, every error in details."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from coordinator.errors import ValidationFailed

Options = TypeVar("Options", bound=BaseModel)


def parse_options(model: type[Options], options: dict[str, Any], label: str) -> Options:
    """`options` as `model`, or ValidationFailed("bad <label> options: <field>: <message>")."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "options"
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise ValidationFailed(f"bad {label} options: {where}: {error['msg']}", details) from exc

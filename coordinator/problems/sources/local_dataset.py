"""Problems from a local dataset file, read with Hugging Face `datasets` (docs/problems.md).

Parquet, JSON / JSON Lines, CSV and Arrow files, or a folder written by `Dataset.save_to_disk`;
a column mapping names which column holds each field of a problem, and one verifier kind applies
to the whole set. `datasets` is imported when a file is read, never when the API starts.
"""

from __future__ import annotations

import csv
import itertools
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coordinator.errors import BadRequest, FlywheelError, ValidationFailed
from shared.protocol import ProblemIn

Format = Literal["parquet", "json", "jsonl", "csv", "arrow"]
SUFFIXES: dict[str, Format] = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".arrow": "arrow",
}
# `datasets`' packaged builder for each format (JSON Lines is its JSON builder's line mode).
BUILDERS: dict[Format, str] = {
    "parquet": "parquet",
    "json": "json",
    "jsonl": "json",
    "csv": "csv",
    "arrow": "arrow",
}


class ColumnMapping(BaseModel):
    """Which column holds each field; an unnamed field uses the column of its own name when the
    dataset has one (`prompt` must exist), and a row without an id column is named `row-<index>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(default="prompt", min_length=1)
    answer: str | None = Field(default=None, min_length=1)
    system: str | None = Field(default=None, min_length=1)
    id: str | None = Field(default=None, min_length=1)
    metadata: str | None = Field(default=None, min_length=1, description="a column of objects")


class DatasetOptions(BaseModel):
    """`options` of a `dataset` problem set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verifier: Literal["math", "reasoning_gym", "code"] = "math"
    format: Format | None = Field(default=None, description="default: from the file's suffix")
    columns: ColumnMapping = Field(default_factory=ColumnMapping)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> DatasetOptions:
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            first = _first_error(exc)
            details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise ValidationFailed(f"bad dataset options: {first}", details) from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown option {where!r}"
    return f"{where}: {error['msg']}, not {error['input']!r}" if where else str(error["msg"])


class DatasetsMissing(FlywheelError):
    """This coordinator was installed without `datasets`: the request is sound, the server lacks
    the means (so not a 400)."""

    status_code = 501
    code = "not_supported"


@contextmanager
def opened(path: Path, fmt: Format | None, split: str) -> Iterator[Any]:
    """The file (or `save_to_disk` folder) as a `datasets.Dataset`, memory-mapped from a private
    cache that is removed on leaving (nothing is kept behind, and a large file is not held in
    memory whole)."""
    try:
        import datasets
    except ImportError as exc:
        message = "reading dataset files needs the `datasets` package: pip install 'openflywheel[train]'"
        raise DatasetsMissing(message) from exc
    if path.is_dir():
        yield _from_disk(datasets, path, split)
        return
    fmt = fmt or SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(SUFFIXES)
        raise BadRequest(f"cannot tell the format of {path.name!r}: name it {known}, or give the format")
    with tempfile.TemporaryDirectory(prefix="flywheel-dataset-") as cache:
        try:
            extra = _csv_options(datasets, path) if fmt == "csv" else {}
            dataset = datasets.load_dataset(
                BUILDERS[fmt], data_files=str(path), split="train", cache_dir=cache, **extra
            )
        except Exception as exc:  # the builders raise assorted errors for a malformed file
            raise BadRequest(f"the file cannot be read as {fmt}: {_reason(exc)}") from exc
        yield dataset


def _csv_options(datasets: Any, path: Path) -> dict[str, Any]:
    """CSV cells are text: read them as written (no `007` -> 7, no `NA` -> null); an empty cell
    is a missing value."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "na_values": [""]}


def _from_disk(datasets: Any, path: Path, split: str) -> Any:
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # not a save_to_disk folder, or a damaged one
        raise BadRequest(f"{path.name!r} is not a dataset folder: {_reason(exc)}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split not in loaded:
        raise BadRequest(f"the dataset has no split {split!r}; it has {sorted(loaded)}")
    return loaded[split]


def _reason(exc: BaseException) -> str:
    # DatasetGenerationError wraps the parser's error, which names what is wrong.
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]


class RowReader:
    """Turns a dataset's rows into problems under one mapping, naming the column of a bad value."""

    def __init__(self, options: DatasetOptions, column_names: list[str]) -> None:
        self.verifier = options.verifier
        self.columns = _resolve(options.columns, column_names)

    def problem(self, index: int, row: dict[str, Any]) -> ProblemIn:
        fields: dict[str, Any] = {"verifier": self.verifier, "id": f"row-{index}"}
        for field, column in self.columns.items():
            fields[field] = self._value(field, column, row[column])
        try:
            return ProblemIn.model_validate(fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            source = self.columns.get(name)
            where = f"{name} (column {source!r})" if source else name
            raise ValidationFailed(f"{where}: {error['msg']}") from exc

    def _value(self, field: str, column: str, value: Any) -> Any:
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if field == "metadata" or (field == "answer" and self.verifier == "code"):
            return _object(field, column, value)
        return _plain(value)


def _resolve(mapping: ColumnMapping, column_names: list[str]) -> dict[str, str]:
    """Field -> column: named columns must exist; unnamed fields take a same-named column."""
    present = set(column_names)
    resolved: dict[str, str] = {}
    for field, column in mapping.model_dump().items():
        if column is None:
            if field in present:
                resolved[field] = field
            continue
        if column not in present:
            raise ValidationFailed(
                f"the dataset has no column {column!r} (mapped to {field}); its columns: {column_names}",
                {"missing_column": column, "field": field, "columns": column_names},
            )
        resolved[field] = column
    return resolved


def _object(field: str, column: str, value: Any) -> Any:
    """An object column: a struct, or JSON text where the format has no objects (CSV)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"{field} (column {column!r}): not a JSON object: {exc}") from exc
    else:
        value = _without_nulls(value)
    if field == "metadata" and value is None:
        return {}
    if field == "metadata" and not isinstance(value, dict):
        raise ValidationFailed(f"metadata (column {column!r}): must be an object, not {type(value).__name__}")
    return _plain(value)


def _without_nulls(value: Any) -> Any:
    """A struct column has every key any of its rows has, null where a row lacks it; Arrow cannot
    tell the two apart, so null keys are dropped (a code spec with a foreign key is refused)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """JSON-able as stored (dates and other scalar types `datasets` returns become strings)."""
    return json.loads(json.dumps(value, default=str))


def rows(dataset: Any, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, row) of the first `limit` rows; the index is the row's position in the dataset."""
    return itertools.islice(enumerate(dataset), limit)

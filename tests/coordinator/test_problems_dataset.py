"""Problem sets from dataset files read with Hugging Face `datasets`: upload and CLI, with a column
mapping and one verifier kind per set; every error names its column or row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from sqlalchemy import select

from coordinator.config import Settings
from coordinator.db import transaction
from coordinator.problems.models import Problem
from tests.coordinator.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
ROWS: dict[str, list[Any]] = {
    "uid": ["q1", "q2", "q3"],
    "question": ["What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?"],
    "gold": ["2", "4", "6"],
    "sys": ["Be brief.", None, "Be brief."],
    "info": [{"level": 1}, {"level": 2}, {"level": 3}],
}
MAPPING = {
    "prompt_column": "question",
    "answer_column": "gold",
    "system_column": "sys",
    "id_column": "uid",
    "metadata_column": "info",
}


def _parquet(path: Path, rows: dict[str, list[Any]]) -> None:
    datasets.Dataset.from_dict(rows).to_parquet(str(path))


def _jsonl(path: Path, rows: dict[str, list[Any]]) -> None:
    datasets.Dataset.from_dict(rows).to_json(str(path), lines=True)


def _json_list(path: Path, rows: dict[str, list[Any]]) -> None:
    records = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
    path.write_text(json.dumps(records), encoding="utf-8")


def _csv(path: Path, rows: dict[str, list[Any]]) -> None:
    # CSV has no objects: an object column is JSON text, which the import decodes.
    text = {k: [json.dumps(v) if isinstance(v, dict) else v for v in vs] for k, vs in rows.items()}
    datasets.Dataset.from_dict(text).to_csv(str(path), index=False)


def _arrow(path: Path, rows: dict[str, list[Any]]) -> None:
    table = pa.table(rows)
    with ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)


WRITERS: dict[str, Callable[[Path, dict[str, list[Any]]], None]] = {
    "parquet": _parquet,
    "jsonl": _jsonl,
    "json": _json_list,
    "csv": _csv,
    "arrow": _arrow,
}


def _upload(api: Api, path: Path, name: str, **fields: Any):  # type: ignore[no-untyped-def]
    with path.open("rb") as handle:
        files = {"file": (path.name, handle.read())}
    data = {"name": name, **{k: str(v) for k, v in fields.items()}}
    return api.client.post("/v1/problem-sets/import-dataset", files=files, data=data, headers=api.operator)


def _stored(api: Api) -> dict[str, Problem]:
    with transaction(api.runtime.sessions) as session:
        problems = session.scalars(select(Problem)).all()
        session.expunge_all()
    return {p.external_id: p for p in problems}


def _sets(api: Api) -> list[Any]:
    listed: list[Any] = api.client.get("/v1/problem-sets", headers=api.operator).json()
    return listed


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_an_uploaded_dataset_file_becomes_a_problem_set_under_its_mapping(
    api: Api, tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"problems.{fmt}"
    WRITERS[fmt](path, ROWS)
    r = _upload(api, path, f"from-{fmt}", **MAPPING)
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "dataset" and r.json()["size"] == 3
    stored = _stored(api)
    assert sorted(stored) == ["q1", "q2", "q3"]
    assert stored["q2"].prompt == "What is 2 + 2?" and stored["q2"].system is None
    assert stored["q1"].system == "Be brief."
    assert stored["q3"].verifier_spec == {"kind": "math", "gold": "6", "config": {}}
    assert stored["q3"].extra == {"level": 3}


def test_unmapped_fields_take_same_named_columns_and_rows_without_ids_are_numbered(
    api: Api, tmp_path: Path
) -> None:
    path = tmp_path / "plain.parquet"
    _parquet(path, {"prompt": ["Say 7.", "Say 8."], "answer": [7, 8], "other": ["x", "y"]})
    r = _upload(api, path, "plain", limit=1)
    assert r.status_code == 201, r.text
    stored = _stored(api)
    assert list(stored) == ["row-0"]
    assert stored["row-0"].verifier_spec["gold"] == 7 and stored["row-0"].extra == {}


def test_the_verifier_kind_is_chosen_per_set_and_code_specs_are_read_from_csv_json(
    api: Api, tmp_path: Path
) -> None:
    spec = {"tests": [{"stdin": "1 2\n", "stdout": "3\n"}]}
    path = tmp_path / "code.csv"
    _csv(path, {"task": ["add"], "question": ["Add two numbers."], "tests": [spec]})
    fields = {"prompt_column": "question", "answer_column": "tests", "id_column": "task"}
    r = _upload(api, path, "code", verifier="code", **fields)
    assert r.status_code == 201, r.text
    assert _stored(api)["add"].verifier_spec == {"kind": "code", "gold": None, "config": spec}
    rg = tmp_path / "rg.jsonl"
    entry = {"question": "1+1", "answer": "2", "metadata": {"source_dataset": "basic_arithmetic"}}
    metadata = {"dataset": "basic_arithmetic", "entry": entry}
    _jsonl(rg, {"prompt": ["1+1"], "answer": ["2"], "metadata": [metadata]})
    r = _upload(api, rg, "rg", verifier="reasoning_gym")
    assert r.status_code == 201, r.text
    assert _stored(api)["row-0"].verifier_kind == "reasoning_gym"


def test_struct_code_specs_of_different_shapes_are_read_as_written(api: Api, tmp_path: Path) -> None:
    """Arrow gives every row of a struct column every key of any row (null where absent): the
    import drops those nulls, or the strict spec reader would refuse both rows."""
    stdio = {"tests": [{"stdin": "1 2\n", "stdout": "3\n"}]}
    call = {"style": "call", "entry_point": "f", "tests": [{"args": [1], "expected": 2}]}
    path = tmp_path / "code.parquet"
    _parquet(path, {"prompt": ["stdio", "call"], "answer": [stdio, call]})
    r = _upload(api, path, "code", verifier="code")
    assert r.status_code == 201, r.text
    stored = _stored(api)
    assert stored["row-0"].verifier_spec["config"] == stdio
    assert stored["row-1"].verifier_spec["config"] == call


def test_a_missing_column_is_named_and_nothing_is_imported(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "problems.parquet"
    _parquet(path, ROWS)
    r = _upload(api, path, "missing", prompt_column="question", answer_column="solution")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "no column 'solution' (mapped to answer)" in error["message"]
    assert error["details"]["missing_column"] == "solution" and "gold" in error["details"]["columns"]
    # Without a mapping, `prompt` must be a column of its own name.
    r = _upload(api, path, "missing")
    assert r.status_code == 422 and "no column 'prompt'" in r.json()["error"]["message"]
    assert _sets(api) == []


def test_bad_rows_are_named_by_index_and_field_and_nothing_is_imported(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    rows: dict[str, list[Any]] = {
        "question": ["fine", "", "fine too", None],
        "info": ["{}", "{}", "[1, 2]", "{}"],
    }
    _parquet(path, rows)
    r = _upload(api, path, "bad", prompt_column="question", metadata_column="info")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert [d["row"] for d in error["details"]] == [1, 2, 3]
    assert error["details"][0]["error"].startswith("prompt (column 'question'): String should have at least")
    assert error["details"][1]["error"] == "metadata (column 'info'): must be an object, not list"
    assert error["details"][2]["error"].startswith(
        "prompt (column 'question'): Input should be a valid string"
    )
    assert "the dataset has invalid rows; nothing was imported (row 1: prompt" in error["message"]
    assert _sets(api) == []


def test_a_bad_code_spec_row_is_refused_with_the_verifiers_reason(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "code.jsonl"
    good, bad = {"tests": [{"stdin": "1", "stdout": "1"}]}, {"tests": [{"input": "1"}]}
    _jsonl(path, {"prompt": ["a", "b"], "answer": [json.dumps(good), json.dumps(bad)]})
    r = _upload(api, path, "code", verifier="code")
    assert r.status_code == 422, r.text
    reason = "problem 'row-1': bad code spec: test 0: unknown key 'input'; known: ['stdin', 'stdout']"
    assert r.json()["error"]["details"] == [{"row": 1, "error": reason}]


def test_an_unknown_verifier_kind_or_format_is_refused_before_reading(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "problems.parquet"
    _parquet(path, ROWS)
    r = _upload(api, path, "kind", verifier="lean", prompt_column="question")
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(
        "bad dataset options: verifier: Input should be 'math', 'reasoning_gym' or 'code'"
    )
    assert "not 'lean'" in message
    assert _upload(api, path, "fmt", format="xlsx", prompt_column="question").status_code == 422
    unnamed = tmp_path / "problems.data"
    unnamed.write_bytes(path.read_bytes())
    r = _upload(api, unnamed, "unnamed", prompt_column="question")
    assert r.status_code == 400 and "cannot tell the format" in r.json()["error"]["message"]
    assert _upload(api, unnamed, "named", format="parquet", prompt_column="question").status_code == 201
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file")
    r = _upload(api, garbage, "garbage")
    assert r.status_code == 400 and "cannot be read as parquet" in r.json()["error"]["message"]


def test_the_json_endpoint_takes_no_server_path_and_uploads_are_bounded(api: Api, tmp_path: Path) -> None:
    body = {"name": "path", "source": "dataset", "options": {"path": "/etc/passwd"}}
    r = api.client.post("/v1/problem-sets", json=body, headers=api.operator)
    assert r.status_code == 400 and "upload it" in r.json()["error"]["message"]
    big = tmp_path / "big.jsonl"
    _jsonl(big, {"prompt": ["x" * 1000] * 2000})  # over the test app's 1 MB request limit
    r = _upload(api, big, "big")
    assert r.status_code == 413, r.text
    assert _sets(api) == []


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    env.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "coordinator.cli", "problems", "dataset", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_the_cli_reads_a_save_to_disk_folder_and_names_a_missing_column(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "saved"
    splits = {"train": datasets.Dataset.from_dict(ROWS), "test": datasets.Dataset.from_dict(ROWS).select([0])}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    flags = ["--file", str(folder), "--prompt-column", "question", "--answer-column", "gold"]
    done = _cli(settings, "--name", "saved", "--split", "train", "--id-column", "uid", *flags)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["size"] == 3 and sorted(_stored(api)) == ["q1", "q2", "q3"]
    done = _cli(settings, "--name", "other", "--split", "dev", *flags)
    assert done.returncode != 0 and "no split 'dev'" in done.stderr
    done = _cli(settings, "--name", "other", "--file", str(folder), "--prompt-column", "text")
    assert done.returncode != 0 and "the dataset has no column 'text' (mapped to prompt)" in done.stderr
    assert [s["name"] for s in _sets(api)] == ["saved"]


def test_starting_the_api_does_not_import_datasets(tmp_path: Path) -> None:
    code = (
        "import sys; from coordinator.app import create_app; from coordinator.config import Settings;"
        f"create_app(Settings(database_url='sqlite:///{tmp_path}/lazy.db', redis_url=None));"
        "sys.exit(3 if 'datasets' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or "the API imported `datasets` at start"


def test_a_coordinator_without_datasets_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "problems.parquet"
    _parquet(path, ROWS)
    code = (
        "import sys; sys.modules['datasets'] = None;"  # what an install without the package sees
        "from pathlib import Path; from coordinator.problems.sources import local_dataset as ld\n"
        f"try: ld.opened(Path({str(path)!r}), None, 'test').__enter__()\n"
        "except ld.DatasetsMissing as exc: print(exc.status_code, exc.message)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == (
        "501 reading dataset files needs the `datasets` package: pip install 'openflywheel[train]'"
    ), done.stderr

"""Problem sets: JSONL and dataset-file import, and built-in sources."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coordinator.errors import BadRequest, Conflict, FlywheelError, NotFound, ValidationFailed
from coordinator.problems import repository
from coordinator.problems.models import ProblemSet
from coordinator.problems.sources import builtin, code_files, environments, local_dataset
from shared.protocol import ProblemIn, ProblemSetCreate, ProblemSetOut, VerifierSpec

MAX_LINE_ERRORS = 20
T = TypeVar("T")


def verifier_spec(problem: ProblemIn) -> VerifierSpec:
    """The hidden half of a problem: what the verifier needs, kept on the coordinator."""
    if problem.verifier == "math":
        return VerifierSpec(kind="math", gold=problem.answer)
    if problem.verifier == "reasoning_gym":
        entry = problem.metadata.get("entry") or {"answer": problem.answer, "metadata": problem.metadata}
        config = {"dataset": _rg_dataset(problem), "entry": entry}
        return VerifierSpec(kind="reasoning_gym", gold=problem.answer, config=config)
    if problem.verifier == "verifiers":
        return VerifierSpec(kind="verifiers", config=_environment_record(problem))
    record = problem.metadata.get("record")
    if record is not None:
        return _record_spec(problem, record)
    return VerifierSpec(kind="code", config=_code_config(problem))


def _record_spec(problem: ProblemIn, record: Any) -> VerifierSpec:
    """A code spec derived in the sandbox from a published record: MBPP's where the problem says
    so (metadata.source), else HumanEval's."""
    from verifier.code import spec_from_humaneval, spec_from_mbpp
    from verifier.errors import SpecError

    build = spec_from_mbpp if problem.metadata.get("source") == "mbpp" else spec_from_humaneval
    try:
        return build(record)
    except SpecError as exc:
        raise ValidationFailed(f"problem {problem.id!r}: {exc}") from exc


def check_problem(problem: ProblemIn) -> None:
    """The checks of `verifier_spec` that need no sandbox, run while a file is parsed so that
    every bad line is reported at once (a HumanEval record is checked when its spec is built, an
    MBPP record here and again then)."""
    if problem.verifier == "reasoning_gym":
        _rg_dataset(problem)
    elif problem.verifier == "verifiers":
        _environment_record(problem)
    elif problem.verifier == "code" and problem.metadata.get("record") is None:
        _code_config(problem)
    elif problem.verifier == "code" and problem.metadata.get("source") == "mbpp":
        _mbpp_task(problem)


def _environment_record(problem: ProblemIn) -> dict[str, Any]:
    """A verifiers problem's hidden record: the environment, its arguments and the task row."""
    from verifier.environments import config_error

    record = problem.metadata.get("record")
    if not isinstance(record, dict):
        raise ValidationFailed(f"problem {problem.id!r}: verifiers problems need metadata.record")
    error = config_error(record)
    if error is not None:
        raise ValidationFailed(f"problem {problem.id!r}: {error}")
    return record


def _mbpp_task(problem: ProblemIn) -> None:
    from verifier.code import mbpp_task
    from verifier.errors import SpecError

    record = problem.metadata["record"]
    try:
        mbpp_task(record if isinstance(record, dict) else {})
    except SpecError as exc:
        raise ValidationFailed(f"problem {problem.id!r}: bad MBPP record: {exc}") from exc


def _rg_dataset(problem: ProblemIn) -> str:
    dataset = problem.metadata.get("dataset")
    if not dataset:
        raise BadRequest(f"problem {problem.id!r}: reasoning_gym problems need metadata.dataset")
    return str(dataset)


def _code_config(problem: ProblemIn) -> dict[str, Any]:
    """A code problem's test spec (its `answer`), refused unless the verifier would read it as
    written: a test with unknown keys would otherwise reward an empty program."""
    from verifier.code import CodeConfig
    from verifier.errors import SpecError

    if not isinstance(problem.answer, dict):
        raise ValidationFailed(f"problem {problem.id!r}: code problems need `answer` in the code test format")
    try:
        CodeConfig.parse(problem.answer)
    except (SpecError, TypeError, ValueError) as exc:  # float("soon") is a ValueError
        raise ValidationFailed(f"problem {problem.id!r}: bad code spec: {exc}") from exc
    return problem.answer


def _row(set_id: uuid.UUID, problem: ProblemIn) -> dict[str, Any]:
    spec = verifier_spec(problem)
    public = {k: v for k, v in problem.metadata.items() if k not in {"entry", "record", "solution"}}
    return {
        "id": uuid.uuid4(),
        "problem_set_id": set_id,
        "external_id": problem.id,
        "prompt": problem.prompt,
        "system": problem.system,
        "verifier_kind": spec.kind,
        "verifier_spec": spec.model_dump(mode="json"),
        "extra": public,
    }


def collect(
    items: Iterable[tuple[int, T]], build: Callable[[int, T], ProblemIn | None], unit: str, what: str
) -> Iterator[ProblemIn]:
    """Build and check every problem; collect errors so one import reports all its bad `unit`s
    (lines, rows) at once, numbered as the caller numbers them. A `build` that returns None
    leaves that item out."""
    errors: list[dict[str, Any]] = []
    parsed: list[ProblemIn] = []
    for number, item in items:
        try:
            problem = build(number, item)
            if problem is None:
                continue
            check_problem(problem)
        except (json.JSONDecodeError, ValidationError) as exc:
            errors.append({unit: number, "error": _reason(exc)[:300]})
        except FlywheelError as exc:
            errors.append({unit: number, "error": exc.message[:300]})
        else:
            parsed.append(problem)
        if len(errors) >= MAX_LINE_ERRORS:
            break
    if errors:
        first = f"{unit} {errors[0][unit]}: {errors[0]['error']}"
        raise ValidationFailed(f"{what} has invalid {unit}s; nothing was imported ({first})", errors)
    if not parsed:
        raise ValidationFailed(f"{what} holds no problems")
    return iter(parsed)


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    return str(exc).splitlines()[0]


def parse_jsonl(lines: Iterable[str | bytes]) -> Iterator[ProblemIn]:
    """Validate every non-blank line (numbered from 1); all of them or none."""
    texts = (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw for raw in lines)
    numbered = ((number, line) for number, line in enumerate(texts, start=1) if line.strip())
    return collect(numbered, _jsonl_problem, "line", "the problem file")


def _jsonl_problem(_: int, line: str) -> ProblemIn:
    return ProblemIn.model_validate(json.loads(line))


def parse_code_jsonl(lines: Iterable[str | bytes], options: dict[str, Any]) -> Iterator[ProblemIn]:
    """A code problem file in a published layout (APPS, CodeContests, MBPP), checked line by line
    as a JSONL file is; all of it or none."""
    parsed = code_files.CodeOptions.parse(options)
    texts = (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw for raw in lines)
    numbered = ((number, line) for number, line in enumerate(texts, start=1) if line.strip())
    return collect(
        numbered, lambda _, line: code_files.problem(parsed, line), "line", f"the {parsed.format} file"
    )


def environment_problems(request: ProblemSetCreate) -> list[ProblemIn]:
    """A verifiers environment's tasks, listed in the verifier sandbox and checked, before any
    transaction (loading an environment takes seconds)."""
    from verifier.environments import tasks
    from verifier.errors import SpecError

    options = environments.EnvironmentOptions.parse(request.options)
    split = environments.split_of(request.split)
    try:
        rows = tasks(options.environment, options.args, split, request.limit)
    except SpecError as exc:
        raise ValidationFailed(str(exc)) from exc
    reader = environments.TaskReader(options, split)
    return list(collect(enumerate(rows), reader.problem, "row", f"environment {options.environment!r}"))


def read_first(request: ProblemSetCreate) -> list[ProblemIn] | None:
    """The problems of a source that is read before the import's transaction, from the request
    alone (verifiers); None for the others."""
    return environment_problems(request) if request.source == "verifiers" else None


def dataset_problems(request: ProblemSetCreate, data_file: Path) -> list[ProblemIn]:
    """A dataset source's file read and checked whole, before any transaction: reading takes
    seconds (importing `datasets`, preparing the file), and no write lock should wait on it."""
    options = local_dataset.DatasetOptions.parse(request.options)
    with local_dataset.opened(data_file, options.format, request.split) as dataset:
        reader = local_dataset.RowReader(options, list(dataset.column_names))
        rows = local_dataset.rows(dataset, request.limit)
        return list(collect(rows, reader.problem, "row", "the dataset"))


def _source_rows(
    request: ProblemSetCreate, lines: Iterable[str | bytes] | None, read: Sequence[ProblemIn] | None
) -> Iterator[ProblemIn]:
    if request.source == "jsonl":
        if lines is None:
            raise BadRequest("a jsonl problem set needs a file")
        return parse_jsonl(lines)
    if request.source == "code":
        if lines is None:
            raise BadRequest(
                "a code problem set is read from a file: POST it to /v1/problem-sets/import-code, "
                "or use `flywheel coordinator problems code`"
            )
        return parse_code_jsonl(lines, request.options)
    if request.source == "verifiers":
        return iter(read if read is not None else environment_problems(request))
    if request.source == "dataset":
        if read is None:
            raise BadRequest(
                "a dataset problem set is read from a file: upload it to "
                "POST /v1/problem-sets/import-dataset, or use `flywheel coordinator problems dataset`"
            )
        return iter(read)
    if request.source == "gsm8k":
        return builtin.gsm8k(request.split, request.limit)
    if request.source == "arithmetic":
        return builtin.arithmetic_problems(request.split, request.limit, request.seed, request.options)
    if request.source == "reasoning_gym":
        return builtin.reasoning_gym_problems(request.limit, request.seed, request.options)
    return builtin.humaneval_problems(request.limit)


def create_set(
    session: Session,
    request: ProblemSetCreate,
    lines: Iterable[str | bytes] | None = None,
    read: Sequence[ProblemIn] | None = None,
) -> ProblemSet:
    """Import a whole problem set in one transaction: it appears complete or not at all.
    `lines` are a jsonl source's file; `read`, a dataset source's problems (`dataset_problems`)."""
    if repository.set_by_name(session, request.name) is not None:
        raise Conflict(f"a problem set named {request.name!r} exists")
    problems = _source_rows(request, lines, read)
    problem_set = repository.add_set(session, ProblemSet(name=request.name, source=request.source))
    seen: set[str] = set()

    def rows() -> Iterator[dict[str, Any]]:
        for problem in problems:
            if problem.id in seen:
                raise ValidationFailed(f"duplicate problem id {problem.id!r}")
            seen.add(problem.id)
            yield _row(problem_set.id, problem)

    try:
        problem_set.size = repository.insert_problems(session, rows())
    except IntegrityError as exc:
        raise Conflict("problem ids must be unique within a set") from exc
    return problem_set


def get_set(session: Session, set_id: uuid.UUID) -> ProblemSet:
    problem_set = repository.get_set(session, set_id)
    if problem_set is None:
        raise NotFound(f"no problem set {set_id}")
    return problem_set


def to_out(problem_set: ProblemSet) -> ProblemSetOut:
    return ProblemSetOut(
        id=problem_set.id,
        name=problem_set.name,
        source=problem_set.source,
        size=problem_set.size,
        created_at=problem_set.created_at,
    )


def list_sets(session: Session) -> Sequence[ProblemSet]:
    return repository.list_sets(session)

"""The spool: atomic writes, crash survival, unreadable files, one daemon per directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from shared.protocol import EngineInfo, FinishReason, TraceSubmission
from tests.waiting import wait_for
from worker.errors import SpoolError
from worker.spool import BAD_DIR, Spool


def submission(text: str = "42") -> TraceSubmission:
    return TraceSubmission(
        lease_id=uuid.uuid4(),
        attempt_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        text=text,
        completion_token_ids=[1, 2, 3],
        logprobs=[-0.1, -0.2, -0.3],
        finish_reason=FinishReason.stop,
        engine=EngineInfo(name="transformers"),
    )


def test_put_pending_remove_roundtrip(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first, second = submission("a"), submission("b")
    spool.put(first)
    spool.put(second)
    assert len(spool) == 2
    assert {r.attempt_id for r in spool.pending()} == {first.attempt_id, second.attempt_id}
    spool.remove(first.attempt_id)
    assert spool.pending() == [second]
    assert not list((tmp_path / "spool").glob(".*.tmp"))


def test_results_survive_a_new_instance(tmp_path: Path) -> None:
    results = [submission(str(i)) for i in range(5)]
    spool = Spool(tmp_path)
    for result in results:
        spool.put(result)
    del spool  # the daemon died; a new one opens the same directory
    reopened = Spool(tmp_path)
    assert sorted(r.model_dump_json() for r in reopened.pending()) == sorted(
        r.model_dump_json() for r in results
    )


def test_partial_write_is_ignored_and_cleaned(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = submission()
    spool.put(kept)
    partial = tmp_path / f".{uuid.uuid4()}.json.123.tmp"
    partial.write_text('{"lease_id": "trunc')
    reopened = Spool(tmp_path)
    assert not partial.exists()
    assert reopened.pending() == [kept]


def test_unreadable_file_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / f"{uuid.uuid4()}.json").write_text("not json")
    good = submission()
    spool.put(good)
    assert spool.pending() == [good]
    assert len(list((tmp_path / BAD_DIR).iterdir())) == 1


def test_second_daemon_cannot_take_a_locked_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path, lock=True)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, lock=True)
    first.close()
    Spool(tmp_path, lock=True).close()


WRITER = textwrap.dedent(
    """
    import sys, uuid
    sys.path.insert(0, sys.argv[2])
    from shared.protocol import EngineInfo, FinishReason, TraceSubmission
    from worker.spool import Spool
    spool = Spool(sys.argv[1])
    big = "x" * 150_000  # large enough that a torn write would be visible
    print("ready", flush=True)
    while True:
        spool.put(TraceSubmission(lease_id=uuid.uuid4(), attempt_id=uuid.uuid4(), job_id=uuid.uuid4(),
            text=big, completion_token_ids=list(range(2000)), logprobs=[-1.0] * 2000,
            finish_reason=FinishReason.length, engine=EngineInfo(name="transformers")))
    """
)


def test_killed_writer_never_leaves_a_torn_result(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    wait_for(
        lambda: len(list(tmp_path.glob("*.json"))) >= 5,
        120,
        lambda: f"{len(list(tmp_path.glob('*.json')))} results written, writer exit code {proc.poll()}",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spool = Spool(tmp_path)
    results = spool.pending()
    assert len(results) >= 5
    assert all(len(r.text) == 150_000 and len(r.logprobs) == 2000 for r in results)
    assert not (tmp_path / BAD_DIR).exists()

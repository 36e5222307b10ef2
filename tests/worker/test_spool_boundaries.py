"""Spool edges a mutation run found untested: a nested or blocked directory, acks for results
already gone, writes into a directory that vanished, several unreadable files at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.worker.test_worker_spool import submission
from worker.errors import SpoolError
from worker.spool import BAD_DIR, Spool


def test_a_spool_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state" / "worker" / "spool")
    kept = submission()
    spool.put(kept)
    assert Spool(tmp_path / "state" / "worker" / "spool").pending() == [kept]


def test_a_spool_that_cannot_be_created_says_where(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(SpoolError, match=f"cannot create spool directory {blocked}"):
        Spool(blocked / "spool")


def test_removing_a_result_that_is_already_gone_is_no_error(tmp_path: Path) -> None:
    """A second ack for one attempt (a duplicate after a retried request) finds its file removed."""
    spool = Spool(tmp_path)
    result = submission()
    spool.put(result)
    spool.remove(result.attempt_id)
    spool.remove(result.attempt_id)
    assert len(spool) == 0


def test_a_write_into_a_vanished_directory_is_a_spool_error_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    shutil.rmtree(tmp_path / "spool")
    with pytest.raises(SpoolError, match="cannot write to the spool"):
        spool.put_many([submission(), submission()])
    assert not (tmp_path / "spool").exists()


def test_every_unreadable_file_is_moved_aside_and_the_readable_ones_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    names = [f"{submission().attempt_id}.json" for _ in range(3)]
    for name in names:
        (tmp_path / name).write_text("{torn")
    good = submission()
    spool.put(good)
    assert spool.pending() == [good]
    assert sorted(p.name for p in (tmp_path / BAD_DIR).iterdir()) == sorted(names)
    (tmp_path / names[0]).write_text("{torn again")  # a later one, with the directory already there
    assert spool.pending() == [good]
    assert len(list((tmp_path / BAD_DIR).iterdir())) == 3


def test_a_closed_spool_can_be_closed_again_and_taken_by_the_next_daemon(tmp_path: Path) -> None:
    first = Spool(tmp_path, lock=True)
    first.close()
    first.close()
    Spool(tmp_path, lock=True).close()

"""Public response models of the credit area: the leaderboard, and the coordinator's totals and
throughput. Anyone may read them, so they carry names and sums only (no ids, hosts or tokens)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.protocol import Wire


class WorkerRow(Wire):
    rank: int
    name: str
    team: str | None
    credit: float
    tokens: int


class TeamRow(Wire):
    rank: int
    name: str
    members: int = Field(description="members with credit in the window")
    credit: float
    tokens: int


class Board(Wire):
    workers: list[WorkerRow]
    teams: list[TeamRow]


class Leaderboard(Wire):
    all_time: Board
    last_7_days: Board
    generated_at: datetime


class Point(Wire):
    at: datetime = Field(description="start of the bucket")
    tokens_per_s: float
    traces_per_s: float


class Throughput(Wire):
    bucket_s: int
    points: list[Point] = Field(description="oldest first; buckets without traces are zero")


class PublicSummary(Wire):
    volunteers: int = Field(description="workers holding credit")
    teams: int = Field(description="teams with a member")
    traces: int = Field(description="credited traces")
    completion_tokens: int = Field(description="completion tokens of the credited traces")
    credit: float
    throughput: Throughput

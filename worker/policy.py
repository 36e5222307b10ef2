"""The policy cache: model weights from the coordinator's pipeline, downloaded, verified, ready to load.

An RL policy version (or an SFT checkpoint) is one safetensors file of full weights, named by its
sha256, on top of a base model that supplies config and tokenizer. The cache downloads the file
with the worker's token into `<root>/<sha256>.partial`, resuming with `Range` after an interruption
(a 206 appends, a 200 starts over), hashes the whole file, and only when the hash is the name
renames it to `<root>/<sha256>/model.safetensors`, beside the base's config and tokenizer files:
a directory `from_pretrained` opens. A weights file there is therefore complete and correct, and
it is the last thing put in place, so its presence means the directory is ready.

The cache keeps the `keep` most recently used versions within `max_bytes`; the version the engine
runs now (`hold`) is never evicted. Downloads run one at a time; a download never blocks a caller
whose version is already there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.assets import SERVING_FILES, file_sha256, is_sha256, resolve_model
from shared.pipeline_types import ArtifactInfo
from shared.protocol import ARTIFACT_MODEL_PREFIX, PolicyRef
from worker.client import CoordinatorClient
from worker.errors import PolicyError, RejectedError, TransientError
from worker.spool import fsync_dir

log = logging.getLogger("flywheel.worker.policy")
WEIGHTS = "model.safetensors"
PARTIAL = ".partial"
CHUNK = 1 << 20
RANGE_NOT_SATISFIABLE = 416
WEIGHT_KINDS = ("checkpoint", "policy")  # artifact kinds that are full model weights
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+|\*)$")


def artifact_sha(name: str) -> str | None:
    """The sha256 in a `flywheel-artifact/<sha256>` model name; None for any other name."""
    sha = name.removeprefix(ARTIFACT_MODEL_PREFIX)
    return sha if name.startswith(ARTIFACT_MODEL_PREFIX) and is_sha256(sha) else None


@dataclass(frozen=True)
class Weights:
    """What the cache needs to fetch one weights file and make it loadable."""

    sha256: str
    base_model: str
    size_bytes: int
    url: str

    @classmethod
    def of(cls, ref: PolicyRef) -> Weights:
        return cls(ref.sha256, ref.base_model, ref.size_bytes, ref.url)

    @property
    def model_name(self) -> str:
        return ARTIFACT_MODEL_PREFIX + self.sha256


def base_model_files(name: str) -> Path:
    """A local directory with the base model's config and tokenizer, found the way the engines find
    models (a bundled name or a path as it is; a Hugging Face id through its cache, files only)."""
    path = Path(resolve_model(name))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolicyError(f"base model {name!r} at {path} has no config.json")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise PolicyError("serving policy versions needs `pip install openflywheel[worker]`") from exc
    try:
        return Path(snapshot_download(name, allow_patterns=list(SERVING_FILES)))
    except Exception as exc:  # offline, unknown repository, gated model: all mean the same here
        raise PolicyError(f"cannot get the config and tokenizer of base model {name!r}: {exc}") from exc


def _copy_atomic(source: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _resume_offset(response: httpx.Response, have: int) -> int | None:
    """Where the body starts in the file: `have` for a 206 that continues it, 0 for a 200 (the
    server ignored the Range header and sends the whole file), None for a range not asked for."""
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    return have if match is not None and int(match.group(1)) == have else None


class PolicyCache:
    """Weights files by sha256 under `root`, each in a directory a model loader opens."""

    def __init__(
        self,
        root: Path,
        client: CoordinatorClient,
        *,
        keep: int = 3,
        max_bytes: int = 100 << 30,
        attempts: int = 5,
        stop: threading.Event | None = None,
    ) -> None:
        self.root = root
        self.client = client
        self.keep = keep
        self.max_bytes = max_bytes
        self.attempts = attempts
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()  # short: the held version, installs, evictions
        self._download_lock = threading.Lock()  # long: one download at a time
        self._held: str | None = None
        self._clock = 0
        self._named: dict[str, Weights] = {}
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def ready(self, sha256: str) -> bool:
        return (self.path(sha256) / WEIGHTS).is_file()

    def versions(self) -> list[str]:
        """Complete versions on disk, least recently used first."""
        dirs = [p for p in self.root.iterdir() if is_sha256(p.name) and (p / WEIGHTS).is_file()]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime_ns)]

    def hold(self, sha256: str | None) -> None:
        """The version the engine runs now: never evicted while held."""
        with self._lock:
            self._held = sha256
            if sha256 is not None and self.ready(sha256):
                self._mark_used(self.path(sha256))

    def _mark_used(self, path: Path) -> None:
        """A directory's mtime is its last use. Set explicitly and strictly increasing: file system
        clocks tick coarsely, and two uses in one tick must still keep their order."""
        self._clock = max(time.time_ns(), self._clock + 1)
        os.utime(path, ns=(self._clock, self._clock))

    def weights_for(self, name: str) -> Weights:
        """The weights a `flywheel-artifact/<sha256>` name stands for, from the coordinator's record."""
        sha = artifact_sha(name)
        if sha is None:
            raise PolicyError(f"{name!r} is not a flywheel-artifact/<sha256> model name")
        if sha not in self._named:
            info = self.client.artifact_info(sha, ArtifactInfo)
            base = info.metadata.get("base_model")
            if info.sha256 != sha or info.kind not in WEIGHT_KINDS or not isinstance(base, str) or not base:
                raise PolicyError(f"artifact {sha} is not model weights with a base model")
            self._named[sha] = Weights(sha, base, info.size_bytes, info.url)
        return self._named[sha]

    def ensure(self, weights: Weights, hold: bool = False) -> Path:
        """The directory to load `weights` from, downloaded first if need be (raises PolicyError)."""
        sha = weights.sha256
        if not is_sha256(sha):
            raise PolicyError(f"not a sha256: {sha!r}")
        with self._lock:
            if self.ready(sha):
                return self._touch(sha, hold)
        with self._download_lock:
            with self._lock:
                if self.ready(sha):  # fetched by another thread while this one waited
                    return self._touch(sha, hold)
                self._make_room(weights)
            base = base_model_files(weights.base_model)  # before the download: fail early
            partial = self._download(weights)
            with self._lock:
                self._install(weights, partial, base)
                path = self._touch(sha, hold)
                self._evict(self.keep)
        return path

    def _touch(self, sha: str, hold: bool) -> Path:
        path = self.path(sha)
        self._mark_used(path)
        if hold:
            self._held = sha
        return path

    # ------------------------------------------------------------------ downloading

    def _download(self, weights: Weights) -> Path:
        """`<sha>.partial` holding exactly the bytes that hash to the name; bounded retries."""
        partial = self.root / (weights.sha256 + PARTIAL)
        problem = ""
        for attempt in range(self.attempts):
            if attempt and self.stop.wait(self.client.retry.delay(attempt - 1, 0.5)):
                raise PolicyError(f"stopped while downloading {weights.sha256}: {problem}")
            try:
                self._fetch(weights, partial)
            except TransientError as exc:  # what arrived stays on disk: the next attempt resumes
                problem = exc.message
                log.info("download of %s interrupted (%s); resuming", weights.sha256[:12], problem)
                continue
            except RejectedError as exc:
                if exc.status_code != RANGE_NOT_SATISFIABLE:
                    raise PolicyError(f"cannot download {weights.sha256}: {exc.message}") from exc
                partial.unlink(missing_ok=True)  # what we have is no prefix of the file
                problem = exc.message
                continue
            got = file_sha256(partial)
            if got == weights.sha256:
                return partial
            partial.unlink(missing_ok=True)
            problem = f"the downloaded file hashes to {got}, not {weights.sha256}"
            log.warning("%s; deleted, downloading again", problem)
        raise PolicyError(f"cannot download {weights.sha256} in {self.attempts} attempts: {problem}")

    def _fetch(self, weights: Weights, partial: Path) -> None:
        """Bring `partial` to `size_bytes` bytes, continuing from what it holds."""
        have = partial.stat().st_size if partial.exists() else 0
        if have > weights.size_bytes:
            partial.unlink()
            have = 0
        if have == weights.size_bytes and have > 0:
            return  # complete already (an earlier run ended before hashing it)
        with self.client.download(weights.url, start=have) as response:
            offset = _resume_offset(response, have)
            if offset is None:
                partial.unlink(missing_ok=True)
                raise TransientError(f"asked for bytes {have}-, got {response.headers.get('content-range')}")
            with partial.open("ab" if offset else "wb") as out:
                written = offset
                for chunk in response.iter_bytes():  # as received: a broken stream keeps every byte
                    written += len(chunk)
                    if written > weights.size_bytes:
                        out.close()
                        partial.unlink(missing_ok=True)
                        raise PolicyError(
                            f"{weights.sha256} is larger than the {weights.size_bytes} bytes announced"
                        )
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())

    # ------------------------------------------------------------------ disk

    def _install(self, weights: Weights, partial: Path, base: Path) -> None:
        """Base files first, the verified weights last (renamed: atomic), so a weights file in a
        version's directory means the directory is complete."""
        final = self.path(weights.sha256)
        final.mkdir(exist_ok=True)
        for name in SERVING_FILES:
            if (base / name).is_file():
                _copy_atomic(base / name, final / name)
        os.replace(partial, final / WEIGHTS)
        fsync_dir(final)
        log.info("policy weights %s ready in %s", weights.sha256[:12], final)

    def _usage(self, exclude: Path | None = None) -> int:
        files = (p for p in self.root.rglob("*") if p.is_file() and p != exclude)
        return sum(p.stat().st_size for p in files)

    def _removable(self) -> list[Path]:
        """What may go to make room, first to last: other downloads' leftovers, then unfinished
        directories, then versions by last use; never the held version."""
        entries = [p for p in self.root.iterdir() if p.name != self._held]
        partials = [p for p in entries if p.name.endswith(PARTIAL)]
        versions = {sha: i for i, sha in enumerate(self.versions())}
        unfinished = [p for p in entries if p.is_dir() and p.name not in versions]
        done = sorted((p for p in entries if p.name in versions), key=lambda p: versions[p.name])
        return partials + unfinished + done

    def _make_room(self, weights: Weights) -> None:
        """Evict until `weights` fits under `max_bytes` (its own partial download counts as done)."""
        if weights.size_bytes > self.max_bytes:
            raise PolicyError(
                f"{weights.sha256} has {weights.size_bytes} bytes, more than the policy cache may hold "
                f"({self.max_bytes}; policy_cache_gb)"
            )
        own = self.root / (weights.sha256 + PARTIAL)
        candidates = [p for p in self._removable() if p != own]
        while self._usage(exclude=own) + weights.size_bytes > self.max_bytes:
            if not candidates:
                raise PolicyError(f"no room for {weights.sha256} in the policy cache (policy_cache_gb)")
            self._remove(candidates.pop(0))

    def _evict(self, keep: int) -> None:
        """Keep the `keep` most recently used versions (and the held one)."""
        versions = self.versions()
        excess = len(versions) - keep
        for sha in versions:
            if excess <= 0:
                break
            if sha != self._held:
                self._remove(self.path(sha))
                excess -= 1

    def _remove(self, path: Path) -> None:
        log.info("policy cache: removing %s", path.name)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

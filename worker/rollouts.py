"""Serving GRPO rollouts: find the RL policy versions with work, fetch them ahead, run each batch
with the version its jobs name.

A policy version is served under the model name `flywheel-artifact/<sha256>`, so a worker can ask
for its jobs only once it knows the name. `PolicyWatcher` asks the coordinator every
`policy_poll_s` which versions have rollout jobs waiting (`GET /v1/pipeline/policies`), downloads
those built on this worker's base model into the policy cache on its own thread (the engine keeps
generating meanwhile), and from then on names them in lease requests. `PolicyEngine` wraps the
loaded engine: it runs each batch's jobs with the model they name, swapping the weights in place
where the engine can (transformers) and loading the engine again where it cannot (vLLM).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.assets import resolve_model
from shared.protocol import ARTIFACT_MODEL_PREFIX, JobSpec
from worker.background import Background
from worker.client import CoordinatorClient
from worker.config import WorkerConfig
from worker.engines import Engine, Generation, ShouldStop, SwapsWeights, load_engine
from worker.errors import CoordinatorError, PolicyError, RejectedError, WorkerError
from worker.policy import WEIGHTS, PolicyCache, Weights, artifact_sha

log = logging.getLogger("flywheel.worker.rollouts")
MAX_MODELS = 64  # names in one lease request (LeaseRequest.models)
Loader = Callable[[str, str], Engine]  # (model name, directory or name to load it from) -> engine


class PolicyWatcher(Background):
    """Which policy versions this worker can serve now: those with rollout jobs waiting that are
    built on its base model and are downloaded."""

    def __init__(
        self, client: CoordinatorClient, cache: PolicyCache, home: str, base: str, poll_s: float
    ) -> None:
        super().__init__("flywheel-policies")  # a download cut by close() resumes at the next start
        self.client, self.cache = client, cache
        self.home = home  # the model this worker always serves (--model)
        self.base = base  # the base model policy versions must be built on to run here
        self.poll_s = poll_s
        self._ready: list[str] = []
        self._lock = threading.Lock()

    def models(self) -> list[str]:
        """The names to ask jobs for: the worker's own model, then the ready versions, newest first."""
        with self._lock:
            return [self.home, *self._ready][:MAX_MODELS]

    def _run(self) -> None:
        while not self._closed.is_set():
            self.refresh()
            self._closed.wait(self.poll_s)

    def refresh(self) -> None:
        """One look: list the versions with work, download the newest few, publish the ready ones."""
        try:
            offered = self.client.policies(self.base).policies
        except RejectedError as exc:
            # 404: a coordinator without the route; only --model is served then.
            log.log(
                logging.DEBUG if exc.status_code == 404 else logging.WARNING, "no policy versions: %s", exc
            )
            return
        except WorkerError as exc:
            log.warning("cannot list policy versions: %s", exc)
            return
        ready = []
        for ref in [r for r in offered if r.base_model == self.base][: self.cache.keep]:
            if self._closed.is_set():
                return
            try:
                self.cache.ensure(Weights.of(ref))
            except (WorkerError, OSError) as exc:  # this version is skipped; the thread goes on
                log.warning("policy v%d (%s) cannot be served: %s", ref.version, ref.sha256[:12], exc)
                continue
            ready.append(ref.model_name)
        with self._lock:
            if ready != self._ready:
                shas = [n.removeprefix(ARTIFACT_MODEL_PREFIX)[:12] for n in ready]
                log.info("serving policy versions: %s", ", ".join(shas) or "none")
            self._ready = ready


class PolicyEngine:
    """The engine for the worker's own model and for the policy versions built on its base: each
    batch runs with the model its jobs name, switching the loaded engine when that differs."""

    def __init__(
        self, engine: Engine, cache: PolicyCache, home: str, home_path: str, base: str, loader: Loader
    ) -> None:
        self.cache, self.loader = cache, loader
        self.home, self.home_path, self.base = home, home_path, base
        self.model_name = home
        self._engine = engine
        self._sync()

    def _sync(self) -> None:
        self.info = self._engine.info
        self.verifiable = self._engine.verifiable
        self.default_batch = self._engine.default_batch

    @property
    def running(self) -> str:
        """The model the loaded engine runs now."""
        return self._engine.model_name

    def close(self) -> None:
        self._engine.close()

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        return self._engine.max_batch(jobs)  # every version shares the base's architecture

    def unsupported(self, job: JobSpec) -> str | None:
        """Why a job cannot run here; a policy version it names is downloaded now (the prefetcher's
        thread), so the batch that runs it finds it on disk."""
        if job.model.name != self.home:
            try:
                self.cache.ensure(self._weights(job))
            except WorkerError as exc:
                return exc.message
            except OSError as exc:
                return f"cannot store {job.model.name}: {exc}"
        return self._engine.unsupported(job)

    def _weights(self, job: JobSpec) -> Weights:
        sha = artifact_sha(job.model.name)
        if sha is None:
            raise PolicyError(f"model {job.model.name!r} is neither {self.home!r} nor a policy version")
        policy = job.policy
        weights = Weights.of(policy) if policy is not None and policy.sha256 == sha else None
        weights = weights or self.cache.weights_for(job.model.name)
        if weights.base_model != self.base:
            built_on = f"{job.model.name} is built on {weights.base_model!r}"
            raise PolicyError(f"{built_on}; this worker runs {self.base!r}")
        return weights

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        """The jobs of each model in turn (the loaded one first); [] when stopped or when a model
        cannot be loaded (the daemon then gives the batch back)."""
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.model.name, []).append(i)
        out: dict[int, Generation] = {}
        for name in sorted(groups, key=lambda n: n != self.running):
            indices = groups[name]
            try:
                self._switch(name, jobs[indices[0]])
            except (PolicyError, CoordinatorError, OSError) as exc:
                log.error("cannot run %s: %s", name, exc)
                return []
            done = self._engine.generate([jobs[i] for i in indices], should_stop)
            if len(done) < len(indices):
                return []
            out.update(zip(indices, done, strict=True))
        return [out[i] for i in range(len(jobs))]

    def _switch(self, name: str, job: JobSpec) -> None:
        if name == self.running:
            return
        if name == self.home:
            source, sha = self.home_path, artifact_sha(self.home)
        else:
            weights = self._weights(job)
            source, sha = str(self.cache.ensure(weights, hold=True)), weights.sha256
        weights_file = Path(source) / WEIGHTS  # one file of full weights: swappable in place
        if isinstance(self._engine, SwapsWeights) and weights_file.is_file():
            self._engine.swap_weights(name, weights_file)
        else:
            log.info("loading %s", name)
            self._engine.close()
            self._engine = self.loader(name, source)
            self._sync()
        self.cache.hold(sha)


def start_serving(
    config: WorkerConfig, client: CoordinatorClient, stop: threading.Event
) -> tuple[Engine, PolicyWatcher | None]:
    """The engine for `config.model` (downloaded first when it is a pipeline artifact) and, with
    `serve_policies`, the wrapper and watcher that serve policy versions too."""
    home_sha = artifact_sha(config.model)
    if config.engine == "openai" or (home_sha is None and not config.serve_policies):
        return load_engine(config), None
    cache = PolicyCache(
        config.policy_cache_dir,
        client,
        keep=config.policy_cache_versions,
        max_bytes=config.policy_cache_bytes,
        stop=stop,
    )
    home_path, base = resolve_model(config.model), config.model
    if home_sha is not None:
        weights = cache.weights_for(config.model)
        home_path, base = str(cache.ensure(weights, hold=True)), weights.base_model
    engine = load_engine(config, path=home_path)
    if not config.serve_policies:
        return engine, None
    loader: Loader = lambda name, path: load_engine(config, name=name, path=path)  # noqa: E731
    served = PolicyEngine(engine, cache, config.model, home_path, base, loader)
    return served, PolicyWatcher(client, cache, config.model, base, config.policy_poll_s)

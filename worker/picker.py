"""A worker started without --model picks its own work: it asks the coordinator which models have
jobs waiting (`GET /v1/models/waiting`), sizes each (the coordinator's estimate, else the config
here), finds where each is (here, or on a reachable hub), and lets `worker.choice.choose` decide
against its memory. It serves the choice until that campaign drains, then asks again and switches:
the daemon gives its engine back and loads the next model (`serve_chosen`); the spool and the leases
go from one model's run to the next by the same rules as a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.model_size import DTYPE_BYTES, has_weights, local_config, local_size
from shared.protocol import HardwareInfo, WaitingModel
from worker.choice import GIB, Budget, Choice, Presence, choose
from worker.client import CoordinatorClient
from worker.config import WorkerConfig
from worker.errors import EngineError, PolicyError, RejectedError, TransientError
from worker.state import write_status

log = logging.getLogger("flywheel.worker")
HUB_TIMEOUT_S = 3.0  # a reachable hub answers a HEAD well within this
HUB_RECHECK_S = 600.0
DEFAULT_HUB = "https://huggingface.co"


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) answers at all; False offline (HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        httpx.head(os.environ.get("HF_ENDPOINT") or DEFAULT_HUB, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True  # any answer, even an error status, says the hub is there


def available_ram() -> int:
    """Bytes of memory the OS could give a new process now (MemAvailable), else the total."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def on_gpu(config: WorkerConfig, hardware: HardwareInfo) -> bool:
    return config.device != "cpu" and bool(hardware.gpu_memory_gb)


def engine_dtype(config: WorkerConfig, gpu: bool) -> str:
    """The dtype the engine will run (`auto` as ml/devices.py reads it)."""
    if config.dtype != "auto":
        return config.dtype
    return "bfloat16" if gpu else "float32"


def memory_budget(config: WorkerConfig, hardware: HardwareInfo, ram: int | None = None) -> Budget:
    """What a model may take: the first GPU this worker uses (its --gpu-memory-fraction share), or
    the free RAM of a CPU worker."""
    gpu = on_gpu(config, hardware)
    per_parameter = DTYPE_BYTES[engine_dtype(config, gpu)]
    if not gpu:
        return Budget(available_ram() if ram is None else ram, "free RAM", per_parameter)
    sizes = hardware.gpu_memory_gb
    index = config.gpu_indices[0] if config.gpu_indices and config.gpu_indices[0] < len(sizes) else 0
    share = config.gpu_memory_fraction
    if share is None and config.engine == "vllm":
        share = config.vllm_gpu_memory_utilization
    name = hardware.gpus[index] if index < len(hardware.gpus) else "GPU"
    return Budget(int(sizes[index] * GIB * (share or 1.0)), f"GPU {index} ({name})", per_parameter)


def is_hub_id(name: str) -> bool:
    """`owner/name` as the hub spells repositories, and not a folder on this machine."""
    owner, _, repo = name.partition("/")
    return bool(owner and repo) and "/" not in repo and not name.startswith(".") and not Path(name).exists()


def presence(model: WaitingModel, hub: Callable[[], bool]) -> Presence:
    """Where a model is. A policy version's weights come from the coordinator; the model it is built
    on (config and tokenizer) must be here or on the hub."""
    if model.base_model is not None:
        name, here = model.base_model, local_config(model.base_model) is not None
    else:
        name, here = model.name, has_weights(model.name, model.revision)
    if here:
        return Presence.LOCAL
    return Presence.DOWNLOADABLE if is_hub_id(name) and hub() else Presence.MISSING


def sized(model: WaitingModel) -> WaitingModel:
    """The model with the parameter count of its config here when the coordinator had none."""
    if model.parameters is not None:
        return model
    base = model.base_model
    local = local_size(base or model.name, None if base else model.revision)
    if local is None:
        return model
    size_bytes = model.size_bytes if model.size_bytes is not None else local.size_bytes
    return model.model_copy(update={"parameters": local.parameters, "size_bytes": size_bytes})


class ModelPicker:
    """One look at the coordinator's waiting models, judged for this machine."""

    def __init__(self, client: CoordinatorClient, config: WorkerConfig, hardware: HardwareInfo) -> None:
        self.client = client
        self.default = config.model
        self.dtype = engine_dtype(config, on_gpu(config, hardware))
        self.budget = memory_budget(config, hardware)  # measured before any model takes memory
        self.refused: dict[str, str] = {}  # models that failed to load here, with the error
        self._hub: tuple[float, bool] | None = None

    def hub(self) -> bool:
        """Whether the hub is reachable, asked at most every HUB_RECHECK_S and only when needed."""
        now = time.monotonic()
        if self._hub is None or now - self._hub[0] > HUB_RECHECK_S:
            self._hub = (now, hub_reachable())
        return self._hub[1]

    def pick(self, current: str | None = None) -> Choice:
        try:
            waiting = self.client.waiting_models(self.dtype).models
        except RejectedError as exc:  # a coordinator that predates the route: serve as before
            if self.default in self.refused:
                return Choice(None, f"the default model failed to load: {self.refused[self.default]}")
            why = f"the coordinator does not list waiting models ({exc.message}); serving the default model"
            return Choice(self.default, why)
        except TransientError as exc:
            return Choice(None, f"cannot ask the coordinator which models have jobs waiting: {exc.message}")
        models = [sized(m) for m in waiting]
        where = {m.name: presence(m, self.hub) for m in models}
        return choose(models, where, self.budget, current, self.refused)


class Chooser:
    """The daemon's side of picking: the first choice, and, while the worker idles, whether to
    switch (asked at most once per `poll_s`)."""

    def __init__(self, picker: ModelPicker, poll_s: float) -> None:
        self.picker, self.poll_s = picker, poll_s
        self.choice = Choice(None, "not chosen yet")
        self.next: Choice | None = None  # set when the worker should stop and serve this
        self._asked = 0.0

    def switch(self, current: str) -> bool:
        """True when another model than `current` should be served now (kept in `next`)."""
        now = time.monotonic()
        if now - self._asked < self.poll_s:
            return False
        self._asked = now
        choice = self.picker.pick(current)
        if choice.model is None or choice.model == current:
            return False
        log.info("%s has no jobs left here; switching to %s: %s", current, choice.model, choice.reason)
        self.next = choice
        return True

    def first(
        self, stop: threading.Event, idle_limit_s: float | None, show: Callable[[Choice], None]
    ) -> Choice | None:
        """Ask until a model is chosen; None when stopped or past `idle_limit_s` without one."""
        started, said = time.monotonic(), ""
        while not stop.is_set():
            self.choice = self.picker.pick()
            show(self.choice)
            if self.choice.model is not None:
                return self.choice
            if self.choice.reason != said:
                said = self.choice.reason
                log.info(
                    "no model to serve yet: %s%s", said, "".join(f"\n  {s}" for s in self.choice.skipped)
                )
            if idle_limit_s is not None and time.monotonic() - started >= idle_limit_s:
                return None
            stop.wait(self.poll_s)
        return None


def fixed_choice(config: WorkerConfig) -> Choice:
    """The status of a worker that serves one model, as today."""
    if config.choose_model:
        why = f"the {config.engine} engine serves the model its server runs: {config.model}"
    else:
        why = "named by --model (or the environment, or the config file)"
    return Choice(config.model, why, mode="fixed")


def serves_chosen(config: WorkerConfig) -> bool:
    """Whether this worker picks its own model: no --model, and an engine that loads weights."""
    return config.choose_model and config.engine != "openai"


def choosing_status(config: WorkerConfig, choice: Choice) -> None:
    """daemon.json while no model is loaded, for `flywheel worker status`."""
    snapshot = {"pid": os.getpid(), "name": config.name, "coordinator": config.coordinator, "model": None,
                "engine": config.engine, "device": config.device, "updated": time.time(),
                "status": "choosing a model", "choice": choice.status()}  # fmt: skip
    with contextlib.suppress(OSError):
        config.state_path.mkdir(parents=True, exist_ok=True)
        write_status(config.state_path, snapshot)


def serve_chosen(
    chooser: Chooser, config: WorkerConfig, stop: threading.Event, serve: Callable[[WorkerConfig], int]
) -> int:
    """Serve the chosen model with `serve` (one daemon run, engine loaded and released); when it
    ends because the campaign drained, serve the next choice. A model that fails to load is passed
    over from then on."""
    show: Callable[[Choice], None] = lambda choice: choosing_status(config, choice)  # noqa: E731
    choice = chooser.first(stop, config.exit_when_idle, show)
    code = 0
    while choice is not None and choice.model is not None and not stop.is_set():
        chooser.choice, chooser.next = choice, None
        log.info("serving %s: %s", choice.model, choice.reason)
        try:
            code = serve(config.model_copy(update={"model": choice.model}))
        except (EngineError, PolicyError) as exc:
            chooser.picker.refused[choice.model] = exc.message
            log.error("%s: %s; choosing another model", choice.model, exc.message)
            choice = chooser.first(stop, config.exit_when_idle, show)
            continue
        choice = chooser.next
    return code

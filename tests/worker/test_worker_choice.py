"""Picking a model without --model: the pure rule (worker/choice.py), and what feeds it from this
machine (worker/picker.py: presence, sizes, the memory budget) and from the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_fakes import FakeCoordinator

from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from shared.model_size import config_parameters, read_config
from shared.protocol import HardwareInfo, WaitingModel
from worker.choice import GIB, Budget, Presence, choose
from worker.client import CoordinatorClient
from worker.config import RetryPolicy, load_config
from worker.picker import ModelPicker, fixed_choice, memory_budget, presence, serves_chosen, sized

BILLION = 10**9
RAM_16 = Budget(16 * GIB, "free RAM", 2)  # bfloat16: 2 bytes a parameter


def waiting(name: str, jobs: int = 10, parameters: int | None = BILLION, **extra: object) -> WaitingModel:
    return WaitingModel.model_validate({"name": name, "queued_jobs": jobs, "parameters": parameters, **extra})


def test_most_jobs_wins_among_local_models_that_fit() -> None:
    models = [waiting("a/small", 5), waiting("a/busy", 50), waiting("a/huge", 500, parameters=70 * BILLION)]
    here = dict.fromkeys(("a/small", "a/busy", "a/huge"), Presence.LOCAL)
    choice = choose(models, here, RAM_16)
    assert choice.model == "a/busy" and choice.mode == "auto"
    assert "50 jobs waiting" in choice.reason and "present here" in choice.reason
    assert "of the 16.0 GiB of free RAM" in choice.reason
    # 70e9 parameters x 2 bytes x overhead does not fit in 16 GiB: said with the need
    assert any(s.startswith("a/huge: needs ~") and "16.0 GiB of free RAM" in s for s in choice.skipped)
    assert any(s.startswith("a/small: 5 jobs waiting, ranked lower") for s in choice.skipped)


def test_a_model_here_beats_one_to_download_and_missing_ones_are_passed_over() -> None:
    models = [waiting("hub/many", 100), waiting("hub/gone", 1000), waiting("disk/few", 2)]
    where = {"hub/many": Presence.DOWNLOADABLE, "hub/gone": Presence.MISSING, "disk/few": Presence.LOCAL}
    assert choose(models, where, RAM_16).model == "disk/few"
    assert choose(models[:2], where, RAM_16).model == "hub/many"
    none = choose(models[1:2], where, RAM_16)
    assert none.model is None and none.skipped == ("hub/gone: not here, and the hub is not reachable",)
    # a name the caller did not locate counts as missing
    assert choose([waiting("x/y")], {}, RAM_16).model is None


def test_the_loaded_model_is_kept_over_a_busier_one_while_it_has_jobs() -> None:
    models = [waiting("a/loaded", 3), waiting("a/busier", 30)]
    here = dict.fromkeys(("a/loaded", "a/busier"), Presence.LOCAL)
    kept = choose(models, here, RAM_16, current="a/loaded")
    assert kept.model == "a/loaded" and kept.reason.endswith("already loaded")
    drained = choose([waiting("a/loaded", 0), models[1]], here, RAM_16, current="a/loaded")
    assert drained.model == "a/busier"
    assert "a/loaded: no jobs waiting" in drained.skipped


def test_unknown_sizes_refused_loads_and_unnamed_artifact_bases_are_passed_over() -> None:
    sha = "ab" * 32
    models = [
        waiting("a/unsized", 9, parameters=None),
        waiting("a/broken", 8),
        waiting(f"flywheel-artifact/{sha}", 7, parameters=None, size_bytes=GIB),
    ]
    here = {m.name: Presence.LOCAL for m in models}
    choice = choose(models, here, RAM_16, refused={"a/broken": "CUDA out of memory"})
    assert choice.model is None and choice.reason == "no model with jobs waiting fits this worker"
    assert set(choice.skipped) == {
        "a/unsized: its size is unknown (the coordinator and this machine lack its config)",
        "a/broken: failed to load here: CUDA out of memory",
        f"flywheel-artifact/{sha}: a pipeline artifact whose base model the coordinator does not name",
    }
    # a policy version whose base is named is sized by its weights file when no config says more
    version = waiting(f"flywheel-artifact/{sha}", 7, parameters=None, size_bytes=GIB, base_model="a/base")
    assert choose([version], here, RAM_16).model == version.name


def test_revisions_of_one_model_are_one_choice_with_their_jobs_summed() -> None:
    models = [waiting("a/m", 4, revision="r1"), waiting("a/m", 5, revision="r2"), waiting("a/n", 8)]
    here = dict.fromkeys(("a/m", "a/n"), Presence.LOCAL)
    choice = choose(models, here, RAM_16)
    assert choice.model == "a/m" and choice.reason.startswith("9 jobs waiting")


def test_nothing_waiting() -> None:
    choice = choose([], {}, RAM_16)
    assert choice.model is None and choice.reason == "no model has jobs waiting" and choice.skipped == ()


def test_the_tiny_models_size_is_estimated_from_its_config() -> None:
    config = read_config(tiny_model_dir() / "config.json")
    assert config is not None
    parameters = config_parameters(config)
    on_disk = (tiny_model_dir() / "model.safetensors").stat().st_size
    assert parameters is not None and 0.97 < parameters * 4 / on_disk <= 1.0  # float32 weights
    filled = sized(waiting(TINY_MODEL_NAME, parameters=None))
    assert filled.parameters == parameters and filled.size_bytes == on_disk


def test_presence_here_on_the_hub_or_missing(tmp_path: Path) -> None:
    assert presence(waiting(TINY_MODEL_NAME), hub=lambda: False) is Presence.LOCAL
    asked: list[bool] = []

    def hub() -> bool:
        asked.append(True)
        return True

    assert presence(waiting("acme/not-cached-here"), hub) is Presence.DOWNLOADABLE
    assert presence(waiting("acme/not-cached-here"), hub=lambda: False) is Presence.MISSING
    # a folder path is never on the hub; the hub is not even asked about it
    asked.clear()
    assert presence(waiting(str(tmp_path / "no-model")), hub) is Presence.MISSING and asked == []
    # a policy version is runnable where the model it is built on is here
    sha = "cd" * 32
    built_on_tiny = waiting(f"flywheel-artifact/{sha}", base_model=TINY_MODEL_NAME)
    assert presence(built_on_tiny, hub=lambda: False) is Presence.LOCAL


@pytest.mark.parametrize(
    ("flags", "hardware", "expected"),
    [
        ({"device": "cpu"}, HardwareInfo(gpus=["G"], gpu_memory_gb=[80.0]), (3 * GIB, "free RAM", 4)),
        ({}, HardwareInfo(), (3 * GIB, "free RAM", 4)),
        ({"dtype": "bfloat16"}, HardwareInfo(), (3 * GIB, "free RAM", 2)),
        ({}, HardwareInfo(gpus=["A", "B"], gpu_memory_gb=[24.0, 80.0]), (24 * GIB, "GPU 0 (A)", 2)),
        (
            {"gpus": "1", "gpu_memory_fraction": 0.5},
            HardwareInfo(gpus=["A", "B"], gpu_memory_gb=[24.0, 80.0]),
            (40 * GIB, "GPU 1 (B)", 2),
        ),
        (
            {"engine": "vllm"},
            HardwareInfo(gpus=["A"], gpu_memory_gb=[10.0]),
            (int(8.5 * GIB), "GPU 0 (A)", 2),
        ),
    ],
)
def test_memory_budget(
    flags: dict[str, object], hardware: HardwareInfo, expected: tuple[int, str, int]
) -> None:
    config = load_config({"coordinator": "http://c", **flags}, environ={})
    budget = memory_budget(config, hardware, ram=3 * GIB)
    assert (budget.memory_bytes, budget.where, budget.bytes_per_parameter) == expected


def test_only_a_worker_without_a_model_picks_one() -> None:
    picks = load_config({"coordinator": "http://c"}, environ={})
    assert picks.choose_model and serves_chosen(picks) and picks.model == TINY_MODEL_NAME
    named = load_config({"coordinator": "http://c", "model": TINY_MODEL_NAME}, environ={})
    assert not named.choose_model and not serves_chosen(named)
    assert fixed_choice(named).mode == "fixed" and "--model" in fixed_choice(named).reason
    from_env = load_config({"coordinator": "http://c"}, environ={"FLYWHEEL_WORKER_MODEL": "a/b"})
    assert not from_env.choose_model and from_env.model == "a/b"
    served = {"coordinator": "http://c", "engine": "openai", "openai_base_url": "http://llm:8000/v1"}
    openai = load_config(served, environ={})
    assert openai.choose_model and not serves_chosen(openai)  # its server decides the model


def test_a_coordinator_without_the_route_gets_the_default_model(coordinator: FakeCoordinator) -> None:
    config = load_config({"coordinator": coordinator.url}, environ={})
    with CoordinatorClient(coordinator.url, "t", retry=RetryPolicy(attempts=1)) as client:
        picker = ModelPicker(client, config, HardwareInfo())
        choice = picker.pick()
        assert choice.model == TINY_MODEL_NAME and "does not list waiting models" in choice.reason
        picker.refused[TINY_MODEL_NAME] = "cannot load"  # then nothing is left to serve
        assert picker.pick().model is None

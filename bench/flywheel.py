"""The flywheel turning on the bundled tiny model, end to end through a real coordinator.

    python bench/flywheel.py run --teacher .flywheel/bench/teacher

measures held-out accuracy of (a) the base tiny model, (b) the tiny model after SFT on a stronger
teacher's verified traces (selected with and without the student-loss filter), and (c) after GRPO
whose rollouts real worker daemons produce through the coordinator. Every generation (teacher
traces, evaluations, rollouts) is done by `flywheel worker run` processes leasing jobs over HTTP;
the coordinator verifies, selects, trains and evaluates through its pipeline API.

The teacher is a larger model built the same way as the tiny one, on a GPU, then moved here in
bf16 pieces (each under the device tool's file limit):

    python scripts/build_tiny_model.py --size teacher --hidden 384 --layers 6 --heads 6 --kv-heads 2 \
        --intermediate 1024 --seed 0 --device cuda --steps 3000 --lr 0.001 --eval-every 500 \
        --max-minutes 5 --eval-problems 1000 --eval-batch 500 --out /tmp/teacher
    python bench/flywheel.py pack /tmp/teacher OUT             # on the GPU machine
    python bench/flywheel.py unpack OUT .flywheel/bench/teacher   # here
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, bench/ is not a package on the path
    sys.path.insert(0, str(ROOT))

from bench.net import free_port  # noqa: E402

TINY = "flywheel/tiny-arith"
PART_BYTES = 15 * 1024 * 1024
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "TRAINING.md",
)


# --------------------------------------------------------------------------- moving the teacher


def pack(model_dir: Path, out: Path) -> None:
    """bf16 weights in parts under PART_BYTES, plus one JSON bundle of the small files."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(model_dir / "model.safetensors"))
    part: dict[str, torch.Tensor] = {}
    size, index = 0, 0
    for name in sorted(tensors):
        tensor = tensors[name].to(torch.bfloat16).contiguous()
        if part and size + tensor.numel() * 2 > PART_BYTES:
            save_file(part, str(out / f"teacher-part{index}.safetensors"))
            part, size, index = {}, 0, index + 1
        part[name], size = tensor, size + tensor.numel() * 2
    save_file(part, str(out / f"teacher-part{index}.safetensors"))
    bundle = {n: (model_dir / n).read_text() for n in SMALL_FILES if (model_dir / n).is_file()}
    (out / "teacher-files.json").write_text(json.dumps(bundle))


def unpack(packed: Path, model_dir: Path) -> None:
    """The teacher as a model folder again (weights back in float32)."""
    import torch
    from safetensors.torch import load_file, save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    for name, text in json.loads((packed / "teacher-files.json").read_text()).items():
        (model_dir / name).write_text(text)
    tensors: dict[str, torch.Tensor] = {}
    for part in sorted(packed.glob("teacher-part*.safetensors")):
        tensors.update({k: v.to(torch.float32) for k, v in load_file(str(part)).items()})
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------- the coordinator and workers


def serve(port: int) -> None:
    """The coordinator API with the pipeline routes (from the environment, like `coordinator serve`)."""
    import uvicorn

    from coordinator.app import create_app
    from coordinator.pipeline.endpoints import router
    from shared.protocol import API_PREFIX

    app = create_app()
    if API_PREFIX + "/pipeline/jobs" not in {getattr(r, "path", "") for r in app.routes}:
        app.include_router(router, prefix=API_PREFIX)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Cluster:
    """A coordinator process, its operator token, and the worker daemons of the moment."""

    work: Path
    port: int = field(default_factory=free_port)
    token: str = ""
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.work / 'flywheel.db'}",
            "FLYWHEEL_DATA_DIR": str(self.work / "data"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("REDIS_URL", None)
        return env

    def _spawn(self, args: list[str], log: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = (self.work / log).open("ab")
        return subprocess.Popen(
            [sys.executable, *args], env=self.env, cwd=cwd or ROOT, stdout=out, stderr=subprocess.STDOUT
        )

    def start(self) -> None:
        self.work = self.work.resolve()  # workers run in models/: every path they get must be absolute
        (self.work / "models").mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "flywheel",
                "coordinator",
                "create-token",
                "--name",
                "bench",
                "--scope",
                "operator",
            ],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        self.token = json.loads(made.stdout.strip().splitlines()[-1])["token"]
        # In models/, like the workers: validation (re-scoring) loads `flywheel-artifact/<sha256>` models
        # by name, and finds the folders `fetch_model` lays out there.
        self.server = self._spawn(
            [str(Path(__file__).resolve()), "serve", "--port", str(self.port)],
            "server.log",
            self.work / "models",
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError("the coordinator did not start; see server.log")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        response = httpx.request(method, f"{self.url}/v1{path}", json=body, headers=headers, timeout=120)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def start_workers(self, model: str, count: int, batch: int) -> None:
        for i in range(count):
            name = f"w{len(self.workers)}-{i}"
            body = {"name": name, "engine": {"name": "transformers"}, "models": [model]}
            token = httpx.post(f"{self.url}/v1/workers/register", json=body, timeout=30).json()["token"]
            args = [
                "-m",
                "flywheel",
                "worker",
                "run",
                "--coordinator",
                self.url,
                "--token",
                token,
                "--engine",
                "transformers",
                "--model",
                model,
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--batch-size",
                str(batch),
                "--max-jobs",
                str(2 * batch),
                "--progress",
                "none",
                "--poll-interval",
                "0.5",
                "--spool",
                str(self.work / "spool" / name),
                # each daemon's own state (pause, daily count): never this machine's other workers'
                "--name",
                name,
                "--state-dir",
                str(self.work / "state" / name),
            ]
            self.workers.append(self._spawn(args, "workers.log", cwd=self.work / "models"))

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=60)

    def fetch_model(self, sha256: str) -> str:
        """Download a weights artifact the way a worker must (Range resume, sha256 check) and lay it
        out as `models/flywheel-artifact/<sha256>/`, the name the jobs carry."""
        from shared.assets import file_sha256, resolve_model

        info = self.call("GET", f"/pipeline/artifacts/{sha256}/info")
        folder = self.work / "models" / "flywheel-artifact" / sha256
        weights = folder / "model.safetensors"
        if not (weights.is_file() and file_sha256(weights) == sha256):
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / "model.partial"
            self._download(sha256, partial)
            if file_sha256(partial) != sha256:
                partial.unlink()
                raise RuntimeError(f"download of {sha256} does not hash to its name")
            partial.rename(weights)
        base = Path(resolve_model(info["metadata"]["base_model"]))
        for name in SMALL_FILES:
            if (base / name).is_file() and name != "TRAINING.md":
                shutil.copyfile(base / name, folder / name)
        return f"flywheel-artifact/{sha256}"

    def _download(self, sha256: str, partial: Path) -> None:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Authorization": f"Bearer {self.token}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with httpx.stream(
            "GET", f"{self.url}/v1/pipeline/artifacts/{sha256}", headers=headers, timeout=120
        ) as r:
            r.raise_for_status()
            mode = "ab" if r.status_code == 206 else "wb"  # 200: the server sent the whole file
            with partial.open(mode) as out:
                for chunk in r.iter_bytes():
                    out.write(chunk)


# --------------------------------------------------------------------------- the stages


@dataclass
class BenchConfig:
    work: Path
    teacher: Path
    seed: int = 0
    eval_problems: int = 500
    eval_samples: int = 4
    teacher_problems: int = 2048
    sft_steps: int = 300
    sft_lr: float = 5e-4
    sft_batch: int = 32
    keep_fraction: float = 0.5
    rl_problems: int = 2000
    rl_steps: int = 12
    rl_lr: float = 5e-5
    rl_updates: int = 1  # optimiser steps per policy version (minibatches of the version's groups)
    group_size: int = 8
    groups_per_step: int = 16
    workers: int = 2
    batch: int = 64
    grpo_from: str = ""  # set: skip (a) and (b), run GRPO from this model and evaluate the result


@dataclass
class Row:
    stage: str
    model: str
    greedy: float
    sampled: dict[str, float]
    made_in_s: float
    eval_s: float
    how: str


def wait_job(cluster: Cluster, job_id: str, status: set[str], poll: float = 2.0) -> dict[str, Any]:
    while True:
        body: dict[str, Any] = cluster.call("GET", f"/pipeline/jobs/{job_id}")
        if body["status"] in status:
            return body
        if body["status"] in {"failed", "cancelled"}:
            raise RuntimeError(f"job {job_id} {body['status']}: {body['error']}")
        time.sleep(poll)


def run_job(cluster: Cluster, spec: dict[str, Any], name: str) -> dict[str, Any]:
    job = cluster.call("POST", "/pipeline/jobs", {"name": name, "spec": spec})
    log(f"{name}: job {job['id']}")
    return wait_job(cluster, job["id"], {"done"})


def served(cluster: Cluster, spec: dict[str, Any], name: str, model: str, cfg: BenchConfig) -> dict[str, Any]:
    """A job whose samples volunteers make: start workers for `model` once it waits, stop them after."""
    job = cluster.call("POST", "/pipeline/jobs", {"name": name, "spec": spec})
    wait_job(cluster, job["id"], {"waiting", "done"})
    cluster.start_workers(model, cfg.workers, cfg.batch)
    try:
        done = wait_job(cluster, job["id"], {"done"})
    finally:
        cluster.stop_workers()
    log(f"{name}: {done['stage']}, metrics {json.dumps(done['metrics'])[:300]}")
    return done


def evaluate(
    cluster: Cluster, cfg: BenchConfig, sets: dict[str, str], model: str, label: str
) -> tuple[float, dict[str, float], float]:
    """(greedy accuracy, sampled strategies, seconds) of `model` on the held-out set."""
    started = time.monotonic()
    spec = {
        "kind": "evaluate",
        "model": model,
        "problem_set_id": sets["eval"],
        "poll_s": 2.0,
        "seed": cfg.seed,
        "sampling": {"temperature": 0.0, "max_tokens": 192},
    }
    greedy = served(cluster, spec, f"eval-{label}-greedy", model, cfg)
    spec = {
        **spec,
        "samples_per_problem": cfg.eval_samples,
        "sampling": {"temperature": 1.0, "max_tokens": 192},
    }
    sampled = served(cluster, spec, f"eval-{label}-sampled", model, cfg)
    strategies = {k: v["accuracy"] for k, v in sampled["metrics"]["strategies"].items()}
    return greedy["metrics"]["accuracy"], strategies, time.monotonic() - started


def problem_sets(cluster: Cluster, cfg: BenchConfig) -> dict[str, str]:
    plan = {
        "eval": ("test", 0, cfg.eval_problems),
        "teacher": ("train", cfg.seed + 1, cfg.teacher_problems),
        "rl": ("train", cfg.seed + 2, cfg.rl_problems),
    }
    out = {}
    for name, (split, seed, size) in plan.items():
        body = {"name": f"bench-{name}", "source": "arithmetic", "split": split, "seed": seed, "limit": size}
        out[name] = cluster.call("POST", "/problem-sets", body)["id"]
    return out


def teacher_traces(cluster: Cluster, cfg: BenchConfig, sets: dict[str, str]) -> str:
    model = str(cfg.teacher.resolve())
    body = {
        "name": "bench-teacher-traces",
        "problem_set_id": sets["teacher"],
        "model": {"name": model},
        "samples_per_problem": 1,
        "seed": cfg.seed,
        "sampling": {"temperature": 1.0, "max_tokens": 192},
    }
    campaign = cluster.call("POST", "/campaigns", body)
    cluster.start_workers(model, cfg.workers, cfg.batch)
    try:
        while (c := cluster.call("GET", f"/campaigns/{campaign['id']}"))["status"] != "done":
            time.sleep(2)
    finally:
        cluster.stop_workers()
    log(f"teacher traces: {c['progress']}")
    campaign_id: str = campaign["id"]
    return campaign_id


def distill(cluster: Cluster, cfg: BenchConfig, campaign_id: str, with_filter: bool) -> str:
    steps: list[dict[str, Any]] = [{"op": "length_prune", "trim_after_answer": True}]
    if with_filter:
        steps.append(
            {"op": "student_loss", "model": TINY, "keep_fraction": cfg.keep_fraction, "device": "cpu"}
        )
    label = "filtered" if with_filter else "plain"
    selected = run_job(
        cluster, {"kind": "select", "campaign_ids": [campaign_id], "steps": steps}, f"select-{label}"
    )
    log(f"select-{label}: kept {selected['metrics']['kept']} of {selected['metrics']['considered']}")
    spec = {
        "kind": "sft",
        "dataset": selected["outputs"]["dataset"]["sha256"],
        "model": TINY,
        "method": "full",
        "max_steps": cfg.sft_steps,
        "batch_size": cfg.sft_batch,
        "lr": cfg.sft_lr,
        "warmup_steps": 10,
        "eval_fraction": 0.05,
        "eval_every": 50,
        "seed": cfg.seed,
        "device": "cpu",
    }
    trained = run_job(cluster, spec, f"sft-{label}")
    log(f"sft-{label}: {json.dumps(trained['metrics'])}")
    return cluster.fetch_model(trained["outputs"]["checkpoint"]["sha256"])


def grpo(cluster: Cluster, cfg: BenchConfig, sets: dict[str, str], start: str) -> tuple[str, dict[str, Any]]:
    spec = {
        "kind": "grpo",
        "model": start,
        "problem_set_id": sets["rl"],
        "steps": cfg.rl_steps,
        "group_size": cfg.group_size,
        "groups_per_step": cfg.groups_per_step,
        "lr": cfg.rl_lr,
        "updates_per_version": cfg.rl_updates,
        "max_staleness": 1,
        "micro_batch": 32,
        "seed": cfg.seed,
        "device": "cpu",
        "poll_s": 1.0,
        "sampling": {"temperature": 1.0, "max_tokens": 192},
    }
    job = cluster.call("POST", "/pipeline/jobs", {"name": "grpo", "spec": spec})
    serving = -1
    while (body := cluster.call("GET", f"/pipeline/jobs/{job['id']}"))["status"] not in {"done", "failed"}:
        versions = cluster.call("GET", f"/pipeline/jobs/{job['id']}/policy")
        if versions and versions[-1]["version"] != serving:
            # A new policy version: workers fetch it over HTTP and serve its rollout jobs.
            cluster.stop_workers()
            serving = versions[-1]["version"]
            cluster.start_workers(cluster.fetch_model(versions[-1]["sha256"]), cfg.workers, cfg.batch)
            log(f"grpo: serving v{serving}; latest {json.dumps(body['metrics'].get('latest', {}))[:400]}")
        time.sleep(1)
    cluster.stop_workers()
    if body["status"] != "done":
        raise RuntimeError(f"grpo failed: {body['error']}")
    return cluster.fetch_model(body["outputs"]["policy"]["sha256"]), body["metrics"]


# --------------------------------------------------------------------------- the run


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cfg: BenchConfig) -> list[Row]:
    cluster = Cluster(cfg.work)
    cluster.start()
    try:
        return _stages(cluster, cfg)
    finally:
        cluster.stop()


def _stages(cluster: Cluster, cfg: BenchConfig) -> list[Row]:
    rows: list[Row] = []
    sets = problem_sets(cluster, cfg)

    def measure(stage: str, model: str, made_in_s: float, how: str) -> None:
        greedy, sampled, seconds = evaluate(cluster, cfg, sets, model, stage.split()[-1])
        rows.append(Row(stage, model, greedy, sampled, made_in_s, seconds, how))
        log(f"{stage}: greedy {greedy:.3f}, sampled {sampled}")

    if cfg.grpo_from:  # RL alone, from a given model (the base one, say)
        started = time.monotonic()
        policy, metrics = grpo(cluster, cfg, sets, cfg.grpo_from)
        (cfg.work / "grpo-metrics.json").write_text(json.dumps(metrics, indent=1))
        how = f"GRPO from {cfg.grpo_from}, {cfg.rl_steps} versions"
        measure("(c) grpo", policy, time.monotonic() - started, how)
        return rows
    measure("(a) base", TINY, 0.0, "the bundled model")
    started = time.monotonic()
    traces = teacher_traces(cluster, cfg, sets)
    teacher_s = time.monotonic() - started
    measure("teacher", str(cfg.teacher.resolve()), teacher_s, f"{cfg.teacher_problems} traces generated")
    checkpoints = {}
    for with_filter in (False, True):
        started = time.monotonic()
        checkpoints[with_filter] = distill(cluster, cfg, traces, with_filter)
        how = f"SFT on teacher traces{' + student-loss filter' if with_filter else ''}"
        measure(
            f"(b) sft{'+filter' if with_filter else ''}",
            checkpoints[with_filter],
            time.monotonic() - started,
            how,
        )
    started = time.monotonic()
    policy, metrics = grpo(cluster, cfg, sets, checkpoints[False])
    (cfg.work / "grpo-metrics.json").write_text(json.dumps(metrics, indent=1))
    measure("(c) grpo", policy, time.monotonic() - started, f"GRPO from (b) sft, {cfg.rl_steps} versions")
    return rows


def table(rows: list[Row], cfg: BenchConfig) -> str:
    n = cfg.eval_samples
    lines = [
        f"| stage | greedy | pass@1 (T=1) | majority@{n} | pass@{n} | made in | eval wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r.sampled
        scores = " | ".join(f"{v:.3f}" for v in (r.greedy, s["pass@1"], s["majority"], s["pass@n"]))
        lines.append(f"| {r.stage} ({r.how}) | {scores} | {r.made_in_s:.0f} s | {r.eval_s:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the whole flywheel: base, SFT (with/without filter), GRPO")
    r.add_argument("--teacher", type=Path, required=True, help="the teacher model folder (see `unpack`)")
    r.add_argument("--work", type=Path, default=ROOT / ".flywheel" / "bench" / "run")
    for name, value in vars(BenchConfig(Path(), Path())).items():
        if name not in {"work", "teacher"}:
            r.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    s = sub.add_parser("serve", help="the coordinator API with the pipeline routes (used by `run`)")
    s.add_argument("--port", type=int, required=True)
    p = sub.add_parser("pack", help="split a model folder's weights into bf16 parts (device transfers)")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack", help="rebuild a model folder from `pack` output")
    u.add_argument("packed", type=Path)
    u.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port)
    elif args.command == "pack":
        pack(args.model_dir, args.out)
    elif args.command == "unpack":
        unpack(args.packed, args.model_dir)
    else:
        return _run_command(args)
    return 0


def _run_command(args: argparse.Namespace) -> int:
    if args.work.exists():
        shutil.rmtree(args.work)  # a fresh database and data folder: every number comes from this run
    fields = {k: v for k, v in vars(args).items() if k in BenchConfig.__dataclass_fields__}
    cfg = BenchConfig(**fields)
    started = time.monotonic()
    rows = run(cfg)
    result = {
        "settings": {k: str(v) for k, v in vars(cfg).items()},
        "rows": [asdict(r) for r in rows],
        "wall_s": time.monotonic() - started,
        "command": " ".join(sys.argv),
    }
    (cfg.work / "results.json").write_text(json.dumps(result, indent=1))
    print(table(rows, cfg))
    print(f"total wall time {result['wall_s']:.0f} s; results in {cfg.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

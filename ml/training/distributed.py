"""SFT over several processes on one machine: PyTorch FSDP2 (`fully_shard`), launched by torchrun.

`launch` is what the pipeline's train task calls (through `finetune.train`) when a spec asks for
`nproc` > 1: it writes the rows and the spec to the work folder, starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m ml.training.distributed JOB`
and relays rank 0's progress lines to the task's callback. Each rank loads the same model with
the same seed, shards every decoder layer and then the root over the processes (gloo on the CPU,
NCCL on CUDA), and runs the SFT loop of ml/training/sft.py with three parts swapped:

- the step: each rank takes its contiguous share of the global batch; the local token-summed loss
  is scaled by world / (the batch's labelled tokens over all ranks), so FSDP2's gradient average
  is exactly the single-process gradient of the batch's mean token loss;
- the resumable snapshot: each rank saves its own shard of the trainable weights and of the
  optimizer moments (`resume-sharded/step-N/rank-R.pt`, tensors only, read back with
  weights_only), and rank 0 then points `resume-sharded/latest` at the step; a resume needs the
  same nproc;
- the end: the full state dict is gathered to rank 0 on the CPU, laid into an unsharded copy of
  the model, and that copy goes through the same `_finish` a single process runs, so the
  published safetensors are what one process with these weights would publish.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.devices import pick_device, pick_precision
from ml.errors import DeviceUnavailable, LaunchFailed
from ml.loading import load_model, load_tokenizer
from ml.training import sft
from shared.assets import ModelSource
from shared.pipeline_types import SftSpec

PROGRESS_MARK = "FLYWHEEL-SFT-PROGRESS "
RESUME = "resume-sharded"
JOB_FILE = "distributed-job.json"
RESULT_FILE = "distributed-result.json"
STOP_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- the launching side


def launch(
    rows: Sequence[dict[str, Any]], source: ModelSource, spec: SftSpec, workdir: Path, progress: sft.Progress
) -> sft.SftResult:
    """Train with `spec.nproc` processes; blocks until they end. A callback that raises (a
    cancelled job) stops the whole process group."""
    _check_devices(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    job = _write_job(rows, source, spec, workdir)
    (workdir / RESULT_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={spec.nproc}", "-m", "ml.training.distributed", str(job)]  # fmt: skip
    # NVLink multicast stays off: on the lent multi-GPU hosts NCCL's NVLS set-up hangs.
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _relay(proc, progress)
    except BaseException:
        _stop(proc)
        raise
    if proc.wait() != 0:
        raise LaunchFailed(f"torchrun with {spec.nproc} processes exited with status {proc.returncode}")
    return _read_result(workdir / RESULT_FILE)


def _check_devices(spec: SftSpec) -> None:
    """On CUDA each process takes a GPU of its own: refused before anything starts if too few."""
    import torch

    if pick_device(spec.device) == "cuda" and torch.cuda.device_count() < spec.nproc:
        raise DeviceUnavailable(
            f"nproc {spec.nproc} needs {spec.nproc} GPUs; torch sees {torch.cuda.device_count()}"
        )


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to torchrun, whose agent stops the training processes (SIGTERM, then SIGKILL):
    they run in sessions of their own, out of reach of a signal to torchrun's group. SIGKILL to
    torchrun's group only if the agent itself hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _write_job(rows: Sequence[dict[str, Any]], source: ModelSource, spec: SftSpec, workdir: Path) -> Path:
    rows_path = workdir / "distributed-rows.jsonl"
    rows_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = {
        "rows": str(rows_path),
        "source": {"base": source.base, "weights": str(source.weights) if source.weights else None,
                   "revision": source.revision},
        "spec": spec.model_dump(mode="json"),
        "workdir": str(workdir),
    }  # fmt: skip
    path = workdir / JOB_FILE
    path.write_text(json.dumps(job))
    return path


def _relay(proc: subprocess.Popen[str], progress: sft.Progress) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(PROGRESS_MARK):
            fraction, stage, metrics = json.loads(line[len(PROGRESS_MARK) :])
            progress(fraction, stage, metrics)
        else:
            sys.stdout.write(line)


def _read_result(path: Path) -> sft.SftResult:
    saved = json.loads(path.read_text())
    adapter = Path(saved["adapter"]) if saved["adapter"] else None
    return sft.SftResult(
        Path(saved["weights"]), adapter, saved["adapter_config"], saved["curve"], saved["metrics"]
    )


# --------------------------------------------------------------------------- one training process


def main(job_path: str) -> None:
    import torch.distributed as dist

    job = json.loads(Path(job_path).read_text())
    spec = SftSpec.model_validate(job["spec"])
    device = _rank_device(spec)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        source = ModelSource(
            job["source"]["base"], _path(job["source"]["weights"]), job["source"]["revision"]
        )
        rows = [json.loads(line) for line in Path(job["rows"]).read_text().splitlines()]
        workdir = Path(job["workdir"])
        result = train_rank(rows, source, spec, device, workdir)
        if result is not None:
            _write_result(result, workdir / RESULT_FILE)
    finally:
        dist.destroy_process_group()


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _rank_device(spec: SftSpec) -> str:
    import torch

    device = pick_device(spec.device)
    if device != "cuda":
        return device
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def _report(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
    print(PROGRESS_MARK + json.dumps([fraction, stage, metrics]), flush=True)


def _silent(fraction: float, stage: str, metrics: dict[str, Any]) -> None:
    return None


def train_rank(
    rows: Sequence[dict[str, Any]], source: ModelSource, spec: SftSpec, device: str, workdir: Path
) -> sft.SftResult | None:
    """This rank's part of the run; rank 0 returns the result, the others None."""
    import torch
    import torch.distributed as dist

    torch.manual_seed(spec.seed)  # the same initial weights (and adapters) on every rank
    tokenizer = load_tokenizer(source)
    data = sft._split(tokenizer, rows, spec, pick_precision(spec.precision, device))
    base = load_model(source, device, "float32", trainable=True)
    if spec.gradient_checkpointing:
        sft._checkpoint_activations(base)
    model = _shard(sft._wrap(base, spec), base)
    optimizer = sft._optimizer(model, spec)
    rank = dist.get_rank()
    steps = sft.Steps(step=_step, snapshot=_snapshot, restore=_restore, resume=RESUME)
    state = sft._loop(model, optimizer, data, spec, workdir, _report if rank == 0 else _silent, steps)
    model.eval()
    full = _full_state(model)
    if rank != 0:
        return None
    plain = sft._wrap(load_model(source, "cpu", "float32", trainable=True), spec)
    plain.load_state_dict(full)
    plain.eval()
    result = sft._finish(plain, spec, workdir, state, data)
    result.metrics.update(nproc=dist.get_world_size(), engine=spec.engine)
    return result


def _shard(model: Any, base: Any) -> Any:
    """Each decoder layer its own FSDP2 unit (gathered only while it runs), then the root."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(base, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    return model


def _full_state(model: Any) -> dict[str, Any]:
    """The whole state dict on rank 0's CPU (empty on the other ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_result(result: sft.SftResult, path: Path) -> None:
    saved = {
        "weights": str(result.weights),
        "adapter": str(result.adapter) if result.adapter else None,
        "adapter_config": result.adapter_config,
        "curve": result.curve,
        "metrics": result.metrics,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the sharded step


def share(rows: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous part of a global batch (the last parts shorter when it is short)."""
    size = math.ceil(len(rows) / world)
    return rows[rank * size : (rank + 1) * size]


def _step(model: Any, optimizer: Any, rows: list[int], data: sft._Data, spec: SftSpec) -> tuple[float, int]:
    """One optimizer step over the global batch `rows`: (the batch's mean token loss, its tokens)."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    mine = share(rows, rank, world)
    parts = sft._micro_batches([data.train[i] for i in mine], [data.train_masks[i] for i in mine], data, spec)
    # Every rank runs as many passes as the busiest one: each pass gathers and reduces with the others.
    passes = max(math.ceil(len(share(rows, r, world)) / data.micro_batch) for r in range(world))
    device = next(model.parameters()).device
    totals = torch.tensor([float(sum(b.targets for b in parts)), 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    tokens = int(totals[0])
    optimizer.zero_grad(set_to_none=True)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    for index in range(passes):
        batch, weight = (parts[index], 1.0) if index < len(parts) else (_filler(data, spec), 0.0)
        summed = sft._summed_loss(model, batch, data.precision)
        # FSDP2 averages gradients over the ranks: `world` undoes the average into a sum.
        (summed * (weight * world / max(1, tokens))).backward()
        loss_total += summed.detach().double() * weight
    dist.all_reduce(loss_total)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return float(loss_total) / max(1, tokens), tokens


def _filler(data: sft._Data, spec: SftSpec) -> Any:
    """A one-row batch whose gradient is weighted 0: a pass for a rank with no rows left."""
    return sft._micro_batches(data.train[:1], data.train_masks[:1], data, spec)[0]


# --------------------------------------------------------------------------- sharded snapshots


def _snapshot(model: Any, optimizer: Any, state: sft._State, folder: Path) -> None:
    """Each rank's shard of the trainable weights and optimizer moments; then rank 0 moves the
    `latest` pointer, so a crash mid-save leaves the previous snapshot in use."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    # A forward pass without backward (the held-out loss) leaves the root's parameters gathered.
    model.reshard()
    step_dir = folder / f"step-{state.step}"
    step_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: _local(v).detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
    moments = optimizer.state_dict()
    moments["state"] = {i: {k: _local(v).cpu() for k, v in s.items()} for i, s in moments["state"].items()}
    torch.save({"weights": weights, "optimizer": moments}, step_dir / f"rank-{rank}.pt")
    dist.barrier()
    if rank == 0:
        meta = {"step": state.step, "curve": state.curve, "tokens": state.tokens,
                "seconds": state.seconds, "world": world}  # fmt: skip
        (step_dir / "state.json").write_text(json.dumps(meta))
        (folder / "latest.tmp").write_text(step_dir.name)
        os.replace(folder / "latest.tmp", folder / "latest")
        for old in folder.glob("step-*"):
            if old != step_dir:
                shutil.rmtree(old)
    dist.barrier()


def _local(value: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


def _restore(model: Any, optimizer: Any, folder: Path) -> sft._State:
    import torch
    import torch.distributed as dist

    pointer = folder / "latest"
    if not pointer.is_file():
        return sft._State()
    step_dir = folder / pointer.read_text().strip()
    meta = json.loads((step_dir / "state.json").read_text())
    if meta["world"] != dist.get_world_size():
        raise ValueError(f"the snapshot in {step_dir} has {meta['world']} shards; resume with that nproc")
    # Tensors and plain types only: a resume file that holds any other object is refused unread.
    saved = torch.load(step_dir / f"rank-{dist.get_rank()}.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved["weights"].items():
            _local(params[name]).copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    _redistribute_moments(optimizer)
    return sft._State(step=meta["step"], curve=meta["curve"], tokens=meta["tokens"], seconds=meta["seconds"])


def _redistribute_moments(optimizer: Any) -> None:
    """Loaded moments are plain local tensors: wrap each as a shard of its parameter's DTensor."""
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for param in group["params"]:
            if not isinstance(param, DTensor):
                continue
            state = optimizer.state[param]
            for key, value in state.items():
                if value.shape == param.to_local().shape and value.dim() > 0:
                    state[key] = DTensor.from_local(
                        value, param.device_mesh, param.placements, run_check=False,
                        shape=param.shape, stride=param.stride(),
                    )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])

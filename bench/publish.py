"""The GRPO policy publish path, timed: the safetensors write and the store's sha256 and copy.

After each update the trainer writes the new policy with `ml.loading.save_weights`
(`ml.training.grpo.train_version`), and `coordinator.pipeline.rl.publish` registers it:
`ArtifactStore.put_file` reads it, hashes it while copying it into the content-addressed store,
fsyncs the copy and renames it into place. A worker fetching the version hashes its download the
same way (`shared.assets.file_sha256`). Timed here, on random tensors (speed depends on the bytes'
count, not their values) laid out as a real model's state dict: transformers' own Qwen2 built on
the meta device with Qwen2.5-0.5B's shape (494M parameters, tied embeddings) or Qwen2.5-7B's
(7.6B, untied), then materialised on the CPU and filled.

- write: `save_weights` of the model (to the page cache; the path does not fsync it);
- store: `ArtifactStore.put_file` of the written file (read + sha256 + write + fsync + rename);
- sha256: `file_sha256` of the stored file, alone;
- publish: write + store, the time from trained weights to a version workers can fetch.

    python -m bench.publish --size 0.5b
    python -m bench.publish --size 7b --dir /tmp      # 15 GB of bfloat16, twice on disk
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench.worker_gpu import SHAPE, SIZES
from coordinator.pipeline.artifacts import ArtifactStore
from ml.loading import save_weights
from shared.assets import file_sha256

# Qwen2.5-7B's shape; the 0.5B one is the other benches' (bench/worker_gpu.py).
SHAPES: dict[str, tuple[dict[str, Any], bool]] = {
    "0.5b": (SIZES["0.5b"], True),
    "7b": (dict(zip(SHAPE, (3584, 18_944, 28, 28, 4, 152_064), strict=True)), False),
}


def random_model(size: str, dtype: str) -> Any:
    """A Qwen2 of `size`'s shape in `dtype` on the CPU, its weights uniform noise."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape, tied = SHAPES[size]
    config = Qwen2Config(**shape, tie_word_embeddings=tied)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.to_empty(device="cpu")
    if tied:  # materialising gave the two modules one new tensor each: share one again
        model.lm_head.weight = model.model.embed_tokens.weight
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.05, 0.05, generator=generator)
    return model


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    out = action()
    return time.perf_counter() - began, out


def measure(size: str, dtype: str, folder: Path) -> dict[str, Any]:
    model = random_model(size, dtype)
    params = sum(p.numel() for p in model.parameters())  # a tied tensor counts once
    work = Path(tempfile.mkdtemp(prefix="publish-bench-", dir=folder))
    try:
        written = work / "policy.safetensors"
        write_s, _ = _timed(partial(save_weights, model, written))
        del model  # the store step runs with the trainer's memory given back, as after a real update
        store_s, (sha, size_bytes) = _timed(lambda: ArtifactStore(work / "store").put_file(written))
        hash_s, again = _timed(lambda: file_sha256(work / "store" / sha))
        assert again == sha, "the stored file does not hash to its name"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gb = size_bytes / 1e9
    return {"size": size, "dtype": dtype, "parameters": params, "gb": gb, "write_s": write_s,
            "store_s": store_s, "sha256_s": hash_s, "publish_s": write_s + store_s,
            "write_gb_s": gb / write_s, "store_gb_s": gb / store_s, "sha256_gb_s": gb / hash_s}  # fmt: skip


def report(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| shape | dtype | parameters | file GB | write s (GB/s) | store s (GB/s) | sha256 s (GB/s) "
        "| publish s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [r["size"], r["dtype"], f"{r['parameters'] / 1e6:,.0f}M", f"{r['gb']:.2f}",
                 f"{r['write_s']:.2f} ({r['write_gb_s']:.2f})", f"{r['store_s']:.2f} ({r['store_gb_s']:.2f})",
                 f"{r['sha256_s']:.2f} ({r['sha256_gb_s']:.2f})", f"{r['publish_s']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", action="append", choices=sorted(SHAPES), help="repeatable; default 0.5b")
    p.add_argument("--dtype", action="append", choices=["bfloat16", "float32"], help="default bfloat16")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where files are written")
    p.add_argument("--json", type=Path, help="also write the results here")
    cfg = p.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}; files under {cfg.dir}", flush=True)
    results = []
    for size in cfg.size or ["0.5b"]:
        for dtype in cfg.dtype or ["bfloat16"]:
            results.append(measure(size, dtype, cfg.dir))
            print(json.dumps(results[-1]), flush=True)
    print(report(results), flush=True)
    if cfg.json:
        cfg.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

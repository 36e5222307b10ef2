"""The seeded sampler's cost per decode step: Gumbel noise read from the per-device table of all
2**24 levels against the same noise computed per token, side by side, on one device.

`sample_step` over a [rows, vocab] float32 logits block (temperature 1, no top-k/top-p: the
whole vocabulary is drawn), for several row counts; both paths give bit-identical tokens, which
the run checks. Noise keys: array derivation against the Python chain, at the same row counts.

    python -m bench.sampler --device cuda            # on a GPU
    python -m bench.sampler --device cpu --rows 1,8
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import shared.sampling as sampling
from shared.protocol import SamplingParams


def _timed(step: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    step()  # the first call builds the table and warms the kernels
    sync()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - began) / repeats


def measure(device: str, rows: int, vocab: int, repeats: int) -> dict[str, float]:
    import torch

    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows)).to(device)
    params = [SamplingParams(temperature=1.0, seed=7)] * rows
    seeds, indices = [1000 + r for r in range(rows)], list(range(rows))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out: dict[str, float] = {}
    tokens = {}
    for name, table_min, keys_min in (("per-token", 1 << 62, 1 << 62), ("table", 1, 64)):
        sampling.TABLE_MIN_ELEMENTS, sampling._ARRAY_KEYS_MIN_ROWS = table_min, keys_min

        def step() -> Any:
            return sampling.sample_step(torch, logits, seeds, indices, [5] * rows, params)

        out[name] = _timed(step, sync, repeats)
        tokens[name] = step()[0].tolist()
    if tokens["per-token"] != tokens["table"]:
        raise SystemExit("the two noise paths chose different tokens")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", default="1,16,64,256")
    parser.add_argument("--vocab", type=int, default=151_936, help="Qwen2's vocabulary by default")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    defaults = (sampling.TABLE_MIN_ELEMENTS, sampling._ARRAY_KEYS_MIN_ROWS)
    print(f"sample_step on {args.device}, vocabulary {args.vocab}, temperature 1, ms per step")
    print(f"{'rows':>6} {'per-token noise':>16} {'table noise':>12} {'speed-up':>9}")
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            t = measure(args.device, rows, args.vocab, args.repeats)
            speedup = t["per-token"] / t["table"]
            print(
                f"{rows:>6} {t['per-token'] * 1e3:>16.2f} {t['table'] * 1e3:>12.2f} {speedup:>8.2f}x",
                flush=True,
            )
    finally:
        sampling.TABLE_MIN_ELEMENTS, sampling._ARRAY_KEYS_MIN_ROWS = defaults
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Trust: honest traces must pass validation on every device, precision and batch size; cheating
workers against a running coordinator must be caught.

    python -m bench.trust generate --device cpu --dtype float32 --batch-sizes 1,8,32 --per-batch 500 \\
        --out .flywheel/bench-trust/cpu.jsonl.gz
    python -m bench.trust check .flywheel/bench-trust/gpu.jsonl.gz --device cpu --dtype float32
    python -m bench.trust attack --honest 4000 --per-attack 1000
    python -m bench.trust calibrate honest.jsonl.gz --dtype float32 [--url URL --token OPERATOR]
    python -m bench.trust workers --claim bfloat16 --calibrate 96 --honest-traces 96 --per-attack 48

`generate` runs the worker's own engine (worker/engines/hf.py) on a mix of sampling settings and
writes the traces with the generation time each cost (its batch's wall time over the batch size).
`check` validates such a file with the coordinator's validator (coordinator/trust/validator.py) on
this machine's device and dtype: it prints, per source (device, dtype, batch size), the traces
falsely flagged, the largest tolerance any trace needed and the headroom the policy leaves, and
validation time next to generation time for the same traces. GPU traces are made with the device
tool and checked here, and the other way round (docs/trust.md).

`calibrate` stores honest calibrations of the per-worker evidence in a coordinator; `workers`
simulates honest and cheating workers under it (both described at their section below).

`attack` starts `flywheel coordinator serve` (SQLite, in-process tasks, every trace validated:
FLYWHEEL_VALIDATION_FLOOR=1), registers honest and cheating volunteers over HTTP, and lets each
lease jobs, generate on the CPU with the tiny model, forge its traces and submit. When every
trace has its validation it prints, per attack, the traces sent and caught, and the honest traces
falsely flagged, all read back from the coordinator's operator API.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.net import free_port
from shared import evidence
from shared.assets import TINY_MODEL_NAME
from shared.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    ChatMessage,
    JobSpec,
    ModelRef,
    Routes,
    SamplingParams,
)

# The honest mix: unfiltered, top-p, top-k, greedy, both, a cold and a hot temperature.
SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 0.0},
    {"temperature": 1.3, "top_p": 0.95, "top_k": 20},
    {"temperature": 0.5},
]
MAX_TOKENS = (96, 256)  # short answers, and room for the long rambling traces where noise adds up


@dataclass
class Record:
    """One generated trace, as written by `generate` and read by `check`."""

    spec: dict[str, Any]
    tokens: list[int]
    logprobs: list[float]
    finish: str
    text: str
    dtype: str
    device: str
    batch: int
    generate_s: float

    @property
    def source(self) -> str:
        return f"{self.device} {self.dtype} batch {self.batch}"


def prompts(count: int, seed: int) -> list[str]:
    from coordinator.problems.sources.arithmetic import generate

    return [p.prompt for p in generate(count, seed=seed, split="test")]


def honest_jobs(count: int, seed: int, model: str = TINY_MODEL_NAME) -> list[JobSpec]:
    rng = random.Random(seed)
    return [
        JobSpec(
            job_id=uuid.UUID(int=rng.getrandbits(128)),
            campaign_id=uuid.UUID(int=seed),
            problem_id=f"p{i}",
            messages=[ChatMessage(role="user", content=prompt)],
            model=ModelRef(name=model),
            sampling=SamplingParams(
                seed=rng.getrandbits(62), max_tokens=MAX_TOKENS[i % 2], **SAMPLINGS[i % len(SAMPLINGS)]
            ),
            sample_index=rng.randrange(8),
            samples_per_problem=8,
        )
        for i, prompt in enumerate(prompts(count, seed))
    ]


# --------------------------------------------------------------------------- generate / check


def generate_records(
    device: str,
    dtype: str,
    batch_sizes: Sequence[int],
    per_batch: Sequence[int],
    model: str = TINY_MODEL_NAME,
) -> list[Record]:
    from worker.engines.hf import TransformersEngine

    engine = TransformersEngine.load(model, device=device, dtype=dtype)
    records: list[Record] = []
    for size, count in zip(batch_sizes, per_batch, strict=True):
        jobs = honest_jobs(count, seed=1000 + size, model=model)
        for start in range(0, len(jobs), size):
            chunk = jobs[start : start + size]
            began = time.perf_counter()
            generations = engine.generate(chunk)
            share = (time.perf_counter() - began) / len(chunk)
            records += [
                Record(job.model_dump(mode="json"), g.completion_token_ids, g.logprobs, g.finish_reason.value,
                       g.text, engine.info.dtype, engine.info.device, size, share)
                for job, g in zip(chunk, generations, strict=True)
            ]  # fmt: skip
        print(f"generated {len(jobs)} traces at batch {size} on {device} {dtype}", flush=True)
    return records


def save(records: Iterable[Record], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(asdict(record)) + "\n")


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.readlines()


def load(paths: Iterable[Path]) -> list[Record]:
    records = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            records += [Record(**json.loads(line)) for line in handle]
    return records


@dataclass
class Checked:
    source: str
    passed: bool
    needed: float
    tolerance: float
    validate_s: float
    generate_s: float
    reason: str
    prefill_s: float = 0.0
    cells: tuple[int, ...] = ()  # positions per evidence cell (shared/evidence.py)
    positions: int = 0


def check_records(records: Sequence[Record], device: str, dtype: str, chunk: int = 256) -> list[Checked]:
    from coordinator.trust.validator import Submitted, validate
    from ml.scorer import scorer

    # one model per file set: the one the traces' jobs name (the bundled model unless --model)
    validator = scorer(records[0].spec["model"]["name"] if records else TINY_MODEL_NAME, None, device, dtype)
    out = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        claims = [
            Submitted(JobSpec.model_validate(r.spec), r.tokens, r.logprobs, r.finish, r.text, r.dtype)
            for r in part
        ]
        for record, result in zip(part, validate(validator, claims), strict=True):
            o = result.outcome
            out.append(
                Checked(
                    record.source, o.passed, o.needed, o.tolerance, result.seconds, record.generate_s,
                    o.reason, result.prefill_seconds, o.cells, o.positions,
                )
            )  # fmt: skip
    _sync(device)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rejudge(checked: Sequence[Checked], validator_dtype: str) -> list[Checked]:
    """Saved outcomes under the current tolerance table: a trace passes if the tolerance it needed
    (measured with sets at least as strict) is within it; failures for other reasons stay."""
    from dataclasses import replace

    from coordinator.trust.policy import tolerance

    out = []
    for c in checked:
        eps = tolerance(c.source.split()[1], validator_dtype)
        passed = c.needed <= eps if c.passed or "pick" in c.reason or "logprob" in c.reason else False
        out.append(replace(c, passed=passed, tolerance=eps))
    return out


def _cost(rows: Sequence[Checked]) -> float:
    """Validation time over generation time for the same traces."""
    return sum(r.validate_s for r in rows) / max(sum(r.generate_s for r in rows), 1e-12)


def _split(rows: Sequence[Checked]) -> str:
    """Validation cost as prefill + scoring, each over generation time."""
    generated = max(sum(r.generate_s for r in rows), 1e-12)
    prefill = sum(r.prefill_s for r in rows) / generated
    scoring = sum(r.validate_s - r.prefill_s for r in rows) / generated
    return f"prefill 1/{1 / max(prefill, 1e-12):.1f} + scoring 1/{1 / max(scoring, 1e-12):.1f}"


def report_checks(checked: Sequence[Checked], device: str, dtype: str) -> None:
    """Per source: false positives, the largest tolerance needed and the headroom the policy leaves,
    and validation cost next to generation cost where both ran on the same kind of device."""
    by_source: dict[str, list[Checked]] = defaultdict(list)
    for c in checked:
        by_source[c.source].append(c)
    print(f"\nvalidated on {device} {dtype}")
    header = f"{'traces from':<28} {'traces':>7} {'flagged':>8} {'max needed':>11} {'tolerance':>10} "
    print(header + f"{'headroom':>9} {'validate/generate':>18}")
    kind = device.split(":")[0]
    for source, rows in sorted(by_source.items()):
        worst = max(r.needed for r in rows)
        tol = min(r.tolerance for r in rows)
        flagged = sum(not r.passed for r in rows)
        headroom = tol / worst if worst > 0 else math.inf
        same_kind = source.split()[0] == kind
        cost = "1/" + format(1 / _cost(rows), ".1f") if same_kind else "(other device)"
        figures = f"{len(rows):>7} {flagged:>8} {worst:>11.4g} {tol:>10.4g} {headroom:>8.1f}x {cost:>18}"
        figures += f"  ({_split(rows)})" if same_kind else ""
        print(f"{source:<28} {figures}")
    for r in [c for c in checked if not c.passed][:10]:
        print(f"  flagged ({r.source}): {r.reason}")
    same = [c for c in checked if c.source.split()[0] == kind]
    flagged = sum(not c.passed for c in checked)
    print(f"all: {len(checked)} honest traces, {flagged} falsely flagged", end="")
    print(
        f"; validation costs 1/{1 / _cost(same):.1f} of generation for the {len(same)} made on {kind}"
        if same
        else ""
    )


# --------------------------------------------------------------------------- attack: the cheaters


@dataclass(frozen=True)
class Forged:
    tokens: list[int]
    logprobs: list[float]
    finish: str
    text: str


class Models:
    """The honest engine, the cheaper engines cheaters run, and the model to recompute logprobs."""

    def __init__(self) -> None:
        from ml.scorer import scorer
        from worker.engines.hf import TransformersEngine

        self.honest = TransformersEngine.load(TINY_MODEL_NAME, device="cpu")
        self.scorer = scorer(TINY_MODEL_NAME, None, "cpu", "float32")
        self.bf16 = TransformersEngine.load(TINY_MODEL_NAME, device="cpu", dtype="bfloat16")
        self.int8 = self._variant(lambda model: quantize(model, bits=8))
        self.int4 = self._variant(lambda model: quantize(model, bits=4))
        self.shallow = self._variant(drop_layers)

    def _variant(self, change: Callable[[Any], None]) -> Any:
        from worker.engines.hf import TransformersEngine

        engine = TransformersEngine.load(TINY_MODEL_NAME, device="cpu")
        change(engine.model)
        return engine

    def logprobs(self, job: JobSpec, tokens: Sequence[int]) -> list[float]:
        """What a careful forger claims: the model's own logprobs of its forged tokens."""
        import torch

        from shared.sampling import filtered_logprobs

        prompt = self.scorer.prompt_ids(job.messages)
        logits = self.scorer.completion_logits([prompt], [list(tokens)])[0]
        picked = filtered_logprobs(torch, logits, [job.sampling] * len(tokens))
        values = picked[torch.arange(len(tokens)), torch.tensor(list(tokens))].tolist()
        # a token outside the allowed set has no logprob; a forger must still send a finite one
        return [max(float(x), -100.0) for x in values]

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.scorer.tokenizer(text, add_special_tokens=False)["input_ids"]]


def quantize(model: Any, bits: int) -> None:
    """Round every linear layer's weights to `bits`-bit integers per output row (symmetric), as a
    weight-only quantized copy computes; activations stay float32."""
    import torch

    top = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                scale = module.weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / top
                module.weight.copy_((module.weight / scale).round().clamp(-top, top) * scale)


def drop_layers(model: Any) -> None:
    """A cheaper model of the same family: the first half of the layers, same embeddings and head."""
    keep = model.config.num_hidden_layers // 2
    model.model.layers = model.model.layers[:keep]
    model.config.num_hidden_layers = keep


def _variant_of(job: JobSpec, **sampling: Any) -> JobSpec:
    return job.model_copy(update={"sampling": job.sampling.model_copy(update=sampling)})


def _generated(engine: Any, jobs: Sequence[JobSpec]) -> list[Forged]:
    return [
        Forged(g.completion_token_ids, g.logprobs, g.finish_reason.value, g.text)
        for g in engine.generate(jobs)
    ]


def _answer(prompt: str) -> int | None:
    parts = prompt.removeprefix("What is ").removesuffix("?").split()
    if len(parts) != 3:
        return None
    a, op, b = int(parts[0]), parts[1], int(parts[2])
    return {"+": a + b, "-": a - b, "*": a * b}.get(op)


def _with_answer(models: Models, job: JobSpec, honest: Forged, answer: str) -> Forged | None:
    """The honest trace with the text of its final \\boxed{...} replaced, re-tokenized, logprobs
    recomputed; None when the trace has no answer or re-encoding does not give back its tokens."""
    head, mark, tail = honest.text.rpartition("\\boxed{")
    if not mark or "}" not in tail:
        return None
    body = honest.tokens[:-1] if honest.finish == "stop" else honest.tokens
    if models.encode(honest.text) != body:
        return None
    text = head + mark + answer + tail[tail.index("}") :]
    tokens = models.encode(text) + honest.tokens[len(body) :]
    return Forged(tokens, models.logprobs(job, tokens), honest.finish, text)


Forger = Callable[[Models, Sequence[JobSpec], list[Forged], random.Random], list[Forged | None]]


def fabricated(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    out: list[Forged | None] = []
    stop = min(models.scorer.stops)
    for job in jobs:
        prompt = job.messages[-1].content
        guess = (_answer(prompt) or 0) + rng.choice([-10, -1, 0, 1, 10])
        text = f"{prompt.removeprefix('What is ').removesuffix('?')} \\boxed{{{guess}}}"
        tokens = [*models.encode(text), stop]
        out.append(Forged(tokens, [-0.05] * len(tokens), "stop", text))
    return out


def other_model(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    return list(_generated(models.shallow, jobs))


def precision(engine_name: str) -> Forger:
    def forge(
        models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
    ) -> list[Forged | None]:
        return list(_generated(getattr(models, engine_name), jobs))

    return forge


def edited_answer(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    out: list[Forged | None] = []
    for job, trace in zip(jobs, honest, strict=True):
        claimed = trace.text.rpartition("\\boxed{")[2].split("}")[0]
        digits = [c for c in claimed if c.isdigit()]
        if not digits:
            out.append(None)
            continue
        edited = "".join(str(rng.randrange(10)) if c.isdigit() else c for c in claimed)
        out.append(_with_answer(models, job, trace, edited) if edited != claimed else None)
    return out


def pasted_answer(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    out: list[Forged | None] = []
    for job, trace in zip(jobs, honest, strict=True):
        correct = _answer(job.messages[-1].content)
        claimed = trace.text.rpartition("\\boxed{")[2].split("}")[0]
        wrong = correct is not None and claimed != str(correct)
        out.append(_with_answer(models, job, trace, str(correct)) if wrong else None)
    return out


def wrong_temperature(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    cold = [
        _variant_of(j, temperature=j.sampling.temperature / 2 if j.sampling.temperature else 0.7)
        for j in jobs
    ]
    # The same tokens as the honest trace, with the honest rule's logprobs, are the honest trace.
    return [
        Forged(f.tokens, models.logprobs(job, f.tokens), f.finish, f.text) if f.tokens != h.tokens else None
        for job, f, h in zip(jobs, _generated(models.honest, cold), honest, strict=True)
    ]


def replay(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    """The trace another job of the same problem gets: the same prompt under another seed and index."""
    others = [
        j.model_copy(update={
            "sampling": j.sampling.model_copy(update={"seed": rng.getrandbits(62)}),
            "sample_index": (j.sample_index + 1) % j.samples_per_problem,
        })
        for j in jobs
    ]  # fmt: skip
    return [
        f if f.tokens != h.tokens else None
        for f, h in zip(_generated(models.honest, others), honest, strict=True)
    ]


def single_token(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    out: list[Forged | None] = []
    vocab = [t for t in range(len(models.scorer.tokenizer)) if t not in models.scorer.stops]
    for job, trace in zip(jobs, honest, strict=True):
        last = len(trace.tokens) - (1 if trace.finish == "stop" else 0)
        if last < 1:
            out.append(None)
            continue
        p = rng.randrange(last)
        tokens = list(trace.tokens)
        tokens[p] = rng.choice([t for t in vocab if t != tokens[p]])
        text = models.scorer.decode(tokens)
        out.append(Forged(tokens, models.logprobs(job, tokens), trace.finish, text))
    return out


def logprobs_altered(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    """Honest tokens, logprobs halved: the trace claims the model was far surer than it was."""
    return [Forged(t.tokens, [lp / 2 for lp in t.logprobs], t.finish, t.text) for t in honest]


def temperature_shift(delta: float) -> Forger:
    """Sampling at T + delta (greedy jobs at delta), logprobs recomputed under the job's own rule."""

    def forge(
        models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
    ) -> list[Forged | None]:
        shifted = [_variant_of(j, temperature=max(j.sampling.temperature + delta, 0.0)) for j in jobs]
        return [
            Forged(f.tokens, models.logprobs(job, f.tokens), f.finish, f.text)
            if f.tokens != h.tokens
            else None
            for job, f, h in zip(jobs, _generated(models.honest, shifted), honest, strict=True)
        ]

    return forge


def top_p_changed(
    models: Models, jobs: Sequence[JobSpec], honest: list[Forged], rng: random.Random
) -> list[Forged | None]:
    """Sampling with top-p moved by 0.05 (0.95 where the job has none), logprobs recomputed."""
    moved = [_variant_of(j, top_p=min(j.sampling.top_p + 0.05, 1.0) if j.sampling.top_p < 1 else 0.95)
             for j in jobs]  # fmt: skip
    return [
        Forged(f.tokens, models.logprobs(job, f.tokens), f.finish, f.text) if f.tokens != h.tokens else None
        for job, f, h in zip(jobs, _generated(models.honest, moved), honest, strict=True)
    ]


@dataclass(frozen=True)
class Attack:
    name: str
    forge: Forger
    # The dtype the cheater reports, which sets the allowance it is checked with (docs/trust.md):
    # each attack is sent once claiming float32 and once claiming bfloat16, the widest allowance.
    claims: tuple[str, ...] = ("float32", "bfloat16")


ATTACKS = [
    Attack("fabricated text", fabricated),
    Attack("different model (half the layers)", other_model),
    Attack("bfloat16 copy", precision("bf16"), claims=("float32",)),
    Attack("int8 weights", precision("int8")),
    Attack("int4 weights", precision("int4")),
    Attack("edited final answer", edited_answer),
    Attack("wrong temperature (T/2)", wrong_temperature),
    Attack("temperature +0.1", temperature_shift(0.1)),
    Attack("temperature -0.1", temperature_shift(-0.1)),
    Attack("top-p changed", top_p_changed),
    Attack("replay of another job's trace", replay),
    Attack("correct answer pasted in", pasted_answer),
    Attack("single-token edit", single_token),
    Attack("claimed logprobs halved", logprobs_altered),
]


def indistinguishable(fake: Forged, real: Forged, job: JobSpec, claim: str) -> bool:
    """The forgery is the honest trace, up to the noise its claimed dtype is allowed: sending it
    cheats nobody, so it is not counted as an attack."""
    from coordinator.trust.policy import tolerance

    if fake.tokens != real.tokens or fake.text != real.text or fake.finish != real.finish:
        return False
    temperature = job.sampling.temperature or 1.0
    slack = 2 * tolerance(claim, "float32") / temperature  # the validator's own logprob allowance
    return all(abs(a - b) <= slack for a, b in zip(fake.logprobs, real.logprobs, strict=True))


def forge_records(names: Sequence[str], count: int, claim: str, seed: int) -> list[Record]:
    """Forgeries of `count` honest jobs by each attack whose name contains one of `names`, written as
    trace records claiming `claim`, for `check` offline (source "attack:<name>"); forgeries that
    are the honest trace within the claim's allowance are left out, as `attack` leaves them out."""
    models, rng = Models(), random.Random(seed)
    jobs = honest_jobs(count, seed)
    honest = [f for start in range(0, count, 32) for f in _generated(models.honest, jobs[start : start + 32])]
    records = []
    for attack in [a for a in ATTACKS if any(n in a.name for n in names)]:
        source = "attack:" + attack.name.split(" (")[0].replace(" ", "-")
        forged = []
        for start in range(0, count, 32):
            forged += attack.forge(models, jobs[start : start + 32], honest[start : start + 32], rng)
        for job, fake, real in zip(jobs, forged, honest, strict=True):
            if fake is not None and not indistinguishable(fake, real, job, claim):
                spec = job.model_dump(mode="json")
                records.append(
                    Record(spec, fake.tokens, fake.logprobs, fake.finish, fake.text, claim, source, 0, 0.0)
                )
        print(f"{attack.name}: {sum(r.device == source for r in records)} forgeries", flush=True)
    return records


# --------------------------------------------------------------------------- attack: the coordinator


class Server:
    """`flywheel coordinator serve` on SQLite in a scratch folder, validating every trace."""

    def __init__(self, folder: Path) -> None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.folder = folder
        self.port = free_port()
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("FLYWHEEL_", "REDIS_URL", "DATABASE_URL"))
            },
            "DATABASE_URL": f"sqlite:///{folder / 'flywheel.db'}",
            "FLYWHEEL_VALIDATION_FLOOR": "1",
            "FLYWHEEL_LEASE_TTL_S": "3600",
            "OMP_NUM_THREADS": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.operator = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flywheel", "coordinator", *args], env=self.env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    def start(self) -> None:
        import httpx

        self._cli("migrate")
        self.operator = json.loads(self._cli("create-token", "--name", "bench", "--scope", "operator"))[
            "token"
        ]
        log = (self.folder / "server.log").open("ab")
        command = [sys.executable, "-m", "flywheel", "coordinator", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError("the coordinator did not start; see " + str(self.folder / "server.log"))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)


class Client:
    def __init__(self, url: str, operator: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url + API_PREFIX, timeout=300)
        self.operator = {"Authorization": f"Bearer {operator}"}

    def call(self, method: str, path: str, token: dict[str, str] | None = None, **kwargs: Any) -> Any:
        headers = {**(token or self.operator), PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        for _ in range(20):
            response = self.http.request(method, path, headers=headers, **kwargs)
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        response.raise_for_status()
        return response.json() if response.content else None

    def register(self, name: str) -> tuple[str, dict[str, str]]:
        body = {"name": name, "engine": {"name": "transformers"}, "models": [TINY_MODEL_NAME]}
        reply = self.call("POST", Routes.register, token={}, json=body)
        return reply["worker_id"], {"Authorization": f"Bearer {reply['token']}"}

    def setup(self, problems: int, samples: int) -> None:
        made = self.call(
            "POST", Routes.problem_sets, json={"name": "trust", "source": "arithmetic", "limit": problems}
        )
        for i, sampling in enumerate(CAMPAIGN_SAMPLINGS):
            body = {
                "name": f"trust-{i}", "problem_set_id": made["id"], "model": {"name": TINY_MODEL_NAME},
                "samples_per_problem": samples, "seed": i, "sampling": {**sampling, "max_tokens": 128},
            }  # fmt: skip
            self.call("POST", Routes.campaigns, json=body)

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", "/trust/workers", params={"limit": 1000, "offset": len(out)})
            out += page
            if len(page) < 1000:
                return out

    def validation_seconds(self, worker_id: str) -> float:
        rows = self.call("GET", "/trust/validations", params={"worker_id": worker_id, "limit": 10_000})
        return float(sum(r["seconds"] for r in rows))


CAMPAIGN_SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 20},
    {"temperature": 0.0},
]


@dataclass
class Tally:
    generated: int = 0
    identical: int = 0  # forgeries that came out equal to the honest trace: nothing to catch
    sent: int = 0
    accepted: int = 0
    generate_s: float = 0.0
    workers: list[str] | None = None


def _submission(lease: dict[str, Any], forged: Forged, dtype: str) -> dict[str, Any]:
    return {
        "lease_id": lease["lease_id"], "attempt_id": str(uuid.uuid4()), "job_id": lease["spec"]["job_id"],
        "text": forged.text, "completion_token_ids": forged.tokens, "logprobs": forged.logprobs,
        "finish_reason": forged.finish, "engine": {"name": "transformers", "dtype": dtype, "device": "cpu"},
    }  # fmt: skip


def run_round(
    client: Client,
    models: Models,
    attack: Attack | None,
    claim: str,
    batch: int,
    rng: random.Random,
    tally: Tally,
) -> None:
    """One worker: register, lease a batch, generate it honestly, forge it (if cheating), submit."""
    name = attack.name if attack else "honest"
    worker_id, token = client.register(f"{name[:40]}-{uuid.uuid4().hex[:6]}")
    assert tally.workers is not None
    tally.workers.append(worker_id)
    leases = client.call(
        "POST", Routes.lease, token=token, json={"max_jobs": batch, "models": [TINY_MODEL_NAME]}
    )["jobs"]
    jobs = [JobSpec.model_validate(lease["spec"]) for lease in leases]
    if not jobs:
        raise RuntimeError("the coordinator ran out of jobs: raise the problem count")
    began = time.perf_counter()
    honest = _generated(models.honest, jobs)
    tally.generate_s += time.perf_counter() - began
    forged: list[Forged | None] = list(honest) if attack is None else attack.forge(models, jobs, honest, rng)
    results = []
    for lease, job, fake, real in zip(leases, jobs, forged, honest, strict=True):
        tally.generated += 1
        if fake is None or (attack is not None and indistinguishable(fake, real, job, claim)):
            tally.identical += 1
            continue
        results.append(_submission(lease, fake, claim))
    if results:
        acks = client.call("POST", Routes.submit, token=token, json={"results": results})["acks"]
        tally.sent += len(results)
        tally.accepted += sum(a["status"] == "accepted" for a in acks)


def run_attacks(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    server = Server(args.work_dir)
    server.start()
    try:
        client = Client(server.url, server.operator)
        jobs_needed = (
            args.honest + 4 * (args.per_attack + args.per_attack_bf16) * len(ATTACKS) + 4 * args.batch
        )
        client.setup(problems=jobs_needed // (4 * len(CAMPAIGN_SAMPLINGS)) + 1, samples=4)
        models = Models()
        honest = Tally(workers=[])
        while honest.sent < args.honest:
            run_round(client, models, None, "float32", args.batch, rng, honest)
        print(f"honest: {honest.sent} traces sent", flush=True)
        tallies: dict[tuple[str, str], Tally] = {}
        for attack in [a for a in ATTACKS if not args.only or any(word in a.name for word in args.only)]:
            for claim in [c for c in attack.claims if not args.claims or c in args.claims]:
                tally = tallies[(attack.name, claim)] = Tally(workers=[])
                wanted = args.per_attack if claim == "float32" else args.per_attack_bf16
                # An attack that mostly comes out as the honest trace stops after 4x the traces wanted.
                while tally.sent < wanted and tally.generated < 4 * wanted:
                    run_round(client, models, attack, claim, args.batch, rng, tally)
                print(f"{attack.name}, claiming {claim}: {tally.sent} forged traces sent", flush=True)
        records = wait_for_validations(client, honest.accepted + sum(t.accepted for t in tallies.values()))
        report_attacks(client, honest, tallies, records)
    finally:
        server.stop()
    return 0


def wait_for_validations(client: Client, expected: int, timeout_s: float = 7200) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = {r["worker_id"]: r for r in client.records()}
        done = sum(r["passed"] + r["failed"] for r in records.values())
        if done >= expected or time.monotonic() > deadline:
            print(f"{done} of {expected} traces validated", flush=True)
            return records
        time.sleep(5)


def _outcomes(tally: Tally, records: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(validated, failed) over a tally's workers."""
    rows = [records[w] for w in tally.workers or [] if w in records]
    return sum(r["passed"] + r["failed"] for r in rows), sum(r["failed"] for r in rows)


def report_attacks(
    client: Client, honest: Tally, tallies: dict[tuple[str, str], Tally], records: dict[str, dict[str, Any]]
) -> None:
    columns = (
        ("claims", 9),
        ("forged", 7),
        ("no-op", 6),
        ("sent", 6),
        ("validated", 10),
        ("caught", 7),
        ("rate", 8),
    )
    print(f"\n{'attack':<34} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for (name, claim), tally in tallies.items():
        validated, caught = _outcomes(tally, records)
        rate = f"{100 * caught / validated:.2f}%" if validated else "-"
        values = (claim, tally.generated, tally.identical, tally.sent, validated, caught, rate)
        print(f"{name:<34} " + " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, columns, strict=True)))
    validated, flagged = _outcomes(honest, records)
    per_worker = honest.generated // max(len(honest.workers or []), 1)
    print(f"\nhonest (cpu float32, batch {per_worker}): {honest.sent} sent, {validated} validated, "
          f"{flagged} falsely flagged")  # fmt: skip
    validate_s = sum(client.validation_seconds(w) for w in honest.workers or [])
    ratio = validate_s / max(honest.generate_s, 1e-12)
    print(f"validation cost: {validate_s:.1f} s for honest traces generated in {honest.generate_s:.1f} s: "
          f"1/{1 / ratio:.1f} of generation")  # fmt: skip


# --------------------------------------------------------------------------- workers: per-worker evidence
#
# `calibrate` validates honest traces (`generate` makes them) on this machine's device and dtype
# and sums their evidence cells per (model, worker dtype, validator dtype); with --url it stores
# them in a coordinator (PUT /v1/trust/calibrations). `workers` generates on the CPU with the
# bundled model: honest traces of the claimed dtype for a calibration, a second honest set, and
# each attack's forgeries, validates them all with the coordinator's validator, then simulates
# workers that draw their validated traces from those sets: N honest workers over a lifetime of
# validations, and per attack cheating workers that forge every trace or one in ten. Each worker
# is quarantined when a trace fails or when its CUSUMs (shared/evidence.py, the coordinator's own
# arithmetic) reach the threshold the false-alarm bound sets (docs/trust.md).


@dataclass(frozen=True)
class Scored:
    """A validated trace as the simulation uses it: failed outright, or its positions and ratios."""

    passed: bool
    positions: int
    ratios: list[float]


def calibration_counts(
    checked: Sequence[Checked], records: Sequence[Record]
) -> dict[tuple[str, str], list[int]]:
    """(model, worker dtype) -> summed cells of the honest traces that passed."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * evidence.BINS)
    for c, r in zip(checked, records, strict=True):
        if c.passed and c.cells:
            total = counts[(r.spec["model"]["name"], r.dtype)]
            for i, n in enumerate(c.cells):
                total[i] += n
    return dict(counts)


def calibrate(args: argparse.Namespace) -> int:
    records = load(args.files)
    checked = check_records(records, args.device, args.dtype)
    traces: dict[tuple[str, str], int] = defaultdict(int)
    for c, r in zip(checked, records, strict=True):
        traces[(r.spec["model"]["name"], r.dtype)] += int(c.passed)
    bodies = [
        {"model": model, "worker_dtype": dtype, "validator_dtype": args.dtype, "counts": counts,
         "traces": traces[(model, dtype)]}
        for (model, dtype), counts in calibration_counts(checked, records).items()
    ]  # fmt: skip
    for body in bodies:
        print(json.dumps(body))
        if args.url:
            client = Client(args.url, args.token)
            client.call("PUT", "/trust/calibrations", json=body)
            print(f"stored the calibration of {body['model']} ({body['worker_dtype']} worker, "
                  f"{args.dtype} validator) at {args.url}")  # fmt: skip
    return 0


# --------------------------------------------------------------------------- trace sets


def _records(
    jobs: Sequence[JobSpec], forged: Sequence[Forged | None], claim: str, source: str
) -> list[Record]:
    return [
        Record(job.model_dump(mode="json"), f.tokens, f.logprobs, f.finish, f.text, claim, source, 0, 0.0)
        for job, f in zip(jobs, forged, strict=True)
        if f is not None
    ]


def _generate(engine: Any, jobs: Sequence[JobSpec], chunk: int = 32) -> list[Forged]:
    return [
        f for start in range(0, len(jobs), chunk) for f in _generated(engine, jobs[start : start + chunk])
    ]


def _forgeries(models: Models, attack: Attack, count: int, claim: str, seed: int) -> tuple[list[Record], int]:
    """An attack's forgeries of `count` jobs that differ from the honest trace (tokens, or logprobs
    beyond float32 noise: within the claim's wider allowance they are still evidence), and how many
    came out as the honest trace (a cheater sends those too)."""
    rng, jobs = random.Random(seed), honest_jobs(count, seed)
    honest = _generate(models.honest, jobs)
    forged: list[Forged | None] = []
    for start in range(0, count, 32):
        forged += attack.forge(models, jobs[start : start + 32], honest[start : start + 32], rng)
    kept = [
        None if f is None or indistinguishable(f, h, job, "float32") else f
        for job, f, h in zip(jobs, forged, honest, strict=True)
    ]
    return _records(jobs, kept, claim, "attack"), sum(f is None for f in kept)


def _scored(checked: Sequence[Checked], ratios: Sequence[Sequence[float]]) -> list[Scored]:
    return [
        Scored(c.passed, c.positions, evidence.log_ratios(c.cells, ratios) if c.cells else [])
        for c in checked
    ]


# --------------------------------------------------------------------------- the simulation


@dataclass
class Fate:
    quarantined: bool
    by_evidence: bool
    tokens: int
    validations: int


@dataclass(frozen=True)
class Pool:
    """An attack's output: the forgeries that differ from the honest trace, and the share that did."""

    forged: Sequence[Scored]
    differs: float


def simulate(
    honest: Sequence[Scored], pool: Pool, share: float, h: float, limit: int, budget: int,
    rng: random.Random,
) -> Fate:  # fmt: skip
    """One worker: each validation is of a cheated job with probability `share` (a forgery, or the
    honest trace where the attack came out as it), else of an honest trace; it ends quarantined (a
    failed trace, or evidence at the threshold), or after `limit` validations or `budget` tokens."""
    stats = [0.0] * len(evidence.ALTERNATIVES)
    tokens = v = 0
    while v < limit and tokens < budget:
        v += 1
        cheated = pool.forged and rng.random() < share and rng.random() < pool.differs
        trace = rng.choice(pool.forged) if cheated else rng.choice(honest)
        tokens += trace.positions
        if not trace.passed:
            return Fate(True, False, tokens, v)
        stats = evidence.advance(stats, trace.ratios)
        if max(stats) >= h:
            return Fate(True, True, tokens, v)
    return Fate(False, False, tokens, v)


def _row(name: str, fates: Sequence[Fate], traces: str) -> str:
    quarantined = [f for f in fates if f.quarantined]
    tokens = [f.tokens for f in quarantined]
    median = f"{statistics.median(tokens):,.0f}" if tokens else "-"
    worst = f"{max(tokens):,}" if tokens else "-"
    counts = f"{len(quarantined)}/{len(fates)} | {sum(f.by_evidence for f in quarantined)}"
    return f"| {name} | {traces} | {counts} | {median} | {worst} |"


def _attack_rows(
    args: argparse.Namespace, models: Models, attack: Attack, honest: Sequence[Scored],
    ratios: Sequence[Sequence[float]], h: float, rng: random.Random,
) -> list[str]:  # fmt: skip
    records, same = _forgeries(models, attack, args.per_attack, args.claim, 13)
    forged = _scored(check_records(records, "cpu", "float32"), ratios)
    if not forged:
        return [f"| {attack.name} | 0/{same} | | | | | | |"]
    passing = [max(f.ratios) for f in forged if f.passed and f.ratios]
    traces = f"{len(forged)}/{len(forged) + same} | {sum(not f.passed for f in forged)}/{len(forged)}"
    traces += f" | {statistics.fmean(passing):.2f}" if passing else " | -"
    pool = Pool(forged, len(forged) / (len(forged) + same))
    rows = []
    for share, label in ((1.0, "always"), (0.1, "10%")):
        fates = [simulate(honest, pool, share, h, 10**9, args.budget, rng) for _ in range(args.cheaters)]
        rows.append(_row(f"{attack.name}, {label}", fates, traces))
    return rows


def _honest_pool(models: Models, engine: Any, args: argparse.Namespace) -> tuple[Any, list[Scored]]:
    """Calibrate on one set of honest traces, and score a second (held-out) set against it."""
    calibration_jobs = honest_jobs(args.calibrate, seed=11)
    calibration = _records(calibration_jobs, _generate(engine, calibration_jobs), args.claim, "calibration")
    counts = calibration_counts(check_records(calibration, "cpu", "float32"), calibration)
    honest_counts = next(iter(counts.values())) if counts else None
    ratios = evidence.cell_ratios(evidence.honest_distribution(honest_counts))
    print(f"calibrated on {len(calibration)} honest traces, {sum(honest_counts or [])} positions", flush=True)
    pool_jobs = honest_jobs(args.honest_traces, seed=12)
    pool = _records(pool_jobs, _generate(engine, pool_jobs), args.claim, "honest")
    return ratios, _scored(check_records(pool, "cpu", "float32"), ratios)


def run_workers(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    models = Models()
    ratios, honest = _honest_pool(models, models.bf16 if args.claim == "bfloat16" else models.honest, args)
    h = evidence.threshold(args.false_alarm, args.lifetime)
    rng = random.Random(args.seed)
    nobody = Pool([], 0.0)
    fates = [
        simulate(honest, nobody, 0.0, h, args.honest_validations, 10**12, rng) for _ in range(args.workers)
    ]
    lines = _header(args, h, honest, fates)
    chosen = [a for a in ATTACKS if not args.only or any(w in a.name for w in args.only)]
    for attack in [a for a in chosen if args.claim in a.claims]:
        lines += _attack_rows(args, models, attack, honest, ratios, h, rng)
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


def _header(args: argparse.Namespace, h: float, honest: Sequence[Scored], fates: Sequence[Fate]) -> list[str]:
    per_trace = statistics.fmean(t.positions for t in honest) if honest else 0.0
    drift = statistics.fmean(max(t.ratios) for t in honest if t.ratios) if honest else 0.0
    bound = evidence.false_alarm(h, args.honest_validations)
    return [
        f"claimed dtype {args.claim}, validator cpu float32; threshold h = {h:.2f} nats "
        f"(false alarm <= {args.false_alarm:g} per lifetime of {args.lifetime:,} validations)",
        f"honest: {sum(f.quarantined for f in fates)} of {len(fates)} workers quarantined over "
        f"{args.honest_validations:,} validations each ({args.honest_validations * per_trace:,.0f} tokens; "
        f"bound for that lifetime {bound:.2g}); {sum(not t.passed for t in honest)} of {len(honest)} "
        f"held-out honest traces failed alone; {drift:.2f} nats per honest trace",
        "",
        "| attack, forged | forgeries differing | of which caught alone | nats per passing forgery | "
        "cheaters quarantined | of which by evidence | tokens to quarantine (median) | (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]


def add_worker_parsers(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="honest cell counts of trace files, printed and stored with --url")
    cal.add_argument("files", type=Path, nargs="+")
    cal.add_argument("--device", default="cpu")
    cal.add_argument("--dtype", default="float32", help="the validator's dtype (the coordinator's)")
    cal.add_argument("--url", help="a coordinator to store the calibration in")
    cal.add_argument("--token", default="", help="an operator token for --url")
    wk = sub.add_parser("workers", help="simulated honest and cheating workers under the sequential evidence")
    wk.add_argument("--claim", default="bfloat16", help="the dtype every worker claims")
    wk.add_argument("--calibrate", type=int, default=128, help="honest traces of the calibration")
    wk.add_argument("--honest-traces", type=int, default=128, help="held-out honest traces workers draw")
    wk.add_argument("--per-attack", type=int, default=48, help="jobs each attack forges")
    wk.add_argument("--workers", type=int, default=1000, help="simulated honest workers")
    wk.add_argument("--honest-validations", type=int, default=1000, help="validations per honest worker")
    wk.add_argument("--cheaters", type=int, default=200, help="simulated cheaters per attack and share")
    wk.add_argument("--budget", type=int, default=100_000, help="validated tokens a cheater is followed for")
    wk.add_argument("--false-alarm", type=float, default=1e-6)
    wk.add_argument("--lifetime", type=int, default=100_000, help="validations per lifetime, for the bound")
    wk.add_argument("--only", nargs="*", help="attacks whose name contains one of these words")
    wk.add_argument("--threads", type=int, default=1)
    wk.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="honest traces with the worker's engine, written to --out")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", default="float32")
    gen.add_argument("--batch-sizes", default="1,8,32")
    gen.add_argument("--per-batch", default="300", help="traces per batch size (one, or one per size)")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument(
        "--model", default=TINY_MODEL_NAME, help="a model name or folder (default: the bundled one)"
    )
    chk = sub.add_parser("check", help="validate trace files on this device; false positives, headroom, cost")
    chk.add_argument("files", type=Path, nargs="+")
    chk.add_argument("--device", default="cpu")
    chk.add_argument("--dtype", default="float32")
    chk.add_argument("--save", type=Path, help="also write each trace's outcome here (JSONL, gzip)")
    again = sub.add_parser("rejudge", help="saved `check --save` outcomes under the current tolerance table")
    again.add_argument("files", type=Path, nargs="+")
    again.add_argument("--device", default="cuda", help="where the saved check ran (for the printout)")
    again.add_argument("--dtype", default="float32", help="the validator dtype of the saved check")
    fake = sub.add_parser("forge", help="forged traces of chosen attacks, written to --out for `check`")
    fake.add_argument("--only", nargs="+", default=["weights", "temperature", "replay", "logprobs", "pasted"])
    fake.add_argument("--count", type=int, default=256, help="honest jobs each attack forges")
    fake.add_argument("--claim", default="bfloat16", help="the dtype the forgeries claim")
    fake.add_argument("--seed", type=int, default=7)
    fake.add_argument("--out", type=Path, required=True)
    atk = sub.add_parser("attack", help="honest and cheating workers against a running coordinator")
    atk.add_argument("--honest", type=int, default=2000, help="honest traces sent through the coordinator")
    atk.add_argument("--per-attack", type=int, default=1000, help="forged traces per attack claiming float32")
    atk.add_argument(
        "--per-attack-bf16", type=int, default=200, help="forged traces per attack claiming bfloat16"
    )
    atk.add_argument("--batch", type=int, default=32, help="jobs a worker leases and generates at once")
    atk.add_argument("--only", nargs="*", help="attacks whose name contains one of these words")
    atk.add_argument("--claims", nargs="*", help="claimed dtypes to send (default: each attack's)")
    atk.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    atk.add_argument("--work-dir", type=Path, default=Path(".flywheel/bench-trust/attack"))
    add_worker_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        counts = [int(n) for n in args.per_batch.split(",")]
        per_size = counts * len(sizes) if len(counts) == 1 else counts
        records = generate_records(args.device, args.dtype, sizes, per_size, args.model)
        save(records, args.out)
        per_trace = statistics.fmean(r.generate_s for r in records) if records else 0.0
        print(f"wrote {len(records)} traces to {args.out}; {per_trace * 1e3:.2f} ms of generation per trace")
        return 0
    if args.command == "forge":
        save(forge_records(args.only, args.count, args.claim, args.seed), args.out)
        return 0
    if args.command == "check":
        checked = check_records(load(args.files), args.device, args.dtype)
        report_checks(checked, args.device, args.dtype)
        if args.save:
            with gzip.open(args.save, "wt", encoding="utf-8") as out:
                out.writelines(json.dumps(asdict(c)) + "\n" for c in checked)
        return 0
    if args.command == "calibrate":
        return calibrate(args)
    if args.command == "workers":
        return run_workers(args)
    if args.command == "rejudge":
        saved = [Checked(**json.loads(line)) for path in args.files for line in _lines(path)]
        report_checks(rejudge(saved, args.dtype), args.device, args.dtype)
        return 0
    return run_attacks(args)


if __name__ == "__main__":
    raise SystemExit(main())

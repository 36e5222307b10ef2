"""The numbers of the trust policy: how often to validate, and how much honest noise to allow.

Both are pure functions, so the service, the benchmark and the tests read the same rule.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping

# How far a party's logits stray from exact arithmetic, by compute dtype, in logit units, for the
# bundled model; measured with `python -m bench.trust` (generate + check: CPU float32 and bfloat16,
# an H100 in bfloat16 and float32, batch sizes 1 to 128, left padding) and doubled; docs/trust.md.
# A worker decodes token by token; a validator runs one prefill over the whole trace, whose
# bfloat16 error measured larger, so the two sides have their own figures.
WORKER_NOISE = {"float32": 2.5e-4, "bfloat16": 0.3, "float16": 0.3}
VALIDATOR_NOISE = {"float32": 2.5e-4, "bfloat16": 0.75, "float16": 0.75}


def tolerance(worker_dtype: str, validator_dtype: str, noise: Mapping[str, float] | None = None) -> float:
    """eps for a (worker, validator) pair: each side's arithmetic strays from exact on its own. A
    dtype a worker reports that is not listed (or none) is given the widest allowance.

    `noise` is a model's own table (dtype -> logit noise, both sides alike), measured for models
    whose honest noise differs from the bundled model's: deeper models carry larger bfloat16
    errors, so the defaults would flag honest traces of some."""
    if noise:
        widest = max(noise.values())
        return noise.get(worker_dtype, widest) + noise.get(validator_dtype, widest)
    worker = WORKER_NOISE.get(worker_dtype, max(WORKER_NOISE.values()))
    return worker + VALIDATOR_NOISE.get(validator_dtype, max(VALIDATOR_NOISE.values()))


def check_probability(trust: int, floor: float) -> float:
    """New workers are validated on every trace; after N consecutive passes, about one trace in N,
    never less than `floor`."""
    if trust <= 1:
        return 1.0
    return max(floor, 1.0 / trust)


def drawn(trace_id: uuid.UUID, probability: float) -> bool:
    """The spot-check draw for a trace: fixed per trace (a re-run of the decision agrees with the
    first), and unpredictable to the worker, which never learns the trace's id."""
    if probability >= 1.0:
        return True
    digest = hashlib.sha256(b"flywheel-spot-check:" + trace_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") < probability * 2**64

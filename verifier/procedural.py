"""reasoning-gym tasks: extract the answer, let the dataset's own `score_answer` judge it.

Scoring runs in a sandboxed service (verifier/pool.py) because several scorers evaluate the
answer text (`eval`, SymPy's `parse_expr`); there it also runs under an eval guard
(verifier/scoring/safe_eval.py) so an answer cannot execute code to forge its score.
"""

from __future__ import annotations

import re
from typing import Any

from shared.protocol import Verdict, VerifierSpec
from verifier.math import MAX_COMPLETION_CHARS, boxed_answers
from verifier.pool import ServiceSpec, get_pool

MAX_ANSWER_CHARS = 20_000
PASS_SCORE = 1.0
SERVICE = ServiceSpec("verifier.scoring.rg_handler", timeout_s=10.0, memory_mb=4096, cpu_s=10.0)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer(completion: str) -> str | None:
    """The last <answer>...</answer>, else the last \\boxed{...}, after any </think>."""
    text = completion.rsplit("</think>", 1)[-1]
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return str(tagged[-1]).strip()
    boxes = boxed_answers(text)
    return boxes[-1].strip() if boxes else None


def item_reference(config: dict[str, Any]) -> dict[str, Any] | None:
    """What identifies the dataset item: a stored `entry`, or `seed`/`size`/`index` (+ `options`)
    to regenerate it; None if the config has neither (or the wrong types)."""
    if not isinstance(config.get("dataset"), str):
        return None
    if isinstance(config.get("entry"), dict):
        return {"dataset": config["dataset"], "entry": config["entry"]}
    numbers = [config.get(k) for k in ("seed", "size", "index")]
    counts = [n for n in numbers if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    if len(counts) != 3 or counts[2] >= counts[1] or not isinstance(config.get("options", {}), dict):
        return None
    reference = {k: config[k] for k in ("dataset", "seed", "size", "index")}
    return reference | {"options": config.get("options", {})}


def verify_reasoning_gym(spec: VerifierSpec, answer: str) -> Verdict:
    reference = item_reference(spec.config)
    if reference is None:
        return _zero(
            "reasoning_gym spec needs config.dataset (str) and config.entry (object) "
            "or config.seed, config.size and config.index (integers, index < size)"
        )
    dataset = reference["dataset"]
    if len(answer) > MAX_COMPLETION_CHARS:
        return _zero(f"completion longer than {MAX_COMPLETION_CHARS} characters")
    extracted = extract_answer(answer)
    if extracted is None:
        return _zero("no <answer></answer> or \\boxed{} answer")
    if len(extracted) > MAX_ANSWER_CHARS:
        return _zero(f"answer longer than {MAX_ANSWER_CHARS} characters")
    payload: dict[str, Any] = {**reference, "answer": extracted}
    reply = get_pool(SERVICE).call(payload)
    if reply.result is None:
        return _zero(f"scorer failed: {reply.failure}", {"dataset": dataset})
    score = float(reply.result.get("score", 0.0))
    reason = str(reply.result.get("reason", "")) or ("" if score >= PASS_SCORE else "partial or wrong answer")
    return Verdict(score=score, passed=score >= PASS_SCORE, reason=reason, details={"dataset": dataset})


def _zero(reason: str, details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(score=0.0, passed=False, reason=reason, details=details or {})

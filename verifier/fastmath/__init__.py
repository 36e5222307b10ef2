"""The fast symbolic path: common MATH answer shapes decided in-process, before math-verify.

`fast_equal(gold, answer, percent)` returns True, False, or None (undecided: ask math-verify).
A parser of our own (`parse.py`) reads a small LaTeX subset without evaluating anything;
values are exact elements of Q[sqrt(n), pi, 1/pi, e, 1/e] (`surd.py`); variables are tested at
fresh random points (`compare.py`). Anything outside that subset, or any form that math-verify
reads differently from ordinary notation, is undecided rather than guessed.
"""

from verifier.fastmath.compare import fast_equal

__all__ = ["fast_equal"]

"""Checked replacements for `eval`, `compile` and `exec`, installed while a scorer reads an answer.

Several reasoning-gym scorers pass the model's answer to `eval` (a list of lists, a board) or to
SymPy's `parse_expr`, which compiles and evaluates text. In the sandbox that cannot hurt the
host, but it would let an answer run code that forges its own score. While the guard is
installed, only plain data and arithmetic can be evaluated: literals, names that do not start
with an underscore and are not dangerous built-ins, operators, and calls of such names. No
attribute access, subscripts, lambdas, comprehensions or f-strings; `exec` runs only the one
fixed statement SymPy's parser uses to build its namespace.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
from collections.abc import Iterator
from typing import Any

_ALLOWED_NODES = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)
_DENIED_NAMES = frozenset(
    [
        "eval",
        "exec",
        "compile",
        "open",
        "input",
        "breakpoint",
        "help",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "dir",
        "type",
        "object",
        "super",
        "memoryview",
        "exit",
        "quit",
        "classmethod",
        "staticmethod",
        "property",
        "lambdify",
        "preview",
        "init_printing",
        "init_session",
        "plot",
        "var",
        "symbols_from_string",
    ]
)
MAX_SOURCE = 10_000
TRUSTED_EXEC = frozenset({"from sympy import *"})


class UnsafeExpression(ValueError):
    """The text asks for more than data and arithmetic."""


def check(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UnsafeExpression(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Name) and (node.id.startswith("_") or node.id in _DENIED_NAMES):
            raise UnsafeExpression(f"name {node.id!r} is not allowed")
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            raise UnsafeExpression("bytes are not allowed")
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            raise UnsafeExpression("this keyword argument is not allowed")


def _parsed(source: Any) -> ast.AST:
    if isinstance(source, ast.AST):
        return source
    if isinstance(source, bytes):
        source = source.decode("utf-8")
    if not isinstance(source, str) or len(source) > MAX_SOURCE:
        raise UnsafeExpression("only short source text can be evaluated")
    try:
        tree: ast.AST = builtins.compile(source.strip(), "<answer>", "eval", ast.PyCF_ONLY_AST)
        return tree
    except SyntaxError as exc:
        raise UnsafeExpression("not an expression") from exc


class Guard:
    """The checked built-ins; code objects are accepted only if this guard compiled them."""

    def __init__(self) -> None:
        self.real_eval = builtins.eval
        self.real_compile = builtins.compile
        self.real_exec = builtins.exec
        self.compiled: set[int] = set()
        self.keep: list[Any] = []  # holds compiled code alive so ids cannot be reused

    def compile(self, source: Any, filename: str = "<string>", mode: str = "eval", *a: Any, **kw: Any) -> Any:
        flags = a[0] if a else kw.get("flags", 0)
        if flags & ast.PyCF_ONLY_AST:
            # Parsing to a tree runs nothing (ast.parse, SymPy's evaluateFalse); code is checked later.
            return self.real_compile(source, filename, mode, *a, **kw)
        if mode != "eval":
            raise UnsafeExpression("only expressions can be compiled")
        tree = _parsed(source)
        check(tree)
        code = self.real_compile(tree, filename, mode, *a, **kw)  # type: ignore[call-overload]
        self.compiled.add(id(code))
        self.keep.append(code)
        return code

    def eval(self, source: Any, globals_: Any = None, locals_: Any = None) -> Any:
        if not (hasattr(source, "co_code") and id(source) in self.compiled):
            source = self.compile(source)
        return self.real_eval(source, globals_, locals_)

    def exec(self, source: Any, *args: Any) -> Any:
        # SymPy's parse_expr builds its namespace this way on every call; nothing else may exec.
        if source in TRUSTED_EXEC:
            return self.real_exec(source, *args)
        raise UnsafeExpression("exec is not allowed while scoring")


@contextlib.contextmanager
def installed() -> Iterator[Guard]:
    guard = Guard()
    saved = builtins.eval, builtins.compile, builtins.exec
    builtins.eval, builtins.compile, builtins.exec = guard.eval, guard.compile, guard.exec  # type: ignore[assignment]
    try:
        yield guard
    finally:
        builtins.eval, builtins.compile, builtins.exec = saved

"""Tasks from files: a JSONL file of ``{"prompt", "answer"}`` rows, scored by one of :data:`VERIFIERS`.

A file task has the built-in tasks' interface (:class:`~entrolab.lab.tasks.Task`); :func:`entrolab.lab.tasks.
resolve_task` returns one when the task name is a ``.jsonl`` path.  Rows are untrusted input: every field is checked
on load (errors name the file, the line and the field) and completions are scored by bounded parsers.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from entrolab.lab.tasks import MAX_COMPLETION_CHARS, Example

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_TASK_FILE_BYTES",
    "VERIFIERS",
    "FileTask",
    "load_task_file",
    "parse_number",
]

VERIFIERS = ("exact", "numeric", "regex", "math")
"""How a file task scores a completion against a row's ``answer``:

- ``exact``: the stripped completion equals the stripped answer;
- ``numeric``: both are decimal numbers (optional sign, digits, optional fraction; no exponent, at most
  ``MAX_NUMBER_CHARS`` characters) and equal as exact rationals (``0.50`` = ``.5`` = ``0.5``);
- ``regex``: the answer is a regular expression (Python syntax) that must match the whole stripped completion.
  Completions are cut at ``MAX_COMPLETION_CHARS`` characters, and matching goes through the ``regex`` package (a lab
  dependency) with a ``REGEX_TIMEOUT_S`` time limit, so a pattern prone to catastrophic backtracking scores 0 instead
  of hanging the run (the standard ``re`` module, used when ``regex`` is missing, has no such limit);
- ``math``: mathematical equivalence through the ``math-verify`` package (``pip install math-verify``).
"""
MAX_NUMBER_CHARS = 40
MAX_TASK_FILE_BYTES = 256 * 2**20
MAX_LINE_BYTES = 2**20
"""A task file's line is at most this long (a 5 MB line is refused, not parsed)."""
MAX_PROMPT_CHARS = 2048
"""A prompt is at most this long: the built-in model's position table is sized from the longest prompt."""
MAX_ANSWER_CHARS = 1024
REGEX_TIMEOUT_S = 0.05
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_number(text: object) -> Fraction | None:
    """A plain decimal number (``-3``, ``0.25``, ``.5``, ``+7.``) as an exact :class:`~fractions.Fraction`, else
    ``None``.  Exponents, ``inf``/``nan``, thousands separators and anything longer than ``MAX_NUMBER_CHARS`` are
    refused (model output is untrusted: no ``float()`` of arbitrary text).

    >>> parse_number(" 0.50 "), parse_number("1e9"), parse_number("-.5")
    (Fraction(1, 2), None, Fraction(-1, 2))
    """
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS + 8:
        return None
    s = text.strip()
    if len(s) > MAX_NUMBER_CHARS or not s.isascii() or not _NUMBER.fullmatch(s):
        return None
    return Fraction(s)


def _compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by the ``regex`` package when installed (it has match time limits), else by ``re``."""
    try:
        import regex
    except ImportError:
        return re.compile(pattern)
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise re.error(str(exc)) from None


def _fullmatch(pattern: Any, text: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(text) is not None
    try:
        return pattern.fullmatch(text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        return False


def _math_verify() -> tuple[Callable[..., Any], Callable[..., Any]]:
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ValueError(
            "verifier 'math' needs the math-verify package (pip install math-verify); use exact, numeric or regex"
        ) from None
    return parse, verify


MATH_TIMEOUT_S = 3.0
"""The ``math`` verifier's time limit per check."""


def _math_check(gold: str, text: str) -> bool:
    parse, verify = _math_verify()
    try:
        return bool(verify(parse(gold), parse(text)))
    except Exception:  # math-verify raises on unparsable model output: a wrong answer, not a crash
        return False


class _MathChecker:
    """``math-verify`` in a separate process with a wall-clock limit per check: it works from any thread or process
    of the caller (math-verify's own limits use signals, which only the main thread has), and a hostile completion
    that would take seconds costs at most :data:`MATH_TIMEOUT_S` and scores 0 (the stuck worker is terminated)."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._lock = threading.Lock()

    def equivalent(self, gold: str, text: str) -> bool:
        import multiprocessing

        with self._lock:
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(1)
            pending = self._pool.apply_async(_math_check, (gold, text))
            try:
                return bool(pending.get(timeout=MATH_TIMEOUT_S))
            except multiprocessing.TimeoutError:
                self._pool.terminate()
                self._pool = None
                return False


_MATH = _MathChecker()


@dataclass(frozen=True)
class FileTask:
    """A task read from a JSONL file of ``{"prompt": ..., "answer": ...}`` rows, scored by one of :data:`VERIFIERS`.

    The policy continues ``prompt`` verbatim (no chat template).  Reward 1 for a correct completion, else 0.  The
    warm start trains on ``answer`` itself, except with ``regex`` (the answer is a pattern, not a completion).
    """

    rows: tuple[tuple[str, str], ...]
    verifier: str
    name: str
    description: str = "prompts and answers from a JSONL file"
    alphabet: str = ""
    max_answer_chars: int = 32
    has_solutions: bool = True
    max_prompt_chars: int = 0
    _patterns: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def sample(self, rng: random.Random) -> Example:
        prompt, answer = self.rows[rng.randrange(len(self.rows))]
        return Example(prompt=prompt, answer=answer)

    def solution(self, example: Example, rng: random.Random) -> str:
        if not self.has_solutions:
            raise ValueError("a regex task has no reference completions (its answers are patterns)")
        return example.answer

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.answer_key(example, completion) is not None else 0.0

    def vote_key(self, example: Example, completion: str) -> str | None:
        """The stripped completion (``numeric``: its exact value), ``None`` when empty or not a number."""
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
            return None
        text = completion.strip()
        if self.verifier == "numeric":
            value = parse_number(text)
            return None if value is None else str(value)
        return text or None

    def answer_key(self, example: Example, completion: str) -> str | None:
        """The canonical correct answer, or ``None``; a completion longer than ``MAX_COMPLETION_CHARS`` is wrong
        (never judged by its prefix)."""
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
            return None
        text = completion.strip()
        if self.verifier == "exact":
            return text if text == example.answer.strip() else None
        if self.verifier == "numeric":
            value = parse_number(text)
            return str(value) if value is not None and value == parse_number(example.answer) else None
        if self.verifier == "regex":
            pattern = self._patterns.get(example.answer)
            if pattern is None:
                pattern = self._patterns.setdefault(example.answer, _compile_pattern(example.answer))
            return text if _fullmatch(pattern, text) else None
        return text if _MATH.equivalent(example.answer, text) else None


def _json_line(line: str, where: str) -> Any:
    """One JSONL line, with every way it can fail named by file and line (nesting too deep for the parser's
    recursion, an integer beyond Python's digit limit, invalid JSON)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than int() converts
        raise ValueError(f"{where}: invalid JSON value: {exc}") from None


def load_task_file(path: str | Path, *, verifier: str = "exact") -> FileTask:
    """A :class:`FileTask` from a JSONL file; errors name the file, the line and the field.

    Each non-empty line is a JSON object with string fields ``prompt`` (non-empty) and ``answer``; other fields are
    ignored.  ``numeric`` answers must be plain decimal numbers, ``regex`` answers valid patterns.
    """
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}; got {verifier!r}")
    if verifier == "math":
        _math_verify()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"task file {p}: no such file")
    if p.stat().st_size > MAX_TASK_FILE_BYTES:
        raise ValueError(f"task file {p}: larger than {MAX_TASK_FILE_BYTES} bytes")
    rows: list[tuple[str, str]] = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}, line {lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{where}: longer than {MAX_LINE_BYTES} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not UTF-8 (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            obj = _json_line(line, where)
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object with fields 'prompt' and 'answer'")
            for key in ("prompt", "answer"):
                if key not in obj:
                    raise ValueError(f"{where}: field {key!r} is missing")
                if not isinstance(obj[key], str):
                    raise ValueError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
            if not obj["prompt"]:
                raise ValueError(f"{where}: field 'prompt' is empty")
            for key, limit in (("prompt", MAX_PROMPT_CHARS), ("answer", MAX_ANSWER_CHARS)):
                if len(obj[key]) > limit:
                    raise ValueError(
                        f"{where}: field {key!r} has {len(obj[key])} characters, more than {limit} (the lab's "
                        "models have short windows; split or shorten it)"
                    )
            if verifier == "numeric" and parse_number(obj["answer"]) is None:
                raise ValueError(f"{where}: field 'answer' must be a plain decimal number, got {obj['answer']!r}")
            if verifier == "regex":
                try:
                    _compile_pattern(obj["answer"])
                except re.error as exc:
                    raise ValueError(f"{where}: field 'answer' is not a valid regular expression: {exc}") from None
            rows.append((obj["prompt"], obj["answer"]))
    if not rows:
        raise ValueError(f"task file {p}: no rows")
    texts = [t for row in rows for t in row]
    alphabet = "".join(sorted(set("".join(texts)) | set("0123456789+-.")))
    longest = max(len(a) for _, a in rows)
    return FileTask(
        rows=tuple(rows),
        verifier=verifier,
        name=p.stem,
        description=f"{len(rows)} rows from {p.name}, verifier {verifier}",
        alphabet=alphabet,
        max_answer_chars=max(8, longest) if verifier != "regex" else 32,
        has_solutions=verifier != "regex",
        max_prompt_chars=max(len(q) for q, _ in rows),
    )

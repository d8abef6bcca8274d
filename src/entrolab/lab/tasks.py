"""Built-in verifiable tasks for the lab: procedurally generated, seeded, scored by a parser that never ``eval``\\s.

Four tasks ship with entrolab, chosen so that the entropy story shows on a laptop:

- ``sort`` (the default): sort ten given digits (``5071930264=`` -> ``0012345679``).  One correct answer and a skill
  the built-in model partly has after its warm start; with a warm start on an imperfect demonstrator
  (``sft_correct``) the policy can solve nearly every prompt but spreads over near misses, which RL sharpens -- and,
  on the prompts it does not learn, narrows (see :class:`SortTask`).
- ``arithmetic``: evaluate a short integer expression (``3+4*2-5=`` -> ``6``).  One correct answer per prompt:
  accuracy is what matters, and entropy collapse shows as a policy that stops trying alternatives.
- ``countdown``: reach a target with given numbers, each used once (``3,7,4:25=`` -> ``3*7+4``, or ``4+7*3``, ...).
  Many answers are correct, so exploration shows in pass@k and in the number of *distinct* correct answers.
- ``calculator``: multi-turn arithmetic with a tool (the substrate of the tool-use methods).

Model output is untrusted input.  :func:`parse_expression` is a whitelisting recursive-descent parser with bounds on
length, nesting depth, literal size and intermediate magnitude; anything else (exponents, non-ASCII, names, huge
lines) is rejected in time linear in at most ``MAX_EXPRESSION_CHARS`` characters and scores 0.

Every task exposes the same small interface (:class:`Task`): ``sample(rng)`` draws an :class:`Example`,
``solution(example, rng)`` writes one correct completion (for supervised warm-start), optionally
``near_miss(example, rng)`` a plausible wrong one (for a warm start on an imperfect demonstrator),
``score(example, completion)`` returns the reward in ``[0, 1]`` and ``answer_key(example, completion)`` a canonical
form of a correct answer (to count distinct ones).  :func:`make_splits` builds disjoint, seeded train/eval prompt sets.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "TASKS",
    "ArithmeticTask",
    "CalculatorTask",
    "CountdownTask",
    "Example",
    "SortTask",
    "Task",
    "get_task",
    "make_splits",
    "parse_expression",
    "parse_integer",
    "resolve_task",
]

_FILE_TASK_NAMES = ("VERIFIERS", "FileTask", "load_task_file", "parse_number")


def __getattr__(name: str) -> Any:
    """File tasks live in :mod:`entrolab.lab.task_files` (which imports this module); the names stay importable
    from here, resolved on first use so there is no import cycle."""
    if name in _FILE_TASK_NAMES:
        from entrolab.lab import task_files

        return getattr(task_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_EXPRESSION_CHARS = 64
"""Completions longer than this (after stripping) are rejected before any parsing."""
MAX_DEPTH = 8
"""Maximum parenthesis nesting."""
MAX_LITERAL_DIGITS = 6
"""Maximum digits in one integer literal."""
MAX_MAGNITUDE = 10**12
"""Maximum absolute value of any intermediate result."""
MAX_COMPLETION_CHARS = 256
"""A completion longer than this many characters scores 0 (it is never judged by its prefix)."""

_ALLOWED = frozenset("0123456789+-*() ")


@dataclass(frozen=True)
class Example:
    """One prompt with what its verifier needs.

    ``prompt`` is the text the policy continues; ``answer`` a reference answer (arithmetic: the value; countdown:
    one solution); ``data`` the verifier's inputs (for example the numbers and the target).
    """

    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class _ParseError(Exception):
    pass


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*; term := factor ('*' factor)*;
    factor := INT | '(' expr ')'``, collecting the literals used."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.literals: list[int] = []

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expr(self) -> int:
        value = self.term()
        while (op := self.peek()) in ("+", "-") and op:
            self.pos += 1
            rhs = self.term()
            value = self.bound(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> int:
        value = self.factor()
        while self.peek() == "*":
            self.pos += 1
            value = self.bound(value * self.factor())
        return value

    def factor(self) -> int:
        c = self.peek()
        if c == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _ParseError("too deep")
            self.pos += 1
            value = self.expr()
            if self.peek() != ")":
                raise _ParseError("missing )")
            self.pos += 1
            self.depth -= 1
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        digits = self.text[start : self.pos]
        if not digits:
            raise _ParseError(f"expected a number at {start}")
        if len(digits) > MAX_LITERAL_DIGITS or (len(digits) > 1 and digits[0] == "0"):
            raise _ParseError("bad literal")
        value = int(digits)
        self.literals.append(value)
        return value

    @staticmethod
    def bound(value: int) -> int:
        if abs(value) > MAX_MAGNITUDE:
            raise _ParseError("magnitude")
        return value


def parse_expression(text: object) -> tuple[int, list[int]] | None:
    """Value and literals of an integer expression over ``+ - * ( )``, or ``None`` if it is not one.

    Accepted: ASCII digits, ``+``, ``-`` (binary only), ``*``, parentheses and spaces; at most
    ``MAX_EXPRESSION_CHARS`` characters, ``MAX_DEPTH`` nesting, ``MAX_LITERAL_DIGITS`` digits per literal (no leading
    zeros) and ``MAX_MAGNITUDE`` for every intermediate value.  Never calls ``eval``; cost is linear in the (bounded)
    length, so a hostile completion is rejected quickly.

    Examples
    --------
    >>> parse_expression("3*7+4")
    (25, [3, 7, 4])
    >>> parse_expression("2**99999") is None, parse_expression("__import__('os')") is None
    (True, True)
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS or not set(text) <= _ALLOWED:
        return None
    parser = _Parser(text)
    try:
        value = parser.expr()
    except _ParseError:
        return None
    if parser.peek() != "":
        return None
    return value, parser.literals


def parse_integer(text: object) -> int | None:
    """An optionally negative decimal integer of at most 12 digits (surrounding spaces allowed), else ``None``.

    >>> parse_integer(" -42 "), parse_integer("4 2"), parse_integer("1e9")
    (-42, None, None)
    """
    if not isinstance(text, str) or len(text) > 32:
        return None
    s = text.strip()
    body = s[1:] if s.startswith("-") else s
    if not body or len(body) > 12 or not body.isascii() or not body.isdigit():
        return None
    return int(s)


class Task(Protocol):
    """What the lab needs from a task (see the module docstring)."""

    name: str
    description: str
    alphabet: str
    """Every character a prompt or a correct completion may contain."""
    max_answer_chars: int
    """An upper bound on the length of a correct completion (the lab generates a few tokens more)."""
    has_solutions: bool
    """Whether :meth:`solution` can write a correct completion (the supervised warm start needs it)."""

    def sample(self, rng: random.Random) -> Example: ...

    def solution(self, example: Example, rng: random.Random) -> str: ...

    def score(self, example: Example, completion: str) -> float: ...

    def answer_key(self, example: Example, completion: str) -> str | None: ...

    def vote_key(self, example: Example, completion: str) -> str | None:
        """The completion's final answer in canonical form, right or wrong (``None`` when it has none): what
        majority voting compares when no label is used (ETTRL's test-time RL)."""
        ...


def _random_expression(numbers: list[int], rng: random.Random, ops: str) -> str:
    """A random fully-formed expression over ``numbers`` in the given order, with optional parentheses."""
    parts = [str(n) for n in numbers]
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        op = rng.choice(ops)
        left, right = parts[i], parts[i + 1]
        bracket = rng.random() < 0.3 and len(parts) > 2
        merged = f"({left}{op}{right})" if bracket else f"{left}{op}{right}"
        parts[i : i + 2] = [merged]
    return parts[0]


@dataclass(frozen=True)
class ArithmeticTask:
    """Multi-step integer arithmetic with one correct answer: ``3+4*2-5=`` -> ``6``.

    ``num_ops`` (default 2) operators drawn from ``+ - *`` over single digits, usual precedence (``*`` first).
    Reward 1 when the completion is exactly the value (an optionally negative integer, surrounding spaces ignored),
    else 0.
    """

    num_ops: int = 2
    name: str = "arithmetic"
    description: str = "evaluate an integer expression (one correct answer)"
    alphabet: str = "0123456789+-*="
    max_answer_chars: int = 4
    has_solutions: bool = True

    def sample(self, rng: random.Random) -> Example:
        numbers = [rng.randrange(10) for _ in range(self.num_ops + 1)]
        expr = "".join(str(n) + (rng.choice("+-*") if i < self.num_ops else "") for i, n in enumerate(numbers))
        parsed = parse_expression(expr)
        assert parsed is not None
        return Example(prompt=expr + "=", answer=str(parsed[0]), data={"value": parsed[0]})

    def solution(self, example: Example, rng: random.Random) -> str:
        return example.answer

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if parse_integer(completion) == example.data["value"] else 0.0

    def answer_key(self, example: Example, completion: str) -> str | None:
        value = parse_integer(completion)
        return str(value) if value == example.data["value"] else None

    def vote_key(self, example: Example, completion: str) -> str | None:
        value = parse_integer(completion)
        return None if value is None else str(value)


@dataclass(frozen=True)
class CountdownTask:
    """Countdown: combine the given numbers, each exactly once, with ``+ - *`` and parentheses to hit the target.

    Prompt ``3,7,4:25=``; ``3*7+4``, ``4+3*7`` and ``7*3+4`` are all correct, so a policy that keeps several
    solutions alive scores higher pass@k and more distinct correct answers.  Targets are drawn by evaluating a random
    expression over the numbers and kept in ``[1, max_target]``.
    """

    count: int = 3
    max_number: int = 9
    max_target: int = 99
    name: str = "countdown"
    description: str = "reach a target with given numbers, each used once (many correct answers)"
    alphabet: str = "0123456789+-*(),:="
    max_answer_chars: int = 12
    has_solutions: bool = True

    def sample(self, rng: random.Random) -> Example:
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            expr = _random_expression(rng.sample(numbers, len(numbers)), rng, "+-*")
            parsed = parse_expression(expr)
            assert parsed is not None
            if 1 <= parsed[0] <= self.max_target:
                prompt = ",".join(map(str, numbers)) + f":{parsed[0]}="
                return Example(prompt=prompt, answer=expr, data={"numbers": numbers, "target": parsed[0]})

    def solution(self, example: Example, rng: random.Random) -> str:
        numbers, target = example.data["numbers"], example.data["target"]
        for _ in range(200):  # a random correct solution: SFT sees the variety of answers
            expr = _random_expression(rng.sample(numbers, len(numbers)), rng, "+-*")
            parsed = parse_expression(expr)
            if parsed is not None and parsed[0] == target:
                return expr
        return example.answer

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.answer_key(example, completion) is not None else 0.0

    def answer_key(self, example: Example, completion: str) -> str | None:
        parsed = parse_expression(completion)
        if parsed is None:
            return None
        value, literals = parsed
        if value != example.data["target"] or sorted(literals) != sorted(example.data["numbers"]):
            return None
        return completion.replace(" ", "")

    def vote_key(self, example: Example, completion: str) -> str | None:
        """The value reached with exactly the given numbers (a wrong use of the numbers has no answer)."""
        parsed = parse_expression(completion)
        if parsed is None or sorted(parsed[1]) != sorted(example.data["numbers"]):
            return None
        return str(parsed[0])


@dataclass(frozen=True)
class CalculatorTask:
    """Multi-turn arithmetic with a calculator tool: ``37*41+12=`` -> ``[37*41]1517;[1517+12]1529;#1529``.

    The policy calls the tool by writing an expression in brackets; when it writes ``]`` the environment appends the
    value and ``;`` (tokens the policy conditions on but is never trained on), then the policy goes on.  The answer
    is the integer after the last ``#``.  Two-digit products are beyond what the built-in model computes reliably
    in its head, so using the tool pays; the tool evaluates with :func:`parse_expression` (whitelisted, bounded) and
    answers ``?;`` to anything else.  The multi-turn substrate for tool-use methods (agentic AEPO, SPEAR, EMPG).
    """

    name: str = "calculator"
    description: str = "two-digit arithmetic with a calculator tool: write [expression] to get its value"
    alphabet: str = "0123456789+-*=[];#?"
    max_answer_chars: int = 36
    has_solutions: bool = True
    tool_call_end: str = "]"

    def sample(self, rng: random.Random) -> Example:
        a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(1, 99)
        value = a * b + c
        return Example(prompt=f"{a}*{b}+{c}=", answer=str(value), data={"value": value, "terms": (a, b, c)})

    def solution(self, example: Example, rng: random.Random) -> str:
        a, b, c = example.data["terms"]
        return f"[{a}*{b}]{a * b};[{a * b}+{c}]{a * b + c};#{a * b + c}"

    def tool(self, text: str) -> str:
        """The environment's reply to a completion that just closed a call: the value of the expression after the
        last ``[``, then ``;``; ``?;`` when it does not parse."""
        start = text.rfind("[")
        parsed = parse_expression(text[start + 1 : -1]) if start >= 0 and text.endswith("]") else None
        return "?;" if parsed is None else f"{parsed[0]};"

    def vote_key(self, example: Example, completion: str) -> str | None:
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS or "#" not in completion:
            return None  # a completion over the limit is wrong, never judged by its prefix
        value = parse_integer(completion.rsplit("#", 1)[1])
        return None if value is None else str(value)

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.answer_key(example, completion) is not None else 0.0

    def answer_key(self, example: Example, completion: str) -> str | None:
        key = self.vote_key(example, completion)
        return key if key == str(example.data["value"]) else None


@dataclass(frozen=True)
class SortTask:
    """Sort the digits: ``5071930264=`` -> ``0012345679``.  One correct answer, a skill the built-in model learns
    on most prompts but not all.

    The lab's default task, paired with a warm start on an imperfect demonstrator (``sft_correct`` < 1): most of
    its demonstrations make one slip, :meth:`near_miss` (two neighbouring digits swapped), so the warm-started policy
    *can* sort (pass@16 near 1) but spreads its probability over the right answer and its near misses (pass@1 near
    ``sft_correct``) -- the regime in which RL sharpens a policy and spends its entropy doing it.  Ten digits (not
    fewer) so that the built-in model does not learn every prompt in a short run: on the prompts it does not learn,
    RL collapses onto a wrong answer the warm start only sometimes gave, and pass@k at large k ends below the warm
    start's, as the papers report for LLMs (Yue et al., arXiv 2504.13837).  (Chosen on training prompts with seeds
    100-104, GRPO, 60 steps: the training pass@8 goes 0.975 -> 0.960 at 6 digits, 0.987 -> 0.935 at 8 and
    0.971 -> 0.820 at 10, while the training accuracy rises 0.56 -> 0.89, 0.59 -> 0.82 and 0.54 -> 0.67.)

    ``length`` sets the number of digits (2 to 32).
    """

    length: int = 10
    name: str = "sort"
    description: str = "sort the given digits (one correct answer)"
    alphabet: str = "0123456789="
    max_answer_chars: int = 6
    has_solutions: bool = True
    demonstrator_accuracy: float = 0.25
    """The lab's default ``sft_correct`` for this task: a quarter of the warm start's demonstrations are right."""

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or not 2 <= self.length <= 32:
            raise ValueError(f"length must be an int in [2, 32], got {self.length!r}")
        object.__setattr__(self, "max_answer_chars", self.length)

    def sample(self, rng: random.Random) -> Example:
        digits = "".join(str(rng.randrange(10)) for _ in range(self.length))
        return Example(prompt=digits + "=", answer="".join(sorted(digits)), data={"digits": digits})

    def solution(self, example: Example, rng: random.Random) -> str:
        return example.answer

    def near_miss(self, example: Example, rng: random.Random) -> str:
        """A plausible wrong answer: the sorted digits with one pair of unequal neighbours swapped (the correct
        answer itself when every digit is the same)."""
        a = list(example.answer)
        pairs = [i for i in range(len(a) - 1) if a[i] != a[i + 1]]
        if pairs:
            i = rng.choice(pairs)
            a[i], a[i + 1] = a[i + 1], a[i]
        return "".join(a)

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if self.answer_key(example, completion) is not None else 0.0

    def answer_key(self, example: Example, completion: str) -> str | None:
        return example.answer if self.vote_key(example, completion) == example.answer else None

    def vote_key(self, example: Example, completion: str) -> str | None:
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
            return None
        text = completion.strip()
        return text if text.isascii() and text.isdigit() else None


# frozen dataclasses expose the protocol attributes read-only, which mypy does not equate with a plain attribute
TASKS: dict[str, Callable[[], Task]] = {
    "arithmetic": ArithmeticTask,  # type: ignore[dict-item]
    "countdown": CountdownTask,  # type: ignore[dict-item]
    "calculator": CalculatorTask,  # type: ignore[dict-item]
    "sort": SortTask,  # type: ignore[dict-item]
}


def get_task(name: str) -> Task:
    """A built-in task by name; an unknown name raises ``ValueError`` listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


def resolve_task(task: str, *, verifier: str = "exact") -> Task:
    """A built-in task by name, or a :class:`FileTask` when ``task`` names a ``.jsonl`` file."""
    if task.endswith(".jsonl") or (task not in TASKS and Path(task).is_file()):
        from entrolab.lab.task_files import load_task_file  # task_files builds on this module

        return load_task_file(task, verifier=verifier)  # type: ignore[return-value]
    return get_task(task)


def make_splits(task: Task, *, seed: int, num_eval: int, max_tries: int = 100_000) -> tuple[list[Example], set[str]]:
    """A seeded held-out set of ``num_eval`` distinct prompts, and the set of their texts (the train sampler skips
    them, so train and eval never share a prompt)."""
    rng = random.Random(f"eval-{seed}")
    examples: list[Example] = []
    seen: set[str] = set()
    for _ in range(max_tries):
        if len(examples) == num_eval:
            break
        ex = task.sample(rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            examples.append(ex)
    if len(examples) < num_eval:
        raise ValueError(
            f"task {task.name!r} has fewer than eval_prompts={num_eval} distinct prompts (and training needs some "
            "left over); lower eval_prompts"
        )
    return examples, seen


def sample_train(task: Task, rng: random.Random, exclude: set[str], *, max_tries: int = 10_000) -> Example:
    """A training example whose prompt is not in ``exclude`` (the held-out prompts)."""
    for _ in range(max_tries):
        ex = task.sample(rng)
        if ex.prompt not in exclude:
            return ex
    raise ValueError(f"task {task.name!r}: every sampled prompt is held out; use a smaller eval set")

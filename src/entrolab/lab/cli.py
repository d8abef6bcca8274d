"""``entrolab lab`` and ``entrolab report``: the command line of the entropy lab.

Every field of :class:`~entrolab.lab.trainer.LabConfig` is an option, documented by the field's docstring.  Values
come from, in increasing priority: the defaults, ``--quick``, ``--config FILE`` (TOML or YAML, safe loaders), and the
flags given on the command line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from entrolab.lab.presets import PRESETS, preset_from_mapping
from entrolab.lab.trainer import LabConfig, LabError, run_lab, same_settings

__all__ = ["QUICK", "load_config_file", "main", "report_main"]

QUICK: dict[str, Any] = {
    # KL-Cov, not Clip-Cov: the lab-scaled Clip-Cov is bistable and can unlearn on a smoke run's small batches
    "methods": ("grpo", "kl_cov"),
    "seeds": 1,
    "steps": 20,
    "prompts_per_step": 16,
    "eval_every": 10,
    "eval_prompts": 32,
    "eval_samples": 8,
    "sft_steps": 300,
    "checkpoint_every": 10,
}
"""``--quick``: a smoke run (about 30 s on a 2-core CPU)."""


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of LabConfig's fields (the string literal after each annotated assignment)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(LabConfig)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
        if is_field and is_doc:
            docs[node.target.id] = plain_text(" ".join(nxt.value.value.split()))  # type: ignore[union-attr]
    return docs


def plain_text(doc: str) -> str:
    """A docstring fragment as a terminal shows it: ````x```` -> ``x``, ``:func:`~a.b``` -> ``b``,
    ``:class:`a.B``` -> ``a.B``, ``*x*`` -> ``x``."""
    doc = re.sub(r":\w+:`~[\w.]*\.(\w+)`", r"\1", doc)  # :func:`~pkg.mod.name` -> name
    doc = re.sub(r":\w+:`([^`]+)`", r"\1", doc)  # :class:`pkg.Name` -> pkg.Name
    doc = re.sub(r"``([^`]+)``", r"\1", doc)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", doc)


def _line_of(text: str, key: str) -> int | None:
    """The first line that assigns ``key`` (TOML ``key =``, YAML ``key:``) or opens its table (``[presets.key]``)."""
    pattern = re.compile(rf"^\s*(['\"]?{re.escape(key)}['\"]?\s*[=:]|\[\s*presets\.{re.escape(key)}\s*\])")
    for i, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return i
    return None


MAX_CONFIG_BYTES = 2**20
"""A config file is at most this large."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """LabConfig values from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

    Errors name the file, the line when known, and the field: syntax errors, unknown fields, wrong types.  Tables
    under ``presets`` define new methods (:func:`~entrolab.lab.presets.preset_from_mapping`).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {p}: no such file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {p}: larger than {MAX_CONFIG_BYTES} bytes")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{p}, line {line}: not UTF-8") from None
    raw = _parse_config_text(p, text)
    values = _config_values(p, text, raw)
    try:  # the values alone, before any work: a bad one is reported with its file and line
        LabConfig(**values)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        key = next((k for k in values if k != "presets" and re.search(rf"\b{k}\b", msg)), None)
        found = _line_of(text, key) if key else None
        raise ValueError(f"{p}{f', line {found}' if found else ''}: {msg}") from None
    return values


def _parse_config_text(p: Path, text: str) -> Any:
    """The TOML or YAML document of a config file; syntax errors and documents nested too deeply are named."""
    try:
        return _parse_config_document(p, text)
    except RecursionError:
        raise ValueError(f"{p}: nested too deeply") from None


def _parse_config_document(p: Path, text: str) -> Any:
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            raw = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer beyond int()'s digit limit
            raise ValueError(f"{p}: invalid TOML: {exc}") from None
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{p}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        except ValueError as exc:  # an integer beyond int()'s digit limit
            raise ValueError(f"{p}: invalid YAML value: {exc}") from None
        raw = raw or {}
    else:
        raise ValueError(f"--config {p}: expected a .toml, .yaml or .yml file")
    return raw


def _config_values(p: Path, text: str, raw: Any) -> dict[str, Any]:
    """LabConfig keyword values from a parsed config document, each checked by name and type."""
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: the top level must be a table of fields, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(LabConfig)}
    values: dict[str, Any] = {}
    presets: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{p}, line {_line_of(text, key)}" if _line_of(text, key) else str(p)
        if key == "presets":
            if not isinstance(value, dict):
                raise ValueError(f"{where}: field 'presets' must be a table of tables")
            for pname, table in value.items():
                pwhere = f"{p}, line {_line_of(text, pname)}" if _line_of(text, pname) else str(p)
                if pname in PRESETS:
                    raise ValueError(f"{pwhere}: preset {pname!r} is built in; give the new method another name")
                try:
                    presets[pname] = preset_from_mapping(pname, table, known=presets)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{pwhere}: {exc}") from None
            continue
        if key not in names:
            raise ValueError(f"{where}: unknown field {key!r}; valid fields: {', '.join(sorted(names))}")
        default = names[key].default
        if key == "methods":
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = tuple(value)
            else:
                raise ValueError(f"{where}: field 'methods' must be a list of names or a comma-separated string")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: field {key!r} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: field {key!r} must be an integer, got {value!r}")
        elif isinstance(default, float) or (default is None and "float" in str(names[key].type)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where}: field {key!r} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {value!r}")
        values[key] = value
    if presets:
        values["presets"] = presets
    return values


def _parser() -> argparse.ArgumentParser:
    docs = _field_docs()
    parser = argparse.ArgumentParser(
        prog="entrolab lab",
        description=(
            "Warm-start a small policy on a built-in verifiable task, run RL with several entropy methods and seeds "
            "side by side, and write a report (report.html, summary.md, figures/) into --out."
        ),
        epilog="Methods: " + ", ".join(f"{n} ({p.description})" for n, p in PRESETS.items()),
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of these options; flags override it")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {json.dumps(QUICK)}")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace the runs of an existing --out directory")
    parser.add_argument(
        "--continue", dest="continue_run", action="store_true",
        help="if --out already holds a run with the same settings, resume it (an interrupted run continues, a "
        "finished one only rebuilds the report); otherwise start as usual (make demo uses this)",
    )  # fmt: skip
    parser.add_argument("--no-report", action="store_true", help="skip the report (build it with entrolab report)")
    parser.add_argument(
        "--progress", choices=("auto", "on", "off"),
        help="auto: a progress bar on a terminal, else a progress line (step, ETA, entropy, accuracy; the warm start's "
        "loss) at most every 30 s; on: the bar; off: neither",
    )  # fmt: skip
    parser.add_argument(
        "--study",
        choices=("decoding",),
        help="instead of RL: evaluate the warm-started policy (and, in an existing --out, each method's first-seed "
        "policy) with plain sampling, top-p, min-p and Top-H over --temperatures; writes OUT/decoding/",
    )
    parser.add_argument(
        "--temperatures", metavar="T,T,...", help="temperatures of --study decoding (default: 0.5,1,1.5,2,3)"
    )
    for f in dataclasses.fields(LabConfig):
        if f.name == "presets":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        help_text = f"{docs.get(f.name, '')} (default: {','.join(default) if isinstance(default, tuple) else default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings; a docstring's "80%" is literal
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, metavar="A,B,...", help=help_text)
        elif isinstance(default, int):
            parser.add_argument(flag, type=int, metavar="N", help=help_text)
        elif isinstance(default, float) or (default is None and "float" in str(f.type)):
            parser.add_argument(flag, type=float, metavar="X", help=help_text)
        else:
            parser.add_argument(flag, metavar=f.name.upper(), help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``entrolab lab [options]``; returns the exit status (2 for bad options, 1 for a failed run)."""
    parser = _parser()
    args = vars(parser.parse_args(argv))
    if "study" in args:
        return _study(args)
    try:
        if "resume" in args:
            directory = Path(args["resume"])
            saved_path = directory / "config.json"
            if not saved_path.exists():
                raise ValueError(f"--resume {directory}: no config.json there (not a lab run directory)")
            given = [
                f.name for f in dataclasses.fields(LabConfig) if f.name in args and f.name not in ("workers", "ray")
            ]
            if given or "config" in args or args.get("quick"):
                flags = ", ".join("--" + n.replace("_", "-") for n in given) or "--config/--quick"
                raise ValueError(
                    f"--resume {directory} continues the run with the settings in its config.json; {flags} would "
                    "change them (only --workers and --ray may be given): drop them, or start a new run with --out"
                )
            # DIR is the run: a moved or copied directory resumes where it is, never where it was written
            cfg = dataclasses.replace(_saved_config(directory), out=str(directory))
            cfg = dataclasses.replace(cfg, **{k: args[k] for k in ("workers", "ray") if k in args})
            resume = True
        else:
            values: dict[str, Any] = {}
            if args.get("quick"):
                values.update(QUICK)
            if "config" in args:
                values.update(load_config_file(args["config"]))
            for f in dataclasses.fields(LabConfig):
                if f.name in args:
                    values[f.name] = args[f.name]
            cfg = LabConfig(**values)
            resume = bool(args.get("continue_run")) and same_settings(cfg, Path(cfg.out))
            if resume:
                print(f"entrolab lab: {cfg.out} holds a run with these settings: resuming it", file=sys.stderr)
    except (ValueError, TypeError) as exc:
        print(f"entrolab lab: {exc}", file=sys.stderr)
        return 2
    progress = {"on": True, "off": False}.get(args.get("progress", "auto"))
    try:
        out = run_lab(cfg, resume=resume, overwrite=bool(args.get("overwrite")), progress=progress)
    except LabError as exc:
        print(f"entrolab lab: {exc}", file=sys.stderr)
        return 1
    if not args.get("no_report"):
        from entrolab.lab.report import build_report

        paths = build_report(out)
        print(f"report: {paths['html']}")
        print(paths["summary"].read_text())
    return 0


def _saved_config(directory: Path) -> LabConfig:
    """The LabConfig of an existing run directory (its config.json), presets included."""
    saved = json.loads((directory / "config.json").read_text())
    saved.pop("task_spec", None)  # checked against this version's task by run_lab (trainer.task_spec)
    presets = {
        n: preset_from_mapping(n, {k: v for k, v in p.items() if k != "name"})
        for n, p in saved.pop("presets", {}).items()
    }
    saved["methods"] = tuple(saved["methods"])
    return LabConfig(**saved, presets=presets)


def _study(args: dict[str, Any]) -> int:
    """``entrolab lab --study decoding``: the settings of an existing ``--out`` run (evaluation flags override them),
    else the options given."""
    from entrolab.lab.study import DEFAULT_TEMPERATURES, run_decoding_study
    from entrolab.lab.trainer import LabError

    try:
        temperatures = DEFAULT_TEMPERATURES
        if "temperatures" in args:
            try:
                temperatures = tuple(float(t) for t in str(args["temperatures"]).split(",") if t.strip())
            except ValueError:
                raise ValueError(
                    f"--temperatures must be comma-separated numbers, got {args['temperatures']!r}"
                ) from None
        values: dict[str, Any] = dict(QUICK) if args.get("quick") else {}
        if "config" in args:
            values.update(load_config_file(args["config"]))
        for f in dataclasses.fields(LabConfig):
            if f.name in args:
                values[f.name] = args[f.name]
        out = Path(values.get("out", LabConfig.out))
        if (out / "config.json").exists():
            cfg = _saved_config(out)
            override = {k: values[k] for k in ("eval_prompts", "eval_samples", "threads") if k in values}
            cfg = dataclasses.replace(cfg, **override)
        else:
            cfg = LabConfig(**values)
        paths = run_decoding_study(cfg, temperatures=temperatures)
    except (ValueError, TypeError) as exc:
        print(f"entrolab lab: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"entrolab lab: {exc}", file=sys.stderr)
        return 1
    print(f"decoding study: {paths['summary']}")
    print(paths["summary"].read_text())
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """``entrolab report DIR``: rebuild the report of an existing run from its metrics files."""
    parser = argparse.ArgumentParser(prog="entrolab report", description=report_main.__doc__)
    parser.add_argument("dir", help="a lab run directory (the --out of entrolab lab)")
    args = parser.parse_args(argv)
    from entrolab.lab.report import build_report

    try:
        paths = build_report(args.dir)
    except ValueError as exc:
        print(f"entrolab report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {paths['html']}")
    return 0

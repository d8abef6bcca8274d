"""``entrolab gallery``: run the entries over seeds and write ``gallery.html`` (self-contained) and ``gallery.md``.

Each seed's result is saved as ``OUT/<entry>/seed<k>.json`` (atomically) before the next starts, so an interrupted
gallery resumes where it stopped: a seed whose file exists with the same settings is not run again.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entrolab.gallery import ENTRIES, get_entry

__all__ = ["main", "run_gallery"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_gallery(
    names: Sequence[str],
    *,
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "gallery-runs",
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run ``names`` (all entries when empty) for ``seeds`` seeds each; returns the path of ``gallery.html``."""
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    names = list(names) or list(ENTRIES)
    modules = {n: get_entry(n) for n in names}  # unknown names fail before anything runs
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1, got {seeds!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, mod in modules.items():
        directory = root / name
        directory.mkdir(exist_ok=True)
        results, walls = [], []
        for seed in range(seeds):
            path = directory / f"seed{seed}.json"
            if path.exists():
                saved = json.loads(path.read_text())
                if saved.get("quick") == quick:
                    results.append(saved["result"])
                    walls.append(saved["seconds"])
                    continue
            say(f"gallery: {name} seed {seed}{' (quick)' if quick else ''} ...")
            t0 = time.perf_counter()
            result = mod.run(seed=seed, quick=quick)
            seconds = time.perf_counter() - t0
            _atomic_write(path, json.dumps({"quick": quick, "seconds": seconds, "result": result}))
            results.append(result)
            walls.append(seconds)
        rows, verdict = mod.summarize(results)
        figure = directory / "figure.png"
        mod.figure(results, figure)
        sections.append(
            {
                "name": name,
                "title": mod.TITLE,
                "paper": mod.PAPER,
                "claim": mod.CLAIM,
                "setup": mod.setup(quick),
                "rows": rows,
                "verdict": verdict,
                "figure": figure,
                "seeds": len(results),
                "wall": sum(walls),
            }
        )
        say(f"gallery: {name}: {verdict}")
    return _write(root, sections, quick=quick)


def _write(root: Path, sections: list[dict[str, Any]], *, quick: bool) -> Path:
    md = ["# entrolab gallery", ""]
    if quick:
        md += ["Quick runs (tests): the numbers are not the measurements the entries describe.", ""]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>entrolab gallery</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "th:first-child,td:first-child{text-align:left}img{max-width:100%}.verdict{background:#f4f6f8;padding:.6em}"
        "</style></head><body><h1>entrolab gallery</h1>"
    ]
    if quick:
        parts.append("<p><b>Quick runs</b> (tests): the numbers are not the measurements the entries describe.</p>")
    for s in sections:
        esc = html.escape
        data = base64.b64encode(s["figure"].read_bytes()).decode()
        table = "".join(f"<tr><td>{esc(m)}</td><td>{esc(a)}</td><td>{esc(b)}</td></tr>" for m, a, b in s["rows"])
        parts.append(
            f"<section id='{esc(s['name'])}'><h2>{esc(s['name'])}: {esc(s['title'])}</h2>"
            f"<p><b>Paper</b> ({esc(s['paper'])}) <b>claims</b>: {esc(s['claim'])}</p>"
            f"<p><b>What we ran</b>: {esc(s['setup'])} {s['seeds']} seed(s), {s['wall']:.0f} s in all.</p>"
            f"<table><tr><th>metric (mean ± 95% interval over seeds)</th><th>method</th><th>baseline</th></tr>{table}"
            f"</table><p class='verdict'><b>What happened</b>: {esc(s['verdict'])}</p>"
            f"<img alt='{esc(s['name'])}' src='data:image/png;base64,{data}'></section>"
        )
        md += [
            f"## {s['name']}: {s['title']}",
            "",
            f"Paper ({s['paper']}) claims: {s['claim']}",
            "",
            f"What we ran: {s['setup']} {s['seeds']} seed(s), {s['wall']:.0f} s in all.",
            "",
            "| metric (mean ± 95% interval over seeds) | method | baseline |",
            "|---|---|---|",
            *[f"| {m} | {a} | {b} |" for m, a, b in s["rows"]],
            "",
            f"What happened: {s['verdict']}",
            "",
            f"![{s['name']}]({s['name']}/figure.png)",
            "",
        ]
    parts.append("</body></html>")
    page = root / "gallery.html"
    _atomic_write(page, "".join(parts))
    _atomic_write(root / "gallery.md", "\n".join(md))
    return page


def main(argv: list[str] | None = None) -> int:
    """``entrolab gallery [NAME ...] [--list] [--seeds N] [--quick] [--out DIR]``."""
    p = argparse.ArgumentParser(
        prog="entrolab gallery",
        description="Run the CPU demos of entrolab's methods beyond LLMs and write gallery.html.",
        epilog="Entries: " + ", ".join(ENTRIES),
    )
    p.add_argument("names", nargs="*", help="entries to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the entries and exit")
    p.add_argument("--seeds", type=int, default=3, help="seeds per entry (default 3)")
    p.add_argument("--quick", action="store_true", help="seconds-long versions (what the tests run)")
    p.add_argument("--out", default="gallery-runs", help="output directory (default gallery-runs)")
    args = p.parse_args(argv)
    if args.list:
        for name in ENTRIES:
            mod = get_entry(name)
            print(f"{name:22s} {mod.TITLE} ({mod.PAPER})")
        return 0
    try:
        page = run_gallery(args.names, seeds=args.seeds, quick=args.quick, out=args.out)
    except ValueError as exc:
        print(f"entrolab gallery: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"entrolab gallery: {exc} (pip install 'entrolab[gallery]')", file=sys.stderr)
        return 1
    print(page)
    return 0

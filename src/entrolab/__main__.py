"""Command line: ``entrolab <command>`` (or ``python -m entrolab <command>``).

Commands:
    lab     the entropy lab: warm-start a small policy, run RL with several entropy methods and seeds, write a
            report (what ``make demo`` runs; ``entrolab lab --help`` lists every option)
    report  rebuild the report of an existing lab run: ``entrolab report DIR``
    demo    a short demonstration of the entropy core (fused log-prob and entropy from hidden states)
    gallery CPU demos of the methods beyond LLMs against their baselines, as gallery.html
            (``entrolab gallery --list``; ``entrolab gallery sac subpo``)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "lab": ("entrolab.lab.cli", "main"),
    "report": ("entrolab.lab.cli", "report_main"),
    "demo": ("entrolab.demo", "main"),
    "gallery": ("entrolab.gallery.runner", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from entrolab import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        print(f"entrolab: unknown command {command!r}; valid commands: {', '.join(sorted(COMMANDS))}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    status = getattr(importlib.import_module(module), function)(rest)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())

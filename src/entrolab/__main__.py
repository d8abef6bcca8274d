"""Command line: ``entrolab <command>`` (or ``python -m entrolab <command>``).

Commands:
    demo    a short demonstration of the entropy core on a built-in example (what ``make demo`` runs)
"""

from __future__ import annotations

import sys

COMMANDS = {"demo": "entrolab.demo"}


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
    import importlib

    importlib.import_module(COMMANDS[command]).main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

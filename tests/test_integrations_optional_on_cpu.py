"""The engines are optional: the core never imports them, and the plug-ins say which extra is missing."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_core_imports_neither_engine():
    done = _run(
        "import sys, entrolab, entrolab.losses, entrolab.sampling, entrolab.lab, entrolab.integrations\n"
        "bad = [m for m in ('trl', 'verl', 'ray', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    assert done.returncode == 0, done.stderr


def test_a_missing_engine_names_the_extra():
    for module, extra in (("trl", "entrolab[trl]"), ("verl", "entrolab[verl]")):
        done = _run(
            f"import sys; sys.modules[{module!r}] = None\n"
            f"try:\n    import entrolab.integrations.{module}\n"
            f"except ImportError as e:\n    print(e)\nelse:\n    raise SystemExit('imported')"
        )
        assert done.returncode == 0, done.stderr
        assert extra in done.stdout, done.stdout

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


def test_the_trl_example_names_the_extra_when_trl_is_missing(tmp_path):
    """Without TRL installed, ``examples/trl_grpo_entropy.py --smoke`` says which extra to install (exit 2), not a
    traceback.  Simulated by a ``trl`` package on the path that fails to import."""
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "trl"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named trl (simulated)')\n")
    script = Path(__file__).resolve().parents[1] / "examples" / "trl_grpo_entropy.py"
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, str(script), "--smoke"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install 'entrolab[trl]'" in proc.stderr and "Traceback" not in proc.stderr

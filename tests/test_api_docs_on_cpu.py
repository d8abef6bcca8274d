"""The API reference (docs/api, Sphinx autodoc) builds from the docstrings with warnings as errors, and every public
module of entrolab has a page: a broken docstring or a forgotten module fails here."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import entrolab

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
NOT_API = {"entrolab.demo", "entrolab.gallery", "entrolab.batch_stats"}  # the CLI demo, the demo gallery, internals


def test_every_public_module_has_a_page():
    documented = set()
    for page in API.glob("*.rst"):
        documented |= set(re.findall(r"^\.\. automodule:: ([\w.]+)", page.read_text(), re.M))
    public = {
        f"entrolab.{m.name}" for m in pkgutil.iter_modules(entrolab.__path__) if not m.name.startswith("_")
    } - NOT_API
    public.discard("entrolab.integrations")
    public |= {"entrolab.integrations.trl", "entrolab.integrations.verl"}
    missing = sorted(public - documented)
    assert not missing, f"no API page for {missing}: add an automodule to docs/api/*.rst"


def test_the_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", str(API), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = (tmp_path / "losses.html").read_text()
    for name in ("clip_cov", "kl_cov", "steer", "get_policy_loss"):
        assert f'id="entrolab.losses.{name}"' in losses, name
    assert "EntropyGRPOTrainer" in (tmp_path / "integrations.html").read_text()

"""The lab's report.html as a person sees it: opened in headless Chromium (Debian's ``chromium``, which ``make test``
installs when it can), every figure renders and the console stays clean.

Skipped when no Chromium is installed, except under CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entrolab.lab import LabConfig, run_lab
from entrolab.lab.report import build_report
from tests._chromium import chromium_path, inspect_page

pytestmark = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (make test installs Debian's chromium when run as root)",
)


def test_the_helper_sees_broken_images_and_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><title>bad</title><img alt="broken" src="data:image/png;base64,AAAA">'
        '<script>console.error("boom"); notAFunction();</script>'
    )
    seen = inspect_page(page)
    assert seen["title"] == "bad"
    assert [(alt, natural) for alt, _, _, natural in seen["images"]] == [("broken", 0)]
    assert len(seen["errors"]) == 2 and "boom" in seen["errors"][0]


def test_report_renders_every_figure_without_console_errors(tmp_path):
    cfg = LabConfig(
        methods=("grpo", "clip_cov"),
        seeds=2,
        steps=3,
        prompts_per_step=4,
        group_size=4,
        eval_every=2,
        eval_prompts=4,
        eval_samples=4,
        sft_steps=5,
        sft_batch=8,
        d_model=32,
        threads=1,
        out=str(tmp_path / "run"),
    )
    out = run_lab(cfg, progress=False, log=lambda s: None)
    paths = build_report(out)
    seen = inspect_page(Path(paths["html"]))
    assert seen["title"] == "entrolab lab report"
    figures = {"entropy_accuracy", "heldout", "entropy_law", "mechanism", "pass_at_k"}
    assert {alt for alt, *_ in seen["images"]} == figures
    for alt, width, height, natural in seen["images"]:
        assert natural > 0 and width > 100 and height > 100, (alt, width, height, natural)
    assert seen["errors"] == []

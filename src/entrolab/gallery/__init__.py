"""The gallery: small, seeded CPU demos of entrolab's methods beyond LLM post-training, each against its baseline.

``entrolab gallery [NAME ...]`` runs them and writes a self-contained ``gallery.html``; ``entrolab gallery --list``
lists them.  Each entry is a module ``entrolab.gallery.<name>`` with

- ``TITLE``, ``PAPER`` (arXiv id), ``CLAIM`` (what the paper claims) and ``setup(quick) -> str`` (what we run);
- ``run(seed=0, quick=False) -> dict``: one seeded run, JSON-serialisable (metrics and curves of the method and of its
  baseline); ``quick`` is the seconds-long version the tests use;
- ``summarize(results) -> (rows, verdict)``: table rows ``(metric, method, baseline)`` as formatted strings (mean and
  95% interval over seeds) and one sentence saying whether the claimed effect appeared at this scale;
- ``figure(results, path)``: a PNG.

Entries need the ``gallery`` extra (gymnasium, stable-baselines3 for the SAC baseline, matplotlib, scikit-learn,
bitsandbytes for ``optim8bit``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["ENTRIES", "entries", "get_entry"]

ENTRIES: dict[str, str] = {
    "sac": "entrolab.gallery.sac",
    "adversarial_surprise": "entrolab.gallery.adversarial_surprise",
    "infopower": "entrolab.gallery.infopower",
    "subpo": "entrolab.gallery.subpo",
    "aem": "entrolab.gallery.aem",
    "wpc": "entrolab.gallery.wpc",
    "centaur": "entrolab.gallery.centaur",
    "koopman": "entrolab.gallery.koopman",
    "ads": "entrolab.gallery.ads",
    "kecor": "entrolab.gallery.kecor",
    "attention_entropy": "entrolab.gallery.attention_entropy",
    "mec": "entrolab.gallery.mec",
    "mee": "entrolab.gallery.mee",
    "optim8bit": "entrolab.gallery.optim8bit",
    "scale": "entrolab.gallery.scale",
    "sse": "entrolab.gallery.sse",
    "ssm": "entrolab.gallery.ssm",
    "spo": "entrolab.gallery.spo",
    "cpl": "entrolab.gallery.cpl",
    "sspo": "entrolab.gallery.sspo",
}
"""Entry name -> module (imported on first use)."""


def entries() -> list[str]:
    return list(ENTRIES)


def get_entry(name: str) -> ModuleType:
    """The entry module ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in ENTRIES:
        raise ValueError(f"unknown gallery entry {name!r}; valid entries: {', '.join(ENTRIES)}")
    return importlib.import_module(ENTRIES[name])

"""The entropy lab: ``entrolab lab`` warm-starts a small policy on a built-in verifiable task, runs RL with several
entropy methods and seeds side by side, and writes a report (see :mod:`entrolab.lab.trainer` for the recipe)."""

from entrolab.lab.presets import PRESETS, Preset, get_preset, preset_from_mapping
from entrolab.lab.tasks import TASKS, get_task, parse_expression
from entrolab.lab.trainer import LabConfig, LabError, pass_at_k, run_lab

__all__ = [
    "PRESETS",
    "TASKS",
    "LabConfig",
    "LabError",
    "Preset",
    "get_preset",
    "get_task",
    "parse_expression",
    "pass_at_k",
    "preset_from_mapping",
    "run_lab",
]

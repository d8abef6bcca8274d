"""Plug-ins that run entrolab's losses inside the engines users scale on.

- :mod:`entrolab.integrations.trl`: ``EntropyGRPOTrainer``, a ``trl.GRPOTrainer`` whose policy loss is any registered
  entrolab loss (extra ``entrolab[trl]``).
- :mod:`entrolab.integrations.verl`: importing it registers every entrolab policy loss in verl's registry as
  ``entrolab_<name>`` (extra ``entrolab[verl]``; loaded in Ray workers through the ``verl.plugins`` entry point or
  ``VERL_USE_EXTERNAL_MODULES=entrolab.integrations.verl``).

Neither engine is imported by ``import entrolab``; each sub-module imports its engine and fails with an
``ImportError`` naming the extra when it is missing.  ``docs/scaling.md`` walks from the lab to TRL to verl.
"""

from __future__ import annotations

__all__: list[str] = []

"""Opt in to entrolab's entropy channel in verl: importing this module calls
:func:`entrolab.integrations.verl.install_entropy_hook`.

verl 0.9.1 computes the update forward's token entropy (``actor.calculate_entropy=true``) but hands it only to its
own entropy bonus; the entrolab losses that need it (``steer``, ``hapo``, ``entropy_balanced``,
``high_entropy_tokens``) get it through this hook, which wraps verl's actor loss function.  Importing
``entrolab.integrations.verl`` alone never patches verl; name this module where the workers import theirs::

    export VERL_USE_EXTERNAL_MODULES=entrolab.integrations.verl_entropy
"""

from __future__ import annotations

from entrolab.integrations.verl import install_entropy_hook

if not install_entropy_hook():  # pragma: no cover - a verl without the engine path
    raise ImportError("entrolab.integrations.verl_entropy: verl.workers.utils.losses.ppo_loss is not importable")

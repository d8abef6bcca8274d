"""Exploration beyond entropy bonuses: submodular RL (SubPO); adversarial surprise and empowerment follow.

:mod:`entrolab.exploration.submodular`: coverage and facility-location objectives, SubPO's marginal-gain policy
gradient, and the grid world of the gallery's ``subpo`` entry.
"""

from entrolab.exploration.submodular import (
    CREDITS,
    CoverageObjective,
    FacilityLocationObjective,
    GridWorld,
    check_submodular,
    prefix_values,
    subpo_loss,
    subpo_weights,
)

__all__ = [
    "CREDITS",
    "CoverageObjective",
    "FacilityLocationObjective",
    "GridWorld",
    "check_submodular",
    "prefix_values",
    "subpo_loss",
    "subpo_weights",
]

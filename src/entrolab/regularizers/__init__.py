"""Entropy regularisers of attention and representations, with the small models they act on.

:mod:`entrolab.regularizers.aem`: AEM (attention-entropy maximisation for MIL) and the ABMIL model;
:mod:`entrolab.regularizers.attention`: the entropy band of entropy-guided attention;
:mod:`entrolab.regularizers.centaur`: Centaur's cluster-entropy test-time step (low confidence);
:mod:`entrolab.regularizers.koopman`: information-shaped Koopman representations (von Neumann entropy term);
:mod:`entrolab.regularizers.mee`: MEE's nearest-neighbour entropy term over a FIFO of codes;
:mod:`entrolab.regularizers.wpc`: Wasserstein predictive coding (InfoNCE with a Lipschitz critic).
"""

from entrolab.regularizers.aem import ABMIL, aem_lambda, aem_loss
from entrolab.regularizers.attention import EntropyBandRegularizer
from entrolab.regularizers.centaur import TestTimeAdapter, tta_step
from entrolab.regularizers.koopman import koopman_loss, ridge_koopman, temporal_info_nce
from entrolab.regularizers.mee import CodeBuffer, disomap_loss, dlle_loss, mee_entropy_term, mee_lambda
from entrolab.regularizers.wpc import BilinearCritic, gradient_penalty, wpc_loss

__all__ = [
    "ABMIL",
    "BilinearCritic",
    "CodeBuffer",
    "EntropyBandRegularizer",
    "TestTimeAdapter",
    "aem_lambda",
    "aem_loss",
    "disomap_loss",
    "dlle_loss",
    "gradient_penalty",
    "koopman_loss",
    "mee_entropy_term",
    "mee_lambda",
    "ridge_koopman",
    "temporal_info_nce",
    "tta_step",
    "wpc_loss",
]

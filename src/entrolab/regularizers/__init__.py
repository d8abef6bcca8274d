"""Entropy regularisers of attention and representations, with the small models they act on.

:mod:`entrolab.regularizers.aem`: AEM (attention-entropy maximisation for MIL) and the ABMIL model.
"""

from entrolab.regularizers.aem import ABMIL, aem_lambda, aem_loss

__all__ = ["ABMIL", "aem_lambda", "aem_loss"]

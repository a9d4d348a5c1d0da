"""Target propagation by regularized inversion for recurrent networks (``strategy="tp"``).

The pure-PyTorch step is :func:`tp_backward` (and :func:`tp_backward_from_states`); the networks it trains are
:class:`UnrolledRNN` and :class:`RNNSequenceModel`; :class:`TPRule` runs it inside Lightning.
"""

from lightning_mpc.rules.tp.functional import (
    TPResult,
    factorize,
    inverse_jvp,
    propagate_targets,
    regularized_inverse,
    tp_backward,
    tp_backward_from_states,
)
from lightning_mpc.rules.tp.modules import RNNSequenceModel, UnrolledRNN
from lightning_mpc.rules.tp.rule import TPRule, find_sequence_model

__all__ = [
    "RNNSequenceModel",
    "TPResult",
    "TPRule",
    "UnrolledRNN",
    "factorize",
    "find_sequence_model",
    "inverse_jvp",
    "propagate_targets",
    "regularized_inverse",
    "tp_backward",
    "tp_backward_from_states",
]

"""Target propagation by regularized inversion for recurrent networks (``strategy="tp"``).

The pure-PyTorch step is :func:`tp_backward` (and :func:`tp_backward_from_states`); the networks it trains are
:class:`UnrolledRNN`, :class:`UnrolledGRU` and :class:`RNNSequenceModel`; :class:`TPRule` runs it inside Lightning.
"""

from lightning_mpc.rules.tp.functional import (
    TPResult,
    factorize,
    inverse_jvp,
    linearized_inverse_step,
    propagate_targets,
    propagate_targets_through_jacobians,
    regularized_inverse,
    tp_backward,
    tp_backward_from_states,
)
from lightning_mpc.rules.tp.modules import RNNSequenceModel, UnrolledGRU, UnrolledRNN
from lightning_mpc.rules.tp.rule import TPRule, find_sequence_model

__all__ = [
    "RNNSequenceModel",
    "TPResult",
    "TPRule",
    "UnrolledGRU",
    "UnrolledRNN",
    "factorize",
    "find_sequence_model",
    "inverse_jvp",
    "linearized_inverse_step",
    "propagate_targets",
    "propagate_targets_through_jacobians",
    "regularized_inverse",
    "tp_backward",
    "tp_backward_from_states",
]

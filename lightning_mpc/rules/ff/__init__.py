"""Forward-Forward (Hinton 2022): ``strategy="ff"``; the pure-PyTorch form is :func:`ff_backward`."""

from lightning_mpc.rules.ff.functional import (
    FFObjective,
    embed_label,
    ff_backward,
    goodness_scores,
    hardest_negative_labels,
    length_normalize,
    random_negative_labels,
)
from lightning_mpc.rules.ff.rule import PEER_ATTRIBUTE, FFPeerState, FFRule

__all__ = [
    "PEER_ATTRIBUTE",
    "FFObjective",
    "FFPeerState",
    "FFRule",
    "embed_label",
    "ff_backward",
    "goodness_scores",
    "hardest_negative_labels",
    "length_normalize",
    "random_negative_labels",
]

"""Scalable Forward-Forward (Krutsylo 2025): ``strategy="sff"``; the pure-PyTorch form is :func:`sff_backward`."""

from lightning_mpc.rules.sff.functional import (
    GoodnessHead,
    GoodnessHeadSpec,
    build_goodness_heads,
    class_goodness,
    sff_backward,
    sff_loss,
    sff_votes,
)
from lightning_mpc.rules.sff.rule import HEADS_ATTRIBUTE, SFFRule

__all__ = [
    "HEADS_ATTRIBUTE",
    "GoodnessHead",
    "GoodnessHeadSpec",
    "SFFRule",
    "build_goodness_heads",
    "class_goodness",
    "sff_backward",
    "sff_loss",
    "sff_votes",
]

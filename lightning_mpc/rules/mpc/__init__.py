"""The model-predictive-control rule (``strategy="mpc"``); its pure-PyTorch form is :func:`lightning_mpc.horizon_backward`."""

from lightning_mpc.rules.mpc.rule import HEADS_ATTRIBUTE, MPCRule, heads_from_state

__all__ = ["HEADS_ATTRIBUTE", "MPCRule", "heads_from_state"]

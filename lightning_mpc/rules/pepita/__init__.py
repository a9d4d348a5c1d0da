"""PEPITA (``strategy="pepita"``): two forward passes, the second on the error-modulated input, no backward.

Dellaferrera & Kreiman, "Error-driven input modulation: solving the credit assignment problem without a
backward pass" (ICML 2022, arXiv 2201.11665), and the variants of Srinivasan et al., "Forward learning with
top-down feedback" (arXiv 2302.05440): weight mirroring, PEPITA-Hebbian and time-local PEPITA. The pure-PyTorch
form is :func:`pepita_backward`; :class:`PEPITARule` runs it inside Lightning.
"""

from lightning_mpc.rules.pepita.feedback import (
    DEFAULT_FEEDBACK_SCALE,
    FeedbackProjection,
    feedback_std,
    mirror_angles,
    mirror_step,
    normalize_factors,
    random_feedback,
)
from lightning_mpc.rules.pepita.functional import (
    FirstPass,
    PepitaResult,
    layer_update,
    modulated_input,
    output_terms,
    pepita_backward,
    pepita_time_local,
    record_first_pass,
    run_modulated_pass,
)
from lightning_mpc.rules.pepita.layers import ActivityTaps, PepitaLayer, find_layers
from lightning_mpc.rules.pepita.rule import FEEDBACK_ATTRIBUTE, PEPITARule

__all__ = [
    "DEFAULT_FEEDBACK_SCALE",
    "FEEDBACK_ATTRIBUTE",
    "ActivityTaps",
    "FeedbackProjection",
    "FirstPass",
    "PEPITARule",
    "PepitaLayer",
    "PepitaResult",
    "feedback_std",
    "find_layers",
    "layer_update",
    "mirror_angles",
    "mirror_step",
    "modulated_input",
    "normalize_factors",
    "output_terms",
    "pepita_backward",
    "pepita_time_local",
    "random_feedback",
    "record_first_pass",
    "run_modulated_pass",
]

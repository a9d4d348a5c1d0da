"""Recurrent networks target propagation can train: an explicitly unrolled RNN cell and a readout.

PyTorch's ``nn.RNN`` runs every time step inside one fused (cuDNN) kernel, so nothing outside it can reach
the state of one step, let alone invert it. :class:`UnrolledRNN` computes the same recurrence one step at a
time in Python; :class:`RNNSequenceModel` adds the readout (of the last state, or of every state for
sequence labelling). Both train as usual with back-propagation through time (BPTT), which is how the
benchmarks compare the two rules on one model.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.rules.tp.functional import Nonlinearity, activation, check_sequence

__all__ = ["Init", "RNNSequenceModel", "UnrolledRNN"]

Init = Literal["orthogonal", "uniform"]
"""``orthogonal``: orthogonal weights, zero biases (the paper's); ``uniform``: as ``nn.RNN``."""


def _check_sizes(owner: str, **sizes: int) -> None:
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(
            f"{owner}: sizes must be positive integers, got {', '.join(f'{k}={v!r}' for k, v in bad.items())}. "
            "HINT: check the model's init_args."
        )


def _check_choice(owner: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: unknown {name} {value!r}. HINT: use one of {', '.join(map(repr, allowed))}.")


class UnrolledRNN(nn.Module):
    """An Elman RNN unrolled step by step: ``h_t = a(W_hh h_{t-1} + W_ih x_t + b)``, ``h_0 = 0``.

    The same recurrence as ``nn.RNN`` (one layer, batch first, one bias instead of two), computed with one
    input projection for all steps and one matrix product per step, so that target propagation
    (:class:`~lightning_mpc.rules.tp.TPRule`) can read and invert every step.

    Args:
        input_size: features per step.
        hidden_size: the state's width ``d``.
        nonlinearity: ``"tanh"`` (the default), ``"identity"`` (a linear RNN) or ``"relu"`` (not invertible:
            back-propagation only).
        init: ``"orthogonal"`` (orthogonal ``W_hh`` and ``W_ih``, zero bias, as in the paper) or ``"uniform"``
            (``nn.RNN``'s initialisation).

    Attributes:
        weight_ih: ``W_ih``, shape ``(hidden_size, input_size)``.
        weight_hh: ``W_hh``, shape ``(hidden_size, hidden_size)``.
        bias: ``b``, shape ``(hidden_size,)``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, nonlinearity: Nonlinearity = "tanh", init: Init = "orthogonal"
    ) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        _check_choice(type(self).__name__, "nonlinearity", nonlinearity, get_args(Nonlinearity))
        _check_choice(type(self).__name__, "init", init, get_args(Init))
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity: Nonlinearity = nonlinearity
        self.init: Init = init
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the weights as ``init`` says (draws from the global generator)."""
        if self.init == "orthogonal":
            nn.init.orthogonal_(self.weight_hh)
            nn.init.orthogonal_(self.weight_ih)
            nn.init.zeros_(self.bias)
        else:
            bound = 1.0 / math.sqrt(self.hidden_size)
            for param in self.parameters():
                nn.init.uniform_(param, -bound, bound)

    def step(self, h: Tensor, x_t: Tensor) -> Tensor:
        """One step: ``a(W_hh h + W_ih x_t + b)`` for states ``(batch, hidden)`` and inputs ``(batch, input)``."""
        return activation(self.nonlinearity, F.linear(x_t, self.weight_ih, self.bias) + F.linear(h, self.weight_hh))

    def forward(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        """The states ``h_1..h_T`` of sequences ``x``.

        Args:
            x: inputs, ``(batch, T, input_size)`` with ``T >= 1``.
            h0: the initial state ``(batch, hidden_size)``; zeros by default.

        Returns:
            ``(batch, T, hidden_size)``.

        Raises:
            ValueError: for inputs of another shape, or sequences of length 0.
        """
        check_sequence(x, self.input_size, type(self).__name__)
        drive = F.linear(x, self.weight_ih, self.bias)
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        states = []
        # unbind, not drive[:, t]: the backward of T slices would write T full-size gradients (O(T^2) memory
        # traffic), the backward of unbind stacks the T step gradients once.
        for drive_t in drive.unbind(dim=1):
            h = activation(self.nonlinearity, drive_t + F.linear(h, self.weight_hh))
            states.append(h)
        return torch.stack(states, dim=1)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, init={self.init!r}"


class RNNSequenceModel(nn.Module):
    """An :class:`UnrolledRNN` and a linear readout: ``y = V h_T + c``, or ``y_t = V h_t + c`` for every step.

    The network :class:`~lightning_mpc.rules.tp.TPRule` trains (``Trainer(strategy="tp")``): hold one in your
    ``LightningModule`` and call it in ``training_step`` as usual.

    Args:
        input_size: features per step.
        hidden_size: the state's width.
        output_size: classes (logits) or regression outputs.
        per_step: read every state (sequence labelling: outputs ``(batch, T, output_size)``) instead of the
            last one (outputs ``(batch, output_size)``).
        nonlinearity: the cell's nonlinearity (see :class:`UnrolledRNN`).
        init: the initialisation (``"orthogonal"``: orthogonal weights, zero biases, the readout included).

    Example::

        model = RNNSequenceModel(input_size=6, hidden_size=100, output_size=4)   # temporal order
        logits = model(x)                                                          # x: (batch, 60, 6)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        per_step: bool = False,
        nonlinearity: Nonlinearity = "tanh",
        init: Init = "orthogonal",
    ) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, output_size=output_size)
        self.rnn = UnrolledRNN(input_size, hidden_size, nonlinearity, init)
        self.readout = nn.Linear(hidden_size, output_size)
        self.per_step = per_step
        if init == "orthogonal":
            nn.init.orthogonal_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Predictions for sequences ``x`` of shape ``(batch, T, input_size)``."""
        states = self.rnn(x)
        return self.readout(states if self.per_step else states[:, -1])

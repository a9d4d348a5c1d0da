"""Recurrent networks target propagation can train: explicitly unrolled RNN and GRU cells and a readout.

PyTorch's ``nn.RNN`` and ``nn.GRU`` run every time step inside one fused (cuDNN) kernel, so nothing outside it
can reach the state of one step, let alone invert it. :class:`UnrolledRNN` and :class:`UnrolledGRU` compute
the same recurrences one step at a time in Python; :class:`RNNSequenceModel` adds the readout (of the last
state, or of every state for sequence labelling). Both train as usual with back-propagation through time (BPTT), which is how the
benchmarks compare the two rules on one model.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mpc.rules.tp.functional import Nonlinearity, activation, check_sequence

__all__ = ["Cell", "Init", "RNNSequenceModel", "UnrolledGRU", "UnrolledRNN"]

Init = Literal["orthogonal", "uniform"]
"""``orthogonal``: orthogonal weights, zero biases (the paper's); ``uniform``: as ``nn.RNN`` / ``nn.GRU``."""
Cell = Literal["rnn", "gru"]
"""The recurrent cell of an :class:`RNNSequenceModel`: :class:`UnrolledRNN` or :class:`UnrolledGRU`."""


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


class _UnrolledCell(nn.Module):
    """What the unrolled cells share: the forward over time, one input projection for all steps."""

    cell: ClassVar[Cell]
    input_size: int
    hidden_size: int

    def _input_drive(self, x: Tensor) -> Tensor:
        """The input's contribution to every step, computed once for the whole sequence."""
        raise NotImplementedError

    def _advance(self, drive_t: Tensor, h: Tensor) -> Tensor:
        """The next state from one step's input drive and the previous state."""
        raise NotImplementedError

    def step(self, h: Tensor, x_t: Tensor) -> Tensor:
        """One step of the cell (the class's equation) for states ``(..., hidden)`` and inputs ``(..., input)``."""
        return self._advance(self._input_drive(x_t), h)

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
        drive = self._input_drive(x)
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        states = []
        # unbind, not drive[:, t]: the backward of T slices would write T full-size gradients (O(T^2) memory
        # traffic), the backward of unbind stacks the T step gradients once.
        for drive_t in drive.unbind(dim=1):
            h = self._advance(drive_t, h)
            states.append(h)
        return torch.stack(states, dim=1)


class UnrolledRNN(_UnrolledCell):
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

    cell: ClassVar[Cell] = "rnn"

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

    def _input_drive(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias)

    def _advance(self, drive_t: Tensor, h: Tensor) -> Tensor:
        return activation(self.nonlinearity, drive_t + F.linear(h, self.weight_hh))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}, init={self.init!r}"


class UnrolledGRU(_UnrolledCell):
    """A gated recurrent unit unrolled step by step, with ``nn.GRU``'s equations (one layer, batch first).

    With ``sigma`` the logistic function and ``*`` the elementwise product, one step is

        r = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z) * n + z * h_{t-1},        h_0 = 0.

    The parameters are laid out as ``nn.GRU``'s (gates stacked in the order ``r, z, n``; two biases, since
    ``b_hn`` sits inside the reset gate's product and cannot be merged into ``b_in``), so
    ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` copy to and from ``nn.GRU``'s ``*_l0`` parameters
    unchanged. A GRU step has no closed-form inverse: target propagation
    (:class:`~lightning_mpc.rules.tp.TPRule`) carries targets back through the step's Jacobian
    (:meth:`step_jacobian`, the ``"linearized"`` form only).

    Args:
        input_size: features per step.
        hidden_size: the state's width ``d``.
        init: ``"orthogonal"`` (each gate's ``d x d`` block of ``W_hh`` and ``W_ih`` orthogonal, zero biases) or
            ``"uniform"`` (``nn.GRU``'s initialisation).

    Attributes:
        weight_ih: ``[W_ir; W_iz; W_in]``, shape ``(3 * hidden_size, input_size)``.
        weight_hh: ``[W_hr; W_hz; W_hn]``, shape ``(3 * hidden_size, hidden_size)``.
        bias_ih: ``[b_ir; b_iz; b_in]``, shape ``(3 * hidden_size,)``.
        bias_hh: ``[b_hr; b_hz; b_hn]``, shape ``(3 * hidden_size,)``.
    """

    cell: ClassVar[Cell] = "gru"

    def __init__(self, input_size: int, hidden_size: int, init: Init = "orthogonal") -> None:
        super().__init__()
        _check_sizes(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        _check_choice(type(self).__name__, "init", init, get_args(Init))
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.init: Init = init
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the weights as ``init`` says (draws from the global generator)."""
        if self.init == "orthogonal":
            for weight in (self.weight_ih, self.weight_hh):
                for block in weight.detach().chunk(3, dim=0):
                    nn.init.orthogonal_(block)
            nn.init.zeros_(self.bias_ih)
            nn.init.zeros_(self.bias_hh)
        else:
            bound = 1.0 / math.sqrt(self.hidden_size)
            for param in self.parameters():
                nn.init.uniform_(param, -bound, bound)

    def gates(self, h: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(r, z, n, W_hn h + b_hn)`` of one step, for states ``(..., hidden)`` and inputs ``(..., input)``."""
        return self._gates(self._input_drive(x_t), h)

    def _gates(self, drive_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        input_r, input_z, input_n = drive_t.chunk(3, dim=-1)
        hidden_r, hidden_z, hidden_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        candidate = torch.tanh(input_n + reset * hidden_n)
        return reset, update, candidate, hidden_n

    def step_jacobian(self, h: Tensor, x_t: Tensor) -> Tensor:
        """``J = d h_t / d h_{t-1}`` of one step at ``h_{t-1} = h``, per sample (no graph).

        ``J = diag(z) + diag(h - n) diag(z (1 - z)) W_hz
        + diag((1 - z)(1 - n^2)) [diag(r) W_hn + diag(W_hn h + b_hn) diag(r (1 - r)) W_hr]``.

        Args:
            h: states ``(batch, hidden)``.
            x_t: inputs ``(batch, input)``.

        Returns:
            ``(batch, hidden, hidden)``: ``J[k, i, j] = d h_t[k, i] / d h[k, j]``.
        """
        with torch.no_grad():
            reset, update, candidate, hidden_n = self.gates(h, x_t)
            w_r, w_z, w_n = self.weight_hh.detach().chunk(3, dim=0)
            outer = (1.0 - update) * (1.0 - candidate.square())  # d h_t / d (candidate's pre-activation)
            jacobian = ((h - candidate) * update * (1.0 - update)).unsqueeze(-1) * w_z
            jacobian += (outer * reset).unsqueeze(-1) * w_n
            jacobian += (outer * hidden_n * reset * (1.0 - reset)).unsqueeze(-1) * w_r
            jacobian.diagonal(dim1=-2, dim2=-1).add_(update)
            return jacobian

    def _input_drive(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _advance(self, drive_t: Tensor, h: Tensor) -> Tensor:
        _, update, candidate, _ = self._gates(drive_t, h)
        return (1.0 - update) * candidate + update * h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, init={self.init!r}"


class RNNSequenceModel(nn.Module):
    """An :class:`UnrolledRNN` (or :class:`UnrolledGRU`) and a linear readout: ``y = V h_T + c``, or ``y_t = V h_t + c`` for every step.

    The network :class:`~lightning_mpc.rules.tp.TPRule` trains (``Trainer(strategy="tp")``): hold one in your
    ``LightningModule`` and call it in ``training_step`` as usual.

    Args:
        input_size: features per step.
        hidden_size: the state's width.
        output_size: classes (logits) or regression outputs.
        per_step: read every state (sequence labelling: outputs ``(batch, T, output_size)``) instead of the
            last one (outputs ``(batch, output_size)``).
        nonlinearity: the cell's nonlinearity (see :class:`UnrolledRNN`; a GRU takes only ``"tanh"``).
        init: the initialisation (``"orthogonal"``: orthogonal weights, zero biases, the readout included).
        cell: ``"rnn"`` (:class:`UnrolledRNN`, the default) or ``"gru"`` (:class:`UnrolledGRU`).

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
        cell: Cell = "rnn",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_sizes(owner, output_size=output_size)
        _check_choice(owner, "cell", cell, get_args(Cell))
        if cell == "gru" and nonlinearity != "tanh":
            raise ValueError(
                f"{owner}: a GRU cell has its own gates (sigmoid and tanh), got nonlinearity={nonlinearity!r}. "
                "HINT: leave nonlinearity at 'tanh' with cell='gru', or use cell='rnn'."
            )
        self.rnn: UnrolledRNN | UnrolledGRU
        if cell == "gru":
            self.rnn = UnrolledGRU(input_size, hidden_size, init)
        else:
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

"""The layers PEPITA trains inside a network's blocks, and the hooks that record what they see.

PEPITA updates every trainable ``nn.Linear`` and ``nn.Conv2d`` from two quantities of each forward pass: the
layer's input and its *activity*, the output of the layer followed by the elementwise modules right after
it (activation, dropout). A block is read as the sequence of its leaf modules (``nn.Sequential`` children,
recursively), and may hold:

* parameter-free modules before the layer (``Flatten``, pooling, dropout, an activation, ...): they belong
  to the layer's input;
* at most one trainable ``nn.Linear`` or ``nn.Conv2d``;
* elementwise modules after it (:data:`ELEMENTWISE`): the last of them gives the layer's activity;
* further parameter-free modules (pooling, ``Flatten``): they belong to the next layer's input.

Blocks without a trainable layer pass their input on. Normalisation layers (``BatchNorm``, ``LayerNorm``,
...) and any other module with parameters or buffers are refused: PEPITA has no update for them, and a
``BatchNorm`` would normalise the modulated pass with other batch statistics and update its running
statistics twice. The last trainable layer must produce the network's output (no activation after it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ELEMENTWISE", "ActivityTaps", "LayerSink", "PepitaLayer", "find_layers"]

TRAINABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
"""The layer types PEPITA updates."""

ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
"""Shape-preserving modules that act on each element (dropout: with the mask replayed in both passes)."""

_OUTPUT_PRESERVING: tuple[type[nn.Module], ...] = (nn.Identity, nn.Flatten)
"""What may follow the last trainable layer: the network output must be that layer's output."""

_HINT_SHAPE = (
    "HINT: write every block as nn.Sequential(<parameter-free modules>, nn.Linear or nn.Conv2d, <activation>, "
    "<dropout>), as in PEPITA's networks, or train this model with back-propagation or strategy='mpc'."
)


@dataclass(frozen=True)
class PepitaLayer:
    """One layer PEPITA trains.

    Attributes:
        block: the index of the block that holds it.
        module: the ``nn.Linear`` or ``nn.Conv2d``.
        tail: the module whose output is the layer's activity (the last elementwise module after the layer,
            or the layer itself).
    """

    block: int
    module: nn.Linear | nn.Conv2d
    tail: nn.Module

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The layer's trainable parameters: its weight, then its bias if it has one."""
        return [p for p in (self.module.weight, self.module.bias) if p is not None and p.requires_grad]


def _leaves(block: nn.Module, index: int) -> list[nn.Module]:
    """The leaf modules of ``block`` in the order its forward applies them."""
    if isinstance(block, nn.Sequential):
        return [leaf for child in block for leaf in _leaves(child, index)]
    if isinstance(block, TRAINABLE) or not list(block.children()):
        return [block]
    raise TypeError(
        f"Block {index} is a {type(block).__name__} with submodules: PEPITA reads a block's layers in the order its "
        "forward applies them, which it can only know for nn.Sequential blocks (activations called inside a "
        f"custom forward() are invisible to it). {_HINT_SHAPE}"
    )


def _is_trainable_layer(module: nn.Module) -> bool:
    return isinstance(module, TRAINABLE) and any(p.requires_grad for p in module.parameters(recurse=False))


def _refuse_stateful(module: nn.Module, index: int) -> None:
    """Raise for a module with parameters or buffers that is not a trainable layer."""
    if isinstance(module, TRAINABLE):
        return  # a frozen Linear/Conv2d is a fixed map
    has_state = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    if not has_state:
        return
    name = type(module).__name__
    if "Norm" in name:
        raise ValueError(
            f"Block {index} holds a {name}, which PEPITA cannot train: the modulated pass would be normalised with "
            "other batch statistics than the first, its running statistics would be updated twice per step, and "
            f"PEPITA has no update for its affine parameters. HINT: remove the normalisation layers (the PEPITA "
            "papers' networks have none), or train this model with back-propagation or strategy='mpc'."
        )
    raise ValueError(
        f"Block {index} holds a {name} with parameters or buffers, which PEPITA cannot train. {_HINT_SHAPE}"
    )


def find_layers(blocks: Sequence[nn.Module]) -> list[PepitaLayer]:
    """The layers PEPITA trains in ``blocks``, in forward order, after checking that it can train them all.

    Args:
        blocks: the network's blocks, in the order the forward applies them.

    Returns:
        One :class:`PepitaLayer` per trainable ``nn.Linear`` / ``nn.Conv2d``.

    Raises:
        TypeError: for a block that is neither an ``nn.Sequential`` nor a single module.
        ValueError: for a block with two trainable layers, a normalisation layer or another module with
            parameters, a module shared by two layers, a network without a trainable layer, or a last layer
            whose output is transformed before it leaves the network.
    """
    layers: list[PepitaLayer] = []
    last_leaves: list[nn.Module] = []
    last_position = -1
    for index, block in enumerate(blocks):
        leaves = _leaves(block, index)
        for leaf in leaves:
            _refuse_stateful(leaf, index)
        positions = [i for i, leaf in enumerate(leaves) if _is_trainable_layer(leaf)]
        if len(positions) > 1:
            names = ", ".join(type(leaves[i]).__name__ for i in positions)
            raise ValueError(
                f"Block {index} holds {len(positions)} trainable layers ({names}); PEPITA needs at most one per block, "
                "because it takes each layer's activity at the block's elementwise tail. HINT: cut the network so that "
                "every Linear/Conv2d starts a block of its own (configure_blocks() or nested nn.Sequential)."
            )
        if not positions:
            if layers:
                last_leaves += leaves
            continue
        position = positions[0]
        tail_position = position
        while tail_position + 1 < len(leaves) and isinstance(leaves[tail_position + 1], ELEMENTWISE):
            tail_position += 1
        module = leaves[position]
        assert isinstance(module, (nn.Linear, nn.Conv2d))
        layers.append(PepitaLayer(block=index, module=module, tail=leaves[tail_position]))
        last_leaves = leaves[position + 1 :]
        last_position = index
    if not layers:
        raise ValueError(
            f"None of the {len(blocks)} blocks holds a trainable nn.Linear or nn.Conv2d, so PEPITA has nothing to "
            f"train. {_HINT_SHAPE}"
        )
    seen: dict[int, int] = {}
    for number, layer in enumerate(layers):
        if id(layer.module) in seen:
            raise ValueError(
                f"The {type(layer.module).__name__} of block {layer.block} is also used in block "
                f"{layers[seen[id(layer.module)]].block}; PEPITA cannot train a layer applied twice. "
                "HINT: give every block its own layer."
            )
        seen[id(layer.module)] = number
    after = [leaf for leaf in last_leaves if not isinstance(leaf, _OUTPUT_PRESERVING)]
    if after:
        names = ", ".join(type(leaf).__name__ for leaf in after)
        raise ValueError(
            f"The last trainable layer (block {last_position}) is followed by {names}: PEPITA's output error is "
            "softmax(output) - onehot(target) on the last layer's own output (its logits). HINT: end the network "
            "with the last nn.Linear (no activation or softmax after it); the default loss applies the softmax."
        )
    return layers


LayerSink = Callable[[int, Tensor, Tensor], None]
"""Receives ``(layer number, layer input, layer activity)`` during a recorded forward."""


class ActivityTaps:
    """Forward hooks that hand each layer's input and activity to a sink while one is attached.

    A pre-hook on every layer keeps its input; a hook on its tail module (see :class:`PepitaLayer`) passes the
    input and the activity to the sink. Modules shared by several layers (one ``nn.ReLU`` reused) are told
    apart by the layer that ran last. Without a sink the hooks do nothing.

    Args:
        layers: the layers (from :func:`find_layers`).
    """

    def __init__(self, layers: Sequence[PepitaLayer]) -> None:
        self.layers = list(layers)
        self._sink: LayerSink | None = None
        self._open: int | None = None
        self._input: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        tails: dict[int, nn.Module] = {}
        for number, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_pre_hook(self._make_pre_hook(number)))
            tails[id(layer.tail)] = layer.tail
        for tail in tails.values():
            # First among the tail's hooks: a block listener that ends the recording at the last block's output
            # (registered earlier, on the same module) must not run before the activity is recorded.
            self._handles.append(tail.register_forward_hook(self._post_hook, prepend=True))

    def _make_pre_hook(self, number: int) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if self._sink is None:
                return
            first = args[0] if args else None
            if isinstance(first, Tensor):
                self._open, self._input = number, first

        return pre_hook

    def _post_hook(self, module: nn.Module, args: object, output: object) -> None:
        number = self._open
        if self._sink is None or number is None or self.layers[number].tail is not module:
            return
        if not isinstance(output, Tensor) or self._input is None:
            return
        inputs, self._open, self._input = self._input, None, None
        self._sink(number, inputs, output)

    @contextlib.contextmanager
    def listening(self, sink: LayerSink) -> Iterator[None]:
        """Send the layers' inputs and activities to ``sink`` inside the block."""
        self._sink, self._open, self._input = sink, None, None
        try:
            yield
        finally:
            self.stop()

    def start(self, sink: LayerSink) -> None:
        """Send the layers' inputs and activities to ``sink`` until :meth:`stop`."""
        self._sink, self._open, self._input = sink, None, None

    def stop(self) -> None:
        """Stop sending (drop what is half recorded)."""
        self._sink, self._open, self._input = None, None, None

    def remove(self) -> None:
        """Remove every hook."""
        self.stop()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

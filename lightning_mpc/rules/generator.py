"""A rule's own random generator: seeded from a constructor argument, saved in checkpoints.

Rules that draw random numbers during steps (negative labels, noise) draw from a :class:`SeededGenerator`
instead of the global generator, so that a run is reproducible from the rule's ``seed`` and
``fit(ckpt_path=...)`` resumes exactly (the generator's state travels in
:meth:`~lightning_mpc.rules.CreditRule.checkpoint_state`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SeededGenerator"]


class SeededGenerator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (draw on the CPU, then move the result to the device).

    Drawing on the CPU makes the draws the same on every device and keeps the state one small tensor.

    Args:
        seed: the seed; :meth:`reset` starts the sequence again from it.
    """

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}. HINT: pass seed=0.")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        """Start again from the seed (at the start of ``fit``; a resumed run restores the saved state after)."""
        self._generator.manual_seed(self.seed)

    def get(self) -> torch.Generator:
        """The generator, to pass as ``generator=`` to ``torch.randint`` and the like (on the CPU)."""
        return self._generator

    def state(self) -> Tensor:
        """A copy of the generator's state (for checkpoints)."""
        return self._generator.get_state().clone()

    def __getstate__(self) -> dict[str, object]:
        # A torch.Generator cannot cross into a spawned process (torch.multiprocessing shares its state tensor
        # through a file descriptor the child fails to map), so it travels as the seed and the state's bytes.
        return {"seed": self.seed, "state": bytes(self._generator.get_state().numpy().tobytes())}

    def __setstate__(self, saved: dict[str, object]) -> None:
        seed, state = saved["seed"], saved["state"]
        assert isinstance(seed, int) and isinstance(state, bytes)
        self.seed = seed
        self._generator = torch.Generator()
        self._generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))

    def restore(self, state: Tensor | None) -> None:
        """Continue from a state returned by :meth:`state`; ``None`` leaves the generator as it is."""
        if state is not None:
            self._generator.set_state(state.detach().to("cpu", torch.uint8))

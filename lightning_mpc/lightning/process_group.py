"""Destroy the process group before the interpreter shuts down, on every backend.

A process that exits with a gloo process group still alive can abort during interpreter finalization
("terminate called without an active exception", SIGABRT) after training finished normally: gloo's worker
threads still hold work objects whose tensors need the GIL while the interpreter is being torn down
(pytorch/pytorch#190489). Lightning registers this clean-up for NCCL only. Under the ``spawn`` launcher every
worker process exits right after ``fit``, so without it a correct two-process run fails at random.
"""

from __future__ import annotations

import atexit

import torch

__all__ = ["destroy_process_group_at_exit"]


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Have this process destroy its default process group at exit (whatever the backend).

    Idempotent: called after every ``setup_distributed``, it keeps one exit handler, a no-op if the group is
    already gone.
    """
    atexit.unregister(_destroy_process_group)
    atexit.register(_destroy_process_group)

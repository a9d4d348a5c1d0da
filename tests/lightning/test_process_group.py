"""The data-parallel strategies destroy their process group before the interpreter shuts down.

A worker that exits with a live gloo process group can abort with SIGABRT during interpreter finalization
after a correct run (pytorch/pytorch#190489); CI saw it twice in two-process tests. Whether the abort happens
is a race, so the test checks its cause deterministically: in a fresh interpreter that fits with a
data-parallel strategy, the group is gone by the time the last exit handler runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.lightning.helpers import free_port
from tests.scripts import ROOT

_SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from tests.lightning.helpers import Classifier, trainer, vector_data

    # Exit handlers run last-registered first: this one runs after any the strategy registers.
    atexit.register(lambda: print("process group at exit:", "alive" if dist.is_initialized() else "destroyed"))
    torch.manual_seed(0)
    model = Classifier()
    trainer(strategy=sys.argv[1], devices=1).fit(model, DataLoader(vector_data(n=16), batch_size=8))
    assert dist.is_initialized(), "the strategy should have made a process group"
    """
)


@pytest.mark.parametrize("strategy", ["mpc_ddp", "ff_ddp"])
def test_process_group_is_destroyed_before_the_interpreter_exits(strategy: str) -> None:
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, strategy],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process group at exit: destroyed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]

"""One real MPC run, logged to a CSVLogger and to an offline W&B run side by side, shared by the report tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_mpc import MPCStrategy, MPCTelemetry
from tests.lightning.helpers import Classifier, loader, trainer, vector_data

STEPS = 20
"""Optimizer steps of the shared run, each logged: enough history for the W&B log to cross a 32 KiB block."""
OFFLINE_WANDB = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
}


@dataclass
class LoggedRun:
    """The shared run's folders: the CSVLogger version folder and the W&B offline run folder."""

    csv: Path
    wandb: Path
    blocks: int


def offline_wandb_environment(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline and quiet, its caches under ``root``; ``WANDB_DIR`` unset (each test says where runs go)."""
    for name, value in OFFLINE_WANDB.items():
        monkeypatch.setenv(name, value)
    for name in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(root / f"wandb-{name.lower()}"))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="session")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("logged_run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_wandb_environment(monkeypatch, root)
        torch.manual_seed(0)
        csv_logger = CSVLogger(root, name="csv", version=0)
        wandb_logger = WandbLogger(offline=True, save_dir=str(root), project="lightning-mpc-report-test")
        try:
            trainer(
                strategy=MPCStrategy(horizon=2),
                logger=[csv_logger, wandb_logger],
                log_every_n_steps=1,
                max_epochs=1,
                callbacks=[MPCTelemetry(alignment_every=4)],
            ).fit(Classifier(), loader(vector_data(n=8 * STEPS)))
        finally:
            wandb_logger.experiment.finish()
    (run,) = (root / "wandb").glob("offline-run-*")
    return LoggedRun(csv=Path(csv_logger.log_dir), wandb=run, blocks=5)

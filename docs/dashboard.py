"""Make ``docs/img/dashboard.png``: the telemetry of a real MPC run, drawn like a W&B dashboard.

Trains the demo's 8-block MLP on the bundled MNIST digits with ``MPCStrategy(horizon=2)`` and
``MPCTelemetry(alignment_every=...)``, logging to a W&B run in offline mode (nothing leaves the machine)
and to a ``CSVLogger`` side by side; both receive the same metrics. The figure is drawn from the CSV by
the package's report (:func:`lightning_mpc.report.draw_dashboard`, what ``lightning-mpc report`` draws):
per-block local loss curves, the activation bytes each block's window holds against back-propagation,
per-block alignment with the true gradient, and per-block time.

Usage::

    python docs/dashboard.py                       # docs/img/dashboard.png, about a minute on 2 CPU cores
    python docs/dashboard.py --epochs 1 --limit 1000 --out /tmp/dashboard.png
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from lightning_mpc.report import draw_dashboard, load_run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "img" / "dashboard.png"


@contextlib.contextmanager
def offline_wandb(directory: Path) -> Iterator[None]:
    """W&B offline, quiet and inside ``directory``; the environment is restored on exit."""
    names = ("WANDB_MODE", "WANDB_SILENT", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(directory),
        WANDB_CACHE_DIR=str(directory / "cache"),
        WANDB_CONFIG_DIR=str(directory / "config"),
        WANDB_DATA_DIR=str(directory / "data"),
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def train(
    work: Path,
    *,
    epochs: int = 4,
    limit: int | None = None,
    batch_size: int = 128,
    horizon: int = 2,
    seed: int = 0,
    log_every: int = 5,
    alignment_every: int = 10,
) -> Path:
    """Run the training and return the path of the CSV metrics (the W&B offline run is under ``work/wandb``)."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lightning_mpc import MPCStrategy, MPCTelemetry
    from lightning_mpc.data import BundledMNIST
    from lightning_mpc.recipes import MLPClassifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with offline_wandb(work), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        L.seed_everything(seed, verbose=False)
        csv_logger = CSVLogger(work, name="csv", version=0)
        wandb_logger = WandbLogger(offline=True, save_dir=str(work), project="lightning-mpc-dashboard")
        try:
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                strategy=MPCStrategy(horizon=horizon),
                max_epochs=epochs,
                limit_val_batches=0,
                logger=[csv_logger, wandb_logger],
                log_every_n_steps=log_every,
                callbacks=[MPCTelemetry(alignment_every=alignment_every)],
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
            )
            trainer.fit(MLPClassifier(), BundledMNIST(batch_size=batch_size, limit=limit, shuffle_seed=seed))
        finally:
            wandb_logger.experiment.finish()
            torch.set_num_threads(threads)
    return Path(csv_logger.log_dir) / "metrics.csv"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw docs/img/dashboard.png from a real offline MPC run.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: docs/img/dashboard.png)")
    parser.add_argument("--work", type=Path, default=None, help="keep the run (CSV and W&B offline files) here")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="digits per split (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=5, help="Trainer(log_every_n_steps)")
    parser.add_argument("--alignment-every", type=int, default=10, help="MPCTelemetry(alignment_every)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        path = train(
            work,
            epochs=args.epochs,
            limit=args.limit,
            batch_size=args.batch_size,
            horizon=args.horizon,
            log_every=args.log_every,
            alignment_every=args.alignment_every,
        )
        title = (
            f"MPC telemetry: 8-block MLP, bundled MNIST, MPCStrategy(horizon={args.horizon}), "
            f"{args.epochs} epochs (offline W&B run)"
        )
        draw_dashboard(load_run(path).rows, args.out, title=title)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

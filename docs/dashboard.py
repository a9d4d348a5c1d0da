"""Make ``docs/img/dashboard.png``: the telemetry of a real MPC run, drawn like a W&B dashboard.

Trains the demo's 8-block MLP on the bundled MNIST digits with ``MPCStrategy(horizon=2)`` and
``MPCTelemetry(alignment_every=...)``, logging to a W&B run in offline mode (nothing leaves the machine)
and to a ``CSVLogger`` side by side; both receive the same metrics. The figure is drawn from the CSV:
per-block local loss curves, the activation bytes each block's window holds against back-propagation,
per-block alignment with the true gradient, and per-block time.

Usage::

    python docs/dashboard.py                       # docs/img/dashboard.png, about a minute on 2 CPU cores
    python docs/dashboard.py --epochs 1 --limit 1000 --out /tmp/dashboard.png
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "img" / "dashboard.png"
_KIB = 1024.0


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
    from lightning_mpc.demo import DemoMLP

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
            trainer.fit(DemoMLP(), BundledMNIST(batch_size=batch_size, limit=limit, shuffle_seed=seed))
        finally:
            wandb_logger.experiment.finish()
            torch.set_num_threads(threads)
    return Path(csv_logger.log_dir) / "metrics.csv"


def load(path: Path) -> list[dict[str, float]]:
    """The CSV rows merged per step (the telemetry's per-block row and Lightning's row of the same step)."""
    merged: dict[int, dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            if "step" in values:
                merged.setdefault(int(values["step"]), {}).update(values)
    return [merged[step] for step in sorted(merged)]


def _blocks(rows: Sequence[dict[str, float]]) -> list[int]:
    found = {int(key.split("/")[1][len("block_") :]) for row in rows for key in row if key.startswith("mpc/block_")}
    return sorted(found)


def _series(rows: Sequence[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in rows if key in row]
    return [p[0] for p in points], [p[1] for p in points]


def _mean(rows: Sequence[dict[str, float]], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def plot(rows: Sequence[dict[str, float]], out: Path, title: str = "MPC telemetry") -> Path:
    """Draw the four panels into ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = _blocks(rows)
    if not blocks:
        raise ValueError("No mpc/block_* metrics in the rows. HINT: train with MPCTelemetry and a logger.")
    colors = plt.get_cmap("viridis")([i / max(len(blocks) - 1, 1) for i in range(len(blocks))])
    last = len(blocks) - 1
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    fig.patch.set_facecolor("#f5f5f7")
    fig.suptitle(title, x=0.01, ha="left", fontsize=12, fontweight="bold")
    for ax in axes.flat:
        ax.set_facecolor("white")
        ax.grid(alpha=0.25)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    labels = [f"block {b:02d}" + (" (model output)" if b == blocks[last] else "") for b in blocks]

    ax = axes[0, 0]
    for color, block, label in zip(colors, blocks, labels):
        xs, ys = _series(rows, f"mpc/block_{block:02d}/loss")
        ax.plot(xs, ys, color=color, lw=1.4, label=label)
    ax.set_title("mpc/block_*/loss: local loss of each block's head", loc="left", fontsize=10)
    ax.set_xlabel("trainer/global_step")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2, frameon=False)

    ax = axes[0, 1]
    final = next((row for row in reversed(rows) if f"mpc/block_{blocks[0]:02d}/activation_bytes" in row), {})
    values = [final.get(f"mpc/block_{b:02d}/activation_bytes", 0.0) / _KIB for b in blocks]
    ax.bar([f"{b:02d}" for b in blocks], values, color=colors)
    backprop = _mean(rows, "mpc/backprop_activation_bytes")
    peak = _mean(rows, "mpc/peak_activation_bytes")
    if backprop:
        label = f"back-propagation: {backprop / _KIB:.0f} KiB"
        ax.axhline(backprop / _KIB, color="#d62728", ls="--", lw=1.2, label=label)
    if peak:
        share = f" ({peak / backprop:.0%} of BP)" if backprop else ""
        ax.axhline(peak / _KIB, color="black", lw=1.0, label=f"MPC step peak: {peak / _KIB:.0f} KiB{share}")
    ax.set_title("mpc/block_*/activation_bytes: held for each block's window", loc="left", fontsize=10)
    ax.set_xlabel("block")
    ax.set_ylabel("KiB saved for backward")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=True, framealpha=0.9, loc="center right")

    ax = axes[1, 0]
    for color, block, label in zip(colors, blocks, labels):
        xs, ys = _series(rows, f"mpc/block_{block:02d}/alignment")
        if xs:
            exact = all(abs(y - 1.0) < 1e-6 for y in ys)  # learns from the final loss, like back-propagation
            ax.plot(xs, ys, color=color, lw=3.0 if exact else 1.4, marker="o", ms=2.5, zorder=1 if exact else 2,
                    label=f"{label}: exactly 1" if exact else label)
    xs, ys = _series(rows, "mpc/alignment")
    if xs:
        ax.plot(xs, ys, color="black", lw=2.0, ls="--", label="mpc/alignment (whole network)")
    ax.set_title("mpc/block_*/alignment: cosine with the true gradient", loc="left", fontsize=10)
    ax.set_xlabel("trainer/global_step")
    ax.set_ylim(-0.2, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="lower right")
    else:
        message = "no alignment measured (MPCTelemetry(alignment_every=0))"
        ax.text(0.5, 0.5, message, ha="center", transform=ax.transAxes)

    ax = axes[1, 1]
    names = [f"{b:02d}" for b in blocks]
    forward = [_mean(rows, f"mpc/block_{b:02d}/forward_ms") or 0.0 for b in blocks]
    backward = [_mean(rows, f"mpc/block_{b:02d}/backward_ms") or 0.0 for b in blocks]
    ax.bar(names, forward, color="#4c72b0", label="forward_ms (block + head + loss)")
    ax.bar(names, backward, bottom=forward, color="#dd8452", label="backward_ms (head + window VJPs)")
    ax.set_title("mpc/block_*/forward_ms, backward_ms: mean per measured step", loc="left", fontsize=10)
    ax.set_xlabel("block")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8, frameon=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


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
        plot(load(path), args.out, title=title)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

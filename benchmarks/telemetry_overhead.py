"""What per-block telemetry costs a training step: MPC with telemetry off against on, side by side.

Trains the demo's 8-block MLP (:class:`lightning_mpc.recipes.MLPClassifier`) on the bundled MNIST digits with
``MPCStrategy(horizon=2)`` and a ``CSVLogger``, once per configuration, the configurations taking turns
for ``--rounds`` rounds in one process so that drift in the machine's speed hits them alike:

* ``off``: ``MPCStrategy(telemetry=False)``, the Trainer's default ``log_every_n_steps=50``;
* ``default``: the default ``MPCTelemetry()``, ``log_every_n_steps=50`` (what every MPC run gets);
* ``off (log every step)``: telemetry off, ``Trainer(log_every_n_steps=1)`` (Lightning writes its own
  metrics on every step: the baseline of the next two);
* ``every step``: telemetry on with ``log_every_n_steps=1``: memory, time and gradient norms measured
  on every step (the cost of one measured step, not a recommended setting);
* ``every step + alignment``: the same with ``MPCTelemetry(alignment_every=1)`` (one extra
  back-propagation per step).

Each configuration is compared with the telemetry-off run that logs as often. Run-to-run noise on a
shared machine is a few percent, as large as the default's overhead, so the script also measures that
overhead directly: one more ``default`` run with every telemetry hook and engine-observer call timed
(``--no-instrument`` skips it). That figure is the telemetry's own work per step (Lightning's dispatch of
the callback hooks not included), as a share of the ``off`` step time.

A step's time is the wall time from one ``on_train_batch_start`` to the next: the whole step, every
callback, and Lightning's writing of the logs. The figure per run is the mean over the steps after the
warm-up (the mean, not the median, so that the occasional measured step is paid for), and the figure
per configuration the median over rounds. Only the ratios are meant to be compared across machines.

Usage::

    python benchmarks/telemetry_overhead.py
    python benchmarks/telemetry_overhead.py --steps 400 --rounds 5 --batch-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_mpc import MPCStrategy, MPCTelemetry
from lightning_mpc.bench import StepTimer, Table, interleaved_rounds, machine_line, quiet_lightning
from lightning_mpc.bench.arguments import name_list, positive_int
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.data import BundledMNIST
from lightning_mpc.recipes import MLPClassifier
from lightning_mpc.telemetry import StepRecorder

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"telemetry": False, "log_every_n_steps": 50, "baseline": "off"},
    "default": {"telemetry": True, "log_every_n_steps": 50, "baseline": "off"},
    "off (log every step)": {"telemetry": False, "log_every_n_steps": 1, "baseline": "off (log every step)"},
    "every step": {"telemetry": True, "log_every_n_steps": 1, "baseline": "off (log every step)"},
    "every step + alignment": {
        "telemetry": MPCTelemetry,
        "alignment_every": 1,
        "log_every_n_steps": 1,
        "baseline": "off (log every step)",
    },
}


def run(name: str, *, steps: int, warmup: int, batch_size: int, horizon: int, seed: int, root: Path) -> float:
    """Train ``steps`` steps with configuration ``name``; returns the mean step time in seconds after the warm-up."""
    config = CONFIGS[name]
    telemetry: Any = config["telemetry"]
    if telemetry is MPCTelemetry:
        telemetry = MPCTelemetry(alignment_every=config["alignment_every"])
    L.seed_everything(seed, verbose=False)
    clock = StepTimer(skip=warmup, until="next")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=MPCStrategy(horizon=horizon, telemetry=telemetry),
        max_steps=steps,
        limit_val_batches=0,
        logger=CSVLogger(root, name="".join(c if c.isalnum() else "_" for c in name)),
        log_every_n_steps=config["log_every_n_steps"],
        callbacks=[clock],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(MLPClassifier(), BundledMNIST(batch_size=batch_size, shuffle_seed=seed))
    return clock.mean_ms / 1000.0


def _own_methods(cls: type, base: type) -> list[str]:
    """Public methods ``cls`` defines itself (not inherited from ``base``)."""
    return [n for n, v in vars(cls).items() if callable(v) and not n.startswith("_") and n not in vars(base)]


_HOOKS: dict[type, list[str]] = {
    MPCTelemetry: _own_methods(MPCTelemetry, object),
    # every observer event, and the real-memory measurement the recorder starts and stops on measured steps
    StepRecorder: [n for n in _own_methods(StepRecorder, object) if n in vars(EngineObserver) or n.endswith("_memory")],
}


@contextlib.contextmanager
def instrumented() -> Iterator[dict[str, float]]:
    """Time every telemetry hook and observer event (outermost calls only); yields ``{"seconds": total}``."""
    totals = {"seconds": 0.0}
    depth = [0]
    originals = [(cls, name, getattr(cls, name)) for cls, names in _HOOKS.items() for name in names]

    def timed(function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals["seconds"] += time.perf_counter() - start
                depth[0] -= 1

        return wrapper

    for cls, name, function in originals:
        setattr(cls, name, timed(function))
    try:
        yield totals
    finally:
        for cls, name, function in originals:
            setattr(cls, name, function)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, default=300, help="training steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the mean (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="runs per configuration, in turns (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default: %(default)s)")
    parser.add_argument("--horizon", type=positive_int, default=2, help="MPC horizon (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs",
        type=name_list,
        default=list(CONFIGS),
        help=f"comma-separated subset of: {', '.join(CONFIGS)} (default: all)",
    )
    parser.add_argument("--no-instrument", action="store_true", help="skip the instrumented run of the default")
    args = parser.parse_args(argv)
    names = args.configs
    unknown = [n for n in names if n not in CONFIGS]
    missing = sorted({CONFIGS[n]["baseline"] for n in names if n in CONFIGS} - set(names))
    if unknown or missing:
        parser.error(f"--configs must name only {list(CONFIGS)} and include the baselines {missing}; got {names}")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as root, quiet_lightning(logging.ERROR, all_warnings=True):
        common = {
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "horizon": args.horizon,
            "seed": args.seed,
            "root": Path(root),
        }
        base = "off" if "off" in names else names[0]
        timings = interleaved_rounds(
            {name: partial(run, name, **common) for name in names},  # type: ignore[arg-type]
            args.rounds,
            base=base,
            on_round=lambda i: print(f"  round {i + 1}/{args.rounds} done", flush=True),
        )
        own_ms = None
        if not args.no_instrument:
            with instrumented() as totals:
                run("default", **{**common, "warmup": 0})  # type: ignore[arg-type]
            own_ms = 1000.0 * totals["seconds"] / args.steps
    print()
    print(
        f"Telemetry overhead: MLPClassifier (8 blocks, 256 wide), batch {args.batch_size}, "
        f"MPCStrategy(horizon={args.horizon}), {args.steps} steps x {args.rounds} rounds"
    )
    print()
    table = Table(
        ["configuration", "mean step (ms), median of rounds", "baseline (telemetry off, same logging)", "ratio"]
    )
    for name in names:
        baseline = CONFIGS[name]["baseline"]
        value = timings.time(name).median
        ratio = value / timings.time(baseline).median
        table.add(name, f"{1e3 * value:.2f}", baseline, f"{ratio:.3f}")
    print(table.render(markdown=True))
    print()
    print(timings.noise_note())
    if own_ms is not None and "off" in names:
        off = 1e3 * timings.time("off").median
        print()
        print(
            f"Telemetry's own work at default settings, timed inside its hooks over {args.steps} steps (first batch, "
            f"measured steps and epoch ends included): {own_ms:.3f} ms/step, {100 * own_ms / off:.1f} % of the "
            f"{off:.2f} ms step without telemetry."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

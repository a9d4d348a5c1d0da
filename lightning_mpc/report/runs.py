"""Find a run's logs in a folder and read them into rows: Lightning ``CSVLogger`` folders and offline W&B runs."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_mpc.report.series import STEP, block_prefixes, merge_rows
from lightning_mpc.report.wandb_file import read_wandb_run

__all__ = ["NoRunError", "RunLog", "find_run", "load_run", "read_csv_rows"]

CSV_FILE = "metrics.csv"
"""What a Lightning ``CSVLogger`` version folder holds (next to ``hparams.yaml``)."""
WANDB_GLOB = "run-*.wandb"
"""The transaction log in a W&B run folder (``wandb/offline-run-<date>-<id>/run-<id>.wandb``)."""
SEARCH_DEPTH = 4
"""How many folder levels below ``RUN_DIR`` are searched (``lightning_logs/<name>/version_0`` is 3)."""


class NoRunError(FileNotFoundError):
    """The folder holds no run logs that a report can be drawn from."""


@dataclass
class RunLog:
    """The logs of one run, as rows merged per step.

    Attributes:
        kind: ``"csv"`` (a Lightning ``CSVLogger`` folder) or ``"wandb"`` (an offline W&B run).
        path: the file read (``metrics.csv`` or ``run-<id>.wandb``).
        rows: one dict per step, ``step`` included, numbers only.
        config: the run's configuration when the folder has one (LightningCLI's ``config.yaml`` and
            ``hparams.yaml`` for CSV runs, the run config for W&B runs).
        name: a short name for titles.
    """

    kind: Literal["csv", "wandb"]
    path: Path
    rows: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def folder(self) -> Path:
        """The run's folder (the ``CSVLogger`` version folder, or the W&B run folder)."""
        return self.path.parent

    @property
    def prefixes(self) -> list[str]:
        """The prefixes with per-block series (``["mpc"]`` for an MPC run)."""
        return block_prefixes(self.rows)


def _hint() -> str:
    return (
        "HINT: pass a CSVLogger version folder such as lightning_logs/<name>/version_0 (it holds metrics.csv), "
        "a folder above one, or an offline W&B run folder such as wandb/offline-run-<date>-<id>."
    )


def _candidates(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < SEARCH_DEPTH else []
        root_path = Path(root)
        if CSV_FILE in files:
            found.append(root_path / CSV_FILE)
        found.extend(sorted(root_path.glob(WANDB_GLOB)))
    return found


def find_run(path: str | os.PathLike[str]) -> Path:
    """The log file of the run in ``path``: its ``metrics.csv`` or its ``run-<id>.wandb``.

    ``path`` may be the file itself, the run's folder, or a folder above it (up to :data:`SEARCH_DEPTH`
    levels). When several runs are below ``path``, the shallowest wins, then the most recently written.

    Raises:
        NoRunError: when there is no such file (the message says what to pass instead).
    """
    target = Path(path)
    if not target.exists():
        raise NoRunError(f"{target} does not exist. {_hint()}")
    if target.is_file():
        if target.name == CSV_FILE or target.suffix == ".wandb":
            return target
        raise NoRunError(f"{target} is neither a {CSV_FILE} nor a .wandb run log. {_hint()}")
    found = _candidates(target)
    if not found:
        raise NoRunError(
            f"No run in {target}: no {CSV_FILE} (Lightning CSVLogger) and no {WANDB_GLOB} (W&B) within "
            f"{SEARCH_DEPTH} folder levels. {_hint()}"
        )
    return min(found, key=lambda p: (len(p.relative_to(target).parts), -p.stat().st_mtime, str(p)))


def _number(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)  # type: ignore[arg-type]
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv_rows(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The numeric cells of a Lightning ``metrics.csv``, merged per step (the telemetry's row and Lightning's)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {key: value for key, text in raw.items() if key and (value := _number(text)) is not None}
            if STEP in row:
                rows.append(row)
    return merge_rows(rows)


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def load_run(path: str | os.PathLike[str]) -> RunLog:
    """Find (:func:`find_run`) and read the run in ``path``.

    Raises:
        NoRunError: when ``path`` holds no run.
    """
    log = find_run(path)
    if log.suffix == ".wandb":
        run = read_wandb_run(log)
        name = run.name or run.run_id or log.parent.name
        return RunLog("wandb", log, run.rows, run.config, name=f"W&B run {name}")
    folder = log.parent
    config = {"hparams": _yaml(folder / "hparams.yaml"), **_yaml(folder / "config.yaml")}
    name = "/".join(folder.parts[-2:])
    return RunLog("csv", log, read_csv_rows(log), config, name=f"CSV run {name}")

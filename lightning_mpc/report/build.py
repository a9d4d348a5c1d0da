"""``write_report``: a run's logs in, the per-block figure (PNG) and one self-contained HTML page out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_mpc.report.figure import draw_dashboard
from lightning_mpc.report.page import Figure, markdown_table, render_page
from lightning_mpc.report.runs import RunLog, load_run
from lightning_mpc.report.series import summary_rows

__all__ = ["Report", "run_facts", "write_report"]

HTML_FILE = "report.html"


@dataclass
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        run: the run that was read.
        html: the self-contained HTML page.
        figures: one PNG per metric prefix (``dashboard-mpc.png``).
        tables: one Markdown summary table per prefix, keyed by prefix.
    """

    run: RunLog
    html: Path
    figures: dict[str, Path]
    tables: dict[str, str]


def _strategy_facts(strategy: Any) -> dict[str, str]:
    if isinstance(strategy, str):
        return {"strategy": strategy}
    if not isinstance(strategy, Mapping):
        return {}
    facts = {"strategy": str(strategy.get("class_path", "?"))}
    arguments = strategy.get("init_args") or {}
    for key in ("horizon", "mode"):
        if key in arguments:
            facts[key] = str(arguments[key])
    return facts


def run_facts(run: RunLog, prefix: str) -> dict[str, str]:
    """The facts shown above the figure: where the run came from and, when its config says, horizon and mode."""
    kind = {"csv": "Lightning CSVLogger", "wandb": "W&B run (offline log)"}[run.kind]
    facts = {"logs": kind, "logged steps": str(len(run.rows))}
    section = run.config.get(prefix)
    if isinstance(section, Mapping):  # the W&B run config that MPCTelemetry fills
        facts.update({key: str(section[key]) for key in ("horizon", "mode", "num_blocks") if key in section})
    trainer = run.config.get("trainer")
    if isinstance(trainer, Mapping):  # LightningCLI's config.yaml next to metrics.csv
        facts.update(_strategy_facts(trainer.get("strategy")))
    model = run.config.get("model")
    if isinstance(model, Mapping) and "class_path" in model:
        facts["model"] = str(model["class_path"])
    return facts


def _partition(run: RunLog, prefix: str) -> list[Mapping[str, Any]]:
    section = run.config.get(prefix)
    rows = section.get("partition") if isinstance(section, Mapping) else None
    return [row for row in rows if isinstance(row, Mapping)] if isinstance(rows, list) else []


def write_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    prefixes: Sequence[str] | None = None,
    title: str | None = None,
) -> Report:
    """Read the run in ``path`` and write ``report.html`` and ``dashboard-<prefix>.png`` into ``out``.

    Args:
        path: a ``CSVLogger`` version folder, a folder above one, an offline W&B run folder, or the log
            file itself (see :func:`~lightning_mpc.report.find_run`).
        out: the output folder (default: ``report`` inside the run's folder).
        prefixes: the metric prefixes to draw (default: every prefix with ``<prefix>/block_NN/...`` series).
        title: the page's and the figures' title (default: from the run).

    Returns:
        The files written and the summary tables.

    Raises:
        NoRunError: when ``path`` holds no run.
        ValueError: when the run has no per-block series (or none under the given prefixes).
    """
    run = load_run(path)
    chosen = list(prefixes) if prefixes else run.prefixes
    missing = [prefix for prefix in chosen if prefix not in run.prefixes]
    if not chosen or missing:
        found = ", ".join(run.prefixes) or "none"
        raise ValueError(
            f"{run.path} has no per-block series{' under ' + ', '.join(missing) if missing else ''} "
            f"(prefixes with <prefix>/block_NN/<name> series: {found}). HINT: train with MPCStrategy (its "
            "telemetry is on by default; MPCStrategy(telemetry=False) logs none) and a logger, for at least "
            "Trainer(log_every_n_steps) steps."
        )
    folder = Path(out) if out is not None else run.folder / "report"
    folder.mkdir(parents=True, exist_ok=True)
    heading = title or f"Per-block telemetry: {run.name}"
    figures: list[Figure] = []
    tables: dict[str, str] = {}
    for prefix in chosen:
        png = draw_dashboard(run.rows, folder / f"dashboard-{prefix}.png", prefix=prefix, title=heading)
        columns, rows = summary_rows(run.rows, prefix)
        tables[prefix] = markdown_table(columns, rows)
        figures.append(Figure(prefix, png, columns, rows, _partition(run, prefix)))
    page = folder / HTML_FILE
    page.write_text(render_page(heading, str(run.path), run_facts(run, chosen[0]), figures), encoding="utf-8")
    return Report(run, page, {figure.prefix: figure.png for figure in figures}, tables)

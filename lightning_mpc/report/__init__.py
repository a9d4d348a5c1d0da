"""Dashboards a user can open: the offline report, the W&B saved view and the TensorBoard layout.

- :func:`write_report` (``lightning-mpc report RUN_DIR``): reads a run's Lightning CSV logs or an offline
  W&B run and draws the per-block figure (loss, memory, alignment, time per block) into a PNG and one
  self-contained HTML page.
- :func:`build_workspace` (``lightning-mpc dashboard --entity E --project P``): a W&B workspace view
  with one section per metric family and the partition table, built with ``wandb-workspaces``.
- :func:`custom_scalars_layout` / :func:`add_tensorboard_layout`: a TensorBoard custom-scalars layout
  that groups the per-block charts.

All three read metric names by the pattern ``<prefix>/block_<NN>/<name>`` (:mod:`.series`), so every
credit-assignment rule's per-block series appear without a list of names.
"""

from lightning_mpc.report.build import Report, run_facts, write_report
from lightning_mpc.report.figure import draw_dashboard
from lightning_mpc.report.runs import NoRunError, RunLog, find_run, load_run, read_csv_rows
from lightning_mpc.report.series import SECTIONS, Chart, Section, block_pattern, block_prefixes, summary_rows
from lightning_mpc.report.tensorboard import add_tensorboard_layout, custom_scalars_layout
from lightning_mpc.report.wandb_file import WandbRun, read_records, read_wandb_run
from lightning_mpc.report.wandb_view import build_workspace, workspace_spec

__all__ = [
    "SECTIONS",
    "Chart",
    "NoRunError",
    "Report",
    "RunLog",
    "Section",
    "WandbRun",
    "add_tensorboard_layout",
    "block_pattern",
    "block_prefixes",
    "build_workspace",
    "custom_scalars_layout",
    "draw_dashboard",
    "find_run",
    "load_run",
    "read_csv_rows",
    "read_records",
    "read_wandb_run",
    "run_facts",
    "summary_rows",
    "workspace_spec",
    "write_report",
]

"""A saved W&B workspace view for runs of this plugin, built with W&B's own ``wandb-workspaces`` library.

Sections: per-block loss, memory, alignment, time (one line plot per chart family of
:data:`~lightning_mpc.report.series.SECTIONS`, every block's series selected by a regular expression, so
the view fits any depth), and the partition table that ``MPCTelemetry`` logs (``mpc/partition``, and
the per-epoch ``mpc/blocks``). Building the view needs no network; :func:`workspace_spec` gives the JSON
that ``Workspace.save()`` would send, and ``lightning-mpc dashboard --export FILE`` writes it.
"""

from __future__ import annotations

from typing import Any

from lightning_mpc.report.series import SECTIONS, chart_pattern

__all__ = ["STEP_METRIC", "WORKSPACES_HINT", "build_workspace", "import_workspaces", "workspace_spec"]

STEP_METRIC = "trainer/global_step"
"""The x-axis of every chart (the telemetry defines its series against it, ``define_metric``)."""
WORKSPACES_HINT = "HINT: pip install 'lightning-mpc[dashboards]' (or pip install wandb-workspaces)."


def import_workspaces() -> tuple[Any, Any]:
    """``(wandb_workspaces.workspaces, wandb_workspaces.reports.v2)``.

    Raises:
        ModuleNotFoundError: when ``wandb-workspaces`` is not installed (the message says how to get it).
    """
    try:
        import wandb_workspaces.reports.v2 as reports
        from wandb_workspaces import workspaces
    except ImportError as error:
        raise ModuleNotFoundError(
            f"The W&B view needs the wandb-workspaces package ({error}). {WORKSPACES_HINT}", name="wandb_workspaces"
        ) from error
    return workspaces, reports


def build_workspace(entity: str, project: str, *, prefix: str = "mpc", name: str | None = None) -> Any:
    """The workspace view, not saved (call ``.save()`` on it to create it in W&B).

    Args:
        entity: the W&B entity (user or team) that owns the project.
        project: the W&B project the runs log to.
        prefix: the metric prefix of the credit-assignment rule (``"mpc"``).
        name: the view's name (default: ``"lightning-mpc: <prefix> per-block telemetry"``).

    Returns:
        A ``wandb_workspaces.workspaces.Workspace``.

    Raises:
        ModuleNotFoundError: when ``wandb-workspaces`` is not installed.
    """
    ws, wr = import_workspaces()
    sections = []
    for section in SECTIONS:
        panels = [
            wr.LinePlot(
                title=f"{prefix}: {chart.title}",
                x=STEP_METRIC,
                metric_regex=chart_pattern(prefix, chart),
                log_y=True if chart.log_y else None,
            )
            for chart in section.charts
        ]
        sections.append(
            ws.Section(
                name=f"{prefix}: {section.title}",
                panels=panels,
                is_open=True,
                panel_settings=ws.SectionPanelSettings(x_axis=STEP_METRIC),
            )
        )
    sections.append(
        ws.Section(
            name=f"{prefix}: Partition",
            panels=[
                wr.WeavePanelSummaryTable(table_name=f"{prefix}/partition", layout=wr.Layout(w=24, h=10)),
                wr.WeavePanelSummaryTable(table_name=f"{prefix}/blocks", layout=wr.Layout(w=24, h=10)),
            ],
            is_open=True,
        )
    )
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"lightning-mpc: {prefix} per-block telemetry",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=STEP_METRIC),
    )


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The view as the JSON-ready dict ``Workspace.save()`` sends (no network).

    ``wandb_workspaces.workspaces.Workspace._from_model(internal.View.model_validate(spec))`` reads it back.
    """
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")

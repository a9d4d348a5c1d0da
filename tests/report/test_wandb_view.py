"""The W&B saved view, built offline with wandb-workspaces: sections, panels, metric regexes, export."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from lightning_mpc.cli import main
from lightning_mpc.report.series import SECTIONS
from lightning_mpc.report.wandb_view import STEP_METRIC, build_workspace, import_workspaces, workspace_spec
from lightning_mpc.telemetry import block_key as _block_key


def block_key(index: int, name: str) -> str:
    return _block_key("mpc", index, name)

ws = pytest.importorskip("wandb_workspaces.workspaces", reason="pip install 'lightning-mpc[dashboards]'")
wr = pytest.importorskip("wandb_workspaces.reports.v2")


def test_the_view_has_one_section_per_family_and_the_partition() -> None:
    view = build_workspace("team", "proj")
    assert (view.entity, view.project, view.name) == ("team", "proj", "lightning-mpc: mpc per-block telemetry")
    assert [s.name for s in view.sections] == [
        "mpc: Per-block loss",
        "mpc: Memory",
        "mpc: Alignment",
        "mpc: Time",
        "mpc: Partition",
    ]
    for section, family in zip(view.sections, SECTIONS):
        assert [type(p) for p in section.panels] == [wr.LinePlot] * len(family.charts)
        assert all(p.x == STEP_METRIC for p in section.panels) and section.is_open
    loss, accuracy = view.sections[0].panels
    assert loss.log_y is True and accuracy.log_y is None
    tables = view.sections[-1].panels
    assert [type(p) for p in tables] == [wr.WeavePanelSummaryTable] * 2
    assert [p.table_name for p in tables] == ["mpc/partition", "mpc/blocks"]  # what MPCTelemetry logs
    assert view.settings.x_axis == STEP_METRIC


def test_every_telemetry_series_lands_in_exactly_one_chart() -> None:
    view = build_workspace("team", "proj")
    patterns = [re.compile(p.metric_regex) for s in view.sections[:-1] for p in s.panels]
    for name in (
        "loss",
        "accuracy",
        "activation_bytes",
        "cuda_peak_bytes",
        "alignment",
        "grad_norm",
        "forward_ms",
        "backward_ms",
    ):
        for index in (0, 5, 31):
            assert sum(bool(p.search(block_key(index, name))) for p in patterns) == 1, name
    for total in ("alignment", "peak_activation_bytes", "backprop_activation_bytes", "activation_ratio"):
        assert sum(bool(p.search(f"mpc/{total}")) for p in patterns) == 1, total
    for other in ("mpc/block_00/loss_epoch", "train_loss", "mpc/charts/block_loss", "ff/block_00/loss"):
        assert not any(p.search(other) for p in patterns), other


def test_another_rules_prefix_gets_its_own_view() -> None:
    view = build_workspace("team", "proj", prefix="ff", name="FF")
    assert view.name == "FF" and view.sections[0].panels[0].metric_regex == "^ff/block_[0-9]+/loss$"
    assert view.sections[-1].panels[0].table_name == "ff/partition"


def test_the_exported_spec_reads_back_as_the_same_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "view.json"
    assert main(["dashboard", "--entity", "team", "--project", "proj", "--export", str(out)]) == 0
    assert "not saved" in capsys.readouterr().out
    spec = json.loads(out.read_text(encoding="utf-8"))
    assert spec["entity"] == "team" and spec["project"] == "proj"
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections][-1] == "mpc: Partition"
    first = sections[0]["panels"][0]["config"]
    assert first["useMetricRegex"] is True and first["metricRegex"] == "^mpc/block_[0-9]+/loss$"
    assert first["xAxis"] == STEP_METRIC
    from wandb_workspaces.workspaces import internal

    again = ws.Workspace._from_model(internal.View.model_validate(spec))
    view = build_workspace("team", "proj")
    assert [s.name for s in again.sections] == [s.name for s in view.sections]
    assert [p.metric_regex for s in again.sections[:-1] for p in s.panels] == [
        p.metric_regex for s in view.sections[:-1] for p in s.panels
    ]
    assert workspace_spec(view)["displayName"] == spec["displayName"]


def test_a_missing_wandb_workspaces_is_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # what an environment without it sees
    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    with pytest.raises(ModuleNotFoundError, match=r"HINT: pip install 'lightning-mpc\[dashboards\]'"):
        import_workspaces()
    assert main(["dashboard", "--entity", "team", "--export", str(tmp_path / "v.json")]) == 1
    err = capsys.readouterr().err
    assert "wandb-workspaces" in err and "HINT" in err and not (tmp_path / "v.json").exists()


def test_saving_without_credentials_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: object) -> None:
        raise PermissionError("no API key configured")

    monkeypatch.setattr(ws.Workspace, "save", refuse)  # no request leaves the machine
    assert main(["dashboard", "--entity", "team", "--project", "proj"]) == 1
    err = capsys.readouterr().err
    assert "PermissionError: no API key configured" in err and "wandb login" in err and "--export" in err

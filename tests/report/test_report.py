"""``lightning-mpc report``: the per-block figure (PNG) and one self-contained HTML page, from CSV and W&B runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from lightning_mpc.cli import main
from lightning_mpc.report import draw_dashboard, load_run, write_report
from lightning_mpc.report.figure import alignment_limits
from lightning_mpc.report.page import format_cell
from tests.report.conftest import LoggedRun

PNG = b"\x89PNG\r\n\x1a\n"


def _assert_self_contained(page: str) -> None:
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", source) for source in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(?i)(?:https?:|url\(|@import|//[a-z0-9])", text), "the page must not reach the network"


@pytest.mark.parametrize("kind", ["csv", "wandb"])
def test_report_of_a_real_run(logged_run: LoggedRun, tmp_path: Path, kind: str) -> None:
    run_dir = logged_run.csv if kind == "csv" else logged_run.wandb
    report = write_report(run_dir, tmp_path / "out")
    assert report.run.kind == kind
    assert report.html == tmp_path / "out" / "report.html"
    assert report.figures == {"mpc": tmp_path / "out" / "dashboard-mpc.png"}
    assert report.figures["mpc"].read_bytes().startswith(PNG)
    page = report.html.read_text(encoding="utf-8")
    _assert_self_contained(page)
    table = report.tables["mpc"].splitlines()
    assert table[0].startswith("| block | loss (last) | accuracy (last) | activation_bytes (mean)")
    assert len(table) == 2 + logged_run.blocks
    assert [line.split("|")[1].strip() for line in table[2:]] == [f"{b:02d}" for b in range(logged_run.blocks)]
    for column in ("loss (last)", "alignment (mean)", "forward_ms (mean)"):
        assert f"<th>{column}</th>" in page
    if kind == "wandb":  # the run config carries horizon and the partition
        assert "<td>horizon</td><td>2</td>" in page and "Partition" in page
    else:
        assert "Partition" not in page


def test_both_sources_give_the_same_table(logged_run: LoggedRun, tmp_path: Path) -> None:
    csv_report = write_report(logged_run.csv, tmp_path / "csv")
    wandb_report = write_report(logged_run.wandb, tmp_path / "wandb")
    assert csv_report.tables == wandb_report.tables


def test_default_output_is_inside_the_run_folder(logged_run: LoggedRun, tmp_path: Path) -> None:
    copy = shutil.copytree(logged_run.csv, tmp_path / "version_0")
    report = write_report(copy)
    assert report.html == copy / "report" / "report.html"


def test_the_command_prints_the_table_and_the_files(
    logged_run: LoggedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(logged_run.wandb), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {tmp_path / 'report.html'} and {tmp_path / 'dashboard-mpc.png'}" in out
    assert "| block | loss (last)" in out


def test_the_command_explains_a_folder_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lightning-mpc report: error: No run in") and "HINT:" in err and "Traceback" not in err


def test_a_run_without_block_series_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n0,0,1.0\n", encoding="utf-8")
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "has no per-block series" in err and "MPCStrategy(telemetry=False) logs none" in err
    assert main(["report", str(tmp_path), "--prefix", "ff"]) == 1


def test_the_figure_draws_another_rules_series_and_notes_what_is_missing(tmp_path: Path) -> None:
    # a rule with a loss and an unknown series only: no memory, alignment or time panels to fill
    rows = [{"step": float(s), "ff/block_00/loss": 1.0 / (s + 1), "ff/block_01/goodness": 2.0} for s in range(3)]
    assert draw_dashboard(rows, tmp_path / "ff.png", prefix="ff").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="No mpc/block_NN"):
        draw_dashboard(rows, tmp_path / "mpc.png")
    report = write_report(_csv_of(rows, tmp_path / "run"), tmp_path / "out")
    assert set(report.figures) == {"ff"}
    assert "goodness (mean)" in report.tables["ff"]


def test_the_alignment_panel_shows_negative_cosines() -> None:
    # the demo's blocks 00 and 01 reached -0.31 at step 40, below the fixed -0.2 floor the panel had
    assert alignment_limits([0.56, -0.31, 0.97]) == pytest.approx((-0.36, 1.05))
    assert alignment_limits([0.3, 1.0]) == (-0.2, 1.05)
    assert alignment_limits([-1.0]) == (-1.05, 1.05)
    assert alignment_limits([]) == (-0.2, 1.05)


def _csv_of(rows: list[dict[str, float]], folder: Path) -> Path:
    folder.mkdir(parents=True)
    keys = sorted({key for row in rows for key in row})
    lines = [",".join(keys)] + [",".join(str(row.get(key, "")) for key in keys) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_cells_are_formatted_by_unit() -> None:
    assert format_cell("block", 3.0) == "03"
    assert format_cell("activation_bytes (mean)", 2048.0) == "2.0 KiB"
    assert format_cell("forward_ms (mean)", 0.12345) == "0.123"
    assert format_cell("parameters", 200960) == "200,960"
    assert format_cell("loss (last)", 0.123456) == "0.1235"
    assert format_cell("loss (last)", None) == "-"


def test_run_facts_of_a_cli_run(tmp_path: Path) -> None:
    folder = _csv_of([{"step": 0.0, "mpc/block_00/loss": 1.0}], tmp_path / "version_0")
    (folder / "config.yaml").write_text(
        "trainer:\n  strategy:\n    class_path: lightning_mpc.MPCStrategy\n    init_args:\n      horizon: 4\n"
        "model:\n  class_path: lightning_mpc.recipes.MLPClassifier\n",
        encoding="utf-8",
    )
    page = write_report(folder, tmp_path / "out").html.read_text(encoding="utf-8")
    assert "<td>horizon</td><td>4</td>" in page and "lightning_mpc.recipes.MLPClassifier" in page
    assert load_run(folder).config["trainer"]["strategy"]["init_args"]["horizon"] == 4

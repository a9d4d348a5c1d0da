"""End-to-end smoke test of ``python -m lightning_mpc.demo`` on a few bundled digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_mpc import demo


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    code = demo.main(
        [
            "--out",
            str(tmp_path),
            "--limit",
            "256",
            "--epochs",
            "1",
            "--horizons",
            "1,2",
            "--batch-size",
            "128",
            "--rounds",
            "2",
            "--timing-steps",
            "1",
        ]
    )
    assert code == 0

    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith(("| BP ", "| MPC "))]
    assert [row.split("|")[1].strip() for row in rows] == ["BP", "MPC (sliding)", "MPC (sliding)"]
    assert [row.split("|")[2].strip() for row in rows] == ["8 (all)", "1", "2"]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 7
        accuracy, peak_mib, memory_ratio = float(cells[2]), float(cells[3]), float(cells[4])
        assert 0.0 <= accuracy <= 100.0
        assert peak_mib > 0
        assert memory_ratio > 0
    assert float(rows[0].strip("|").split("|")[4]) == 1.0
    # at batch 128 local learning holds less real memory than back-propagation
    assert float(rows[1].strip("|").split("|")[4]) < 1.0
    assert "first 256 digits" in report and "--limit 256" in report and "timed rounds" in report
    assert "h = T/2 = 4 was not run" in report

    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "logs" / "bp" / "metrics.csv").is_file()
    assert (tmp_path / "logs" / "mpc_sliding_h2" / "metrics.csv").is_file()
    # the per-block report of one more MPC run with telemetry (h = T/2 was not requested: the largest, 2)
    assert (tmp_path / "logs" / "mpc_sliding_h2_telemetry" / "metrics.csv").is_file()
    assert (tmp_path / "dashboard" / "dashboard-mpc.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (tmp_path / "dashboard" / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "<th>loss (last)</th>" in page
    assert "## Per-block telemetry" in report and "](dashboard/dashboard-mpc.png)" in report


@pytest.mark.parametrize("argv", [["--horizons", "0"], ["--horizons", "a,b"], ["--modes", "diagonal"]])
def test_demo_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        demo.build_parser().parse_args(argv)
    assert info.value.code == 2

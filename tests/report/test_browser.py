"""The report page in a real headless browser (runs only where Chromium is installed; CI has none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_mpc.report import write_report
from tests.report.conftest import LoggedRun
from tests.scripts import load_script


def _script():  # type: ignore[no-untyped-def]
    return load_script("docs/check_report_html.py")


def test_chromium_renders_the_page_with_its_figure(logged_run: LoggedRun, tmp_path: Path) -> None:
    checker = _script()
    if checker.find_browser() is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium); the check is docs/check_report_html.py")
    report = write_report(logged_run.csv, tmp_path / "report")
    rendering = checker.check(report.html, tmp_path / "screenshot.png")
    assert rendering.size == (1400, 2400)
    assert rendering.ok, rendering.colour_pixels


def test_a_page_without_the_figure_fails_the_check(tmp_path: Path) -> None:
    checker = _script()
    if checker.find_browser() is None:
        pytest.skip("no Chromium on PATH")
    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><html><body><h1>no figure</h1></body></html>", encoding="utf-8")
    assert checker.main([str(page)]) == 1

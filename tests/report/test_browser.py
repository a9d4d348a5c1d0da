"""The report page in a real headless browser (runs only where Chromium is installed; CI has none)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lightning_mpc.report import write_report
from tests.report.conftest import LoggedRun

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("check_report_html", ROOT / "docs" / "check_report_html.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


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

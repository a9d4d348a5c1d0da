"""The documentation site builds with ``mkdocs build --strict`` (what CI checks), and its diagram script runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(entries: list) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (make test installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("horizon_backward", "MPCStrategy", "MPCMixin", "SavedTensorMeter", "profile_blocks", "partition"):
        assert f'id="lightning_mpc.{name}"' in api, f"the API reference lost {name}"
    assert (tmp_path / "site" / "img" / "frontier.png").is_file()


def test_every_page_is_in_the_nav() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    nav = set(_nav_pages(config["nav"]))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert not pages - nav, f"add these pages to the nav in mkdocs.yml: {sorted(pages - nav)}"
    assert not nav - pages, f"the nav in mkdocs.yml names missing pages: {sorted(nav - pages)}"


def test_window_diagram_script(tmp_path: Path) -> None:
    diagrams = load_script("docs/diagrams.py")
    # sliding: l_j trains block j - h and passes through the blocks between; block: whole windows
    assert diagrams.cells(4, 2, "sliding")[2] == ["", "trains", "passes", ""]
    assert diagrams.cells(4, 2, "block")[1] == ["trains", "trains", "", ""]
    assert diagrams.cells(4, 2, "block")[2] == ["", "", "", ""]
    diagrams.main(["--out", str(tmp_path / "w.png"), "--blocks", "4", "--horizon", "2"])
    assert (tmp_path / "w.png").read_bytes().startswith(b"\x89PNG")

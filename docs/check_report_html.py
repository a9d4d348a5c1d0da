"""Open a ``lightning-mpc report`` page in a real headless browser and check that it renders.

Chromium (Debian: ``apt-get install chromium``) loads ``report.html`` from disk with every network feature
off and takes a screenshot; the check then looks for the figure in the screenshot: the forward and
backward bars of the time panel, solid areas in two known colours, only appear if the inlined PNG was
decoded and drawn. The page has no external resource, so nothing else can make it render.

Usage::

    lightning-mpc report lightning_logs/mnist_mlp/version_0 --out /tmp/report
    python docs/check_report_html.py /tmp/report/report.html --screenshot /tmp/report/screenshot.png

Exit status 0 when the page rendered with its figure, 1 otherwise, 2 when no Chromium is installed.
``tests/report/test_browser.py`` runs it when ``chromium`` is on ``PATH`` and is skipped otherwise (CI does
not install a browser).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FIGURE_COLOURS = {"forward_ms bars": (0x4C, 0x72, 0xB0), "backward_ms bars": (0xDD, 0x84, 0x52)}
"""Solid colours of the figure's time panel (``lightning_mpc.report.figure``)."""
MIN_PIXELS = 200
"""Pixels of each colour the screenshot must show (each bar area is thousands of pixels)."""


@dataclass
class Rendering:
    """What the browser showed.

    Attributes:
        screenshot: the PNG the browser wrote.
        size: its width and height in pixels.
        colour_pixels: how many pixels of each figure colour it holds.
    """

    screenshot: Path
    size: tuple[int, int]
    colour_pixels: dict[str, int]

    @property
    def ok(self) -> bool:
        """The figure is visible: every colour is present in at least :data:`MIN_PIXELS` pixels."""
        return all(count >= MIN_PIXELS for count in self.colour_pixels.values())


def find_browser() -> str | None:
    """The first Chromium-family browser on ``PATH``."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, *, browser: str, width: int = 1400, height: int = 2400) -> Path:
    """Render ``page`` in headless Chromium (no network features, a throw-away profile) into the PNG ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} did not render {page} (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return out


def inspect(path: Path) -> Rendering:
    """Count the pixels of each figure colour in a screenshot (within 12 levels per channel)."""
    import matplotlib.image
    import numpy as np

    pixels = np.asarray(matplotlib.image.imread(path))[..., :3]
    if pixels.dtype != np.uint8:
        pixels = np.round(pixels * 255).astype(np.int16)
    counts = {
        name: int((np.abs(pixels.astype(np.int16) - np.array(colour)).max(axis=-1) <= 12).sum())
        for name, colour in FIGURE_COLOURS.items()
    }
    return Rendering(path, (pixels.shape[1], pixels.shape[0]), counts)


def check(page: Path, out: Path | None = None, browser: str | None = None) -> Rendering:
    """Render ``page`` and inspect the screenshot (written to ``out``, default ``screenshot.png`` next to it)."""
    browser = browser or find_browser()
    if browser is None:
        names = ", ".join(BROWSERS)
        raise FileNotFoundError(f"No Chromium on PATH (looked for {names}). HINT: apt-get install chromium")
    return inspect(screenshot(page, out or page.with_name("screenshot.png"), browser=browser))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a lightning-mpc report page in headless Chromium, check it.")
    parser.add_argument("page", type=Path, help="the report.html to open")
    parser.add_argument("--screenshot", type=Path, default=None, help="PNG to write (default: next to the page)")
    parser.add_argument("--browser", default=None, help="browser executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    try:
        rendering = check(args.page, args.screenshot, args.browser)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    width, height = rendering.size
    print(f"{rendering.screenshot}: {width}x{height} px, figure colours {rendering.colour_pixels}")
    print("rendered with its figure" if rendering.ok else "the figure is NOT visible")
    return 0 if rendering.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Render a `trtq report --html` page in headless Chromium and count the precision colours in the screenshot.

Used by tests/test_report_html.py and by hand to look at the report as a user would:

    python scripts/render_report_screenshot.py --out /tmp/shot            # A100 ResNet FP16 vs QAT fixtures
    python scripts/render_report_screenshot.py --layers m.graph.json --profile m.profile.json --out /tmp/shot

Writes OUT/report.html and OUT/report.png and prints JSON: the files, the image size and the number of
pixels drawn in each precision colour. Needs Debian's ``chromium`` (``apt-get install chromium``) or
another Chromium/Chrome on PATH (or in $CHROMIUM). Chromium runs with networking features off; the
page itself references nothing outside the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "report" / "a100-resnet"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) or Path(explicit).is_file() else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def screenshot(html: Path, png: Path, size: tuple[int, int], browser: str, timeout_s: float = 120) -> None:
    """Headless Chromium screenshot of a local file, with background networking and updates off."""
    with tempfile.TemporaryDirectory(prefix="trtq-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
            html.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot")


def color_pixels(png: Path, colors: dict[str, str]) -> dict[str, int]:
    """Exact-match pixel counts per ``#rrggbb`` colour."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return {name: int(np.count_nonzero(packed == int(hex_color[1:], 16))) for name, hex_color in colors.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default=str(FIXTURES / "fp16.graph.json"), help="layer JSON of engine A")
    parser.add_argument("--profile", default=None, help="profile of A (default: NAME.profile.json beside it)")
    parser.add_argument("--compare", default=str(FIXTURES / "qat.graph.json"),
                        help="layer JSON of engine B ('' for none)")
    parser.add_argument("--compare-profile", default=None, help="profile of B")
    parser.add_argument("--out", default=None, help="output directory (default: a new temporary one)")
    parser.add_argument("--size", default="1280,2000", help="window size WIDTH,HEIGHT")
    args = parser.parse_args(argv)

    from click.testing import CliRunner

    from trtq.cli import cli
    from trtq.report.html import PRECISION_COLORS

    browser = find_chromium()
    if browser is None:
        print("chromium not found: apt-get install chromium (or set CHROMIUM=/path/to/chrome)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="trtq-report-"))
    out.mkdir(parents=True, exist_ok=True)
    html, png = out / "report.html", out / "report.png"
    cmd = ["report", args.layers, "--html", str(html), "-q"]
    if args.profile:
        cmd += ["--profile", args.profile]
    if args.compare:
        cmd += ["--compare", args.compare]
    if args.compare_profile:
        cmd += ["--compare-profile", args.compare_profile]
    result = CliRunner().invoke(cli, cmd)
    if result.exit_code != 0:
        print(result.output, file=sys.stderr)
        return result.exit_code or 1
    width, height = (int(v) for v in args.size.split(","))
    screenshot(html, png, (width, height), browser)
    image_size = Image.open(png).size
    print(json.dumps({"html": str(html), "png": str(png), "size": list(image_size), "browser": browser,
                      "pixels": color_pixels(png, PRECISION_COLORS)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

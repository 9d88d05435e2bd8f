"""The HTML report: self-contained, charts present, and, with Chromium installed, rendered for real."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.report_data import A100
from trtq.report.analysis import build_report
from trtq.report.compare import compare_reports
from trtq.report.html import PRECISION_COLORS, donut_svg, render_html
from trtq.report.layers import load_layer_info
from trtq.report.profile import load_profile

SCRIPT = REPO / "scripts" / "render_report_screenshot.py"
_spec = importlib.util.spec_from_file_location("render_report_screenshot", SCRIPT)
screenshot_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshot_script)


def _report(variant: str):
    return build_report(load_layer_info(A100 / f"{variant}.graph.json"), load_profile(A100 / f"{variant}.profile.json"),
                        label=f"{variant}.graph.json")


def test_html_is_self_contained_with_all_charts() -> None:
    fp16, qat = _report("fp16"), _report("qat")
    page = render_html(fp16, compare_reports(fp16, qat))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}  # SVG namespace only
    assert page.count("<svg") == 6  # A vs B totals, A-vs-B layers, 2 donuts, 2 per-layer bar charts
    for label in ('aria-label="time per precision"', 'aria-label="per-layer comparison"',
                  'aria-label="per-layer latency"', 'aria-label="time share"'):
        assert label in page
    for precision in ("INT8", "FP16", "FP32"):
        assert f'fill="{PRECISION_COLORS[precision]}"' in page
    # one bar per layer in each per-layer chart, and every aligned pair in the comparison
    assert page.count("ms (") >= 36 + 37
    assert "+0.0707 ms" in page  # conv1 pair: QAT's quantize + DP4A conv vs FP16's reformat + conv
    assert "conv1.weight + QuantizeLinear_7 + Conv_9" in page


def test_names_are_escaped() -> None:
    report = _report("qat")
    report.rows[0].layer.name = "<script>alert(1)</script>"
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_donut_of_a_single_precision_is_a_full_ring() -> None:
    svg = donut_svg([("FP16", 1.0, "#2f6fdb")], caption="time share")
    length, gap = (float(v) for v in re.search(r'stroke-dasharray="([\d.]+) ([\d.]+)"', svg).groups())
    assert gap == pytest.approx(0.0, abs=1e-3) and length > 0


@pytest.mark.skipif(screenshot_script.find_chromium() is None,
                    reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    shot = json.loads(result.stdout.strip().splitlines()[-1])
    assert shot["size"] == [1280, 2000]
    pixels = shot["pixels"]
    # The legend draws a 12x12 swatch of every colour (about 130 pixels); the charts must add far more
    # for the precisions these engines use, and nothing for the ones they do not.
    swatch = min(pixels.values())
    assert 100 <= swatch <= 200
    for precision in ("INT8", "FP16", "FP32"):
        assert pixels[precision] > 40 * swatch, (precision, pixels)
    for precision in ("FP8", "BF16", "TF32"):
        assert pixels[precision] == swatch, (precision, pixels)

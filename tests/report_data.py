"""Where the report/bench tests' data live: real A100 engine JSON and profiles, real trtexec 10.16 logs and
exports, and hand-made files for layouts no real file was available for (see tests/data/PROVENANCE.md)."""

from __future__ import annotations

from tests.conftest import DATA

REPORT_DATA = DATA / "report"
A100 = REPORT_DATA / "a100-resnet"
TRTEXEC = REPORT_DATA / "trtexec-10.16"
HANDMADE = REPORT_DATA / "handmade"

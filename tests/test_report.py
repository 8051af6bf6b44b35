"""The report a QA team reads, of the CASA demo's finished campaign (``arihpc demo``: 12 MOUS,
6 done with real CASA products, 6 excluded): every MOUS by uid with its state or reasons, the
ARIQA section against the qa/ariqa.ecsv files, the gallery; then in headless Chromium the table
sorting by run time, the thumbnails loading, and no axis or table showing a value below 0.01
of its unit.

The demo runs once per test session (about five minutes on 2 cores: ``casa_demo``, which
test_demo.py and test_dashboard_browser.py share; $ARIHPC_TEST_CASA_DEMO may name a finished one
instead, to develop against).
The screenshot of the report is kept in the session's pytest folder,
``<basetemp>/screenshots/report.png`` (pytest keeps the last three sessions' folders).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.table import Table

from arihpc.demo.archive import TEMPLATES, demo_rows
from arihpc.mous import disk_name

pytestmark = pytest.mark.casa

_DEMO: dict[str, Path] = {}         # the finished demo of this session and its report
_OUTPUT: dict[str, str] = {}        # what the demo printed
DEMO_DIR = "ARIHPC_TEST_CASA_DEMO"  # a finished CASA demo to use instead (while developing)


def casa_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a finished ``arihpc demo`` (12 MOUS, the casa payload), made once per
    session (or the one $ARIHPC_TEST_CASA_DEMO names)."""
    if "dir" not in _DEMO:
        directory = Path(os.environ[DEMO_DIR]) if os.environ.get(DEMO_DIR) else \
            tmp_path_factory.mktemp("casa-demo") / "demo"
        made = subprocess.run([sys.executable, "-m", "arihpc.cli", "demo", "--dir",
                               str(directory), "--payload", "casa"], capture_output=True,
                              text=True, timeout=1200, env=_without_store())
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        _DEMO["dir"] = directory
        _OUTPUT["demo"] = "" if os.environ.get(DEMO_DIR) else made.stdout
    return _DEMO["dir"]


def casa_demo_output() -> str:
    """What the session's ``arihpc demo`` printed (empty: a demo given by
    $ARIHPC_TEST_CASA_DEMO, whose output is not kept); after ``casa_demo``."""
    return _OUTPUT["demo"]


def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``arihpc report`` of the demo, run in its directory as a user would (no --site: the
    store names the profile its run used), written once per session."""
    if "report" not in _DEMO:
        directory = casa_demo(tmp_path_factory)
        out = tmp_path_factory.mktemp("report") / "report.html"
        written = subprocess.run([sys.executable, "-m", "arihpc.cli", "report", "--out",
                                  str(out)], capture_output=True, text=True, timeout=300,
                                 cwd=directory, env=_without_store())
        assert written.returncode == 0, written.stdout + written.stderr[-3000:]
        _DEMO["report"] = out
    return _DEMO["report"]


def _without_store() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ARIHPC_STORE"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The demo's directory and its report's HTML."""
    return casa_demo(tmp_path_factory), demo_report(tmp_path_factory).read_text()


def table_data(html: str) -> list[list]:
    """Every row of the report's MOUS table, from the JSON its script reads."""
    found = re.search(r'<script type="application/json" id="mous-data">(.*?)</script>', html,
                      re.S)
    columns = json.loads(found.group(1).replace("<\\/", "</"))["columns"]
    return [list(row) for row in zip(*columns)]


def html_table(html: str, css: str) -> list[list[str]]:
    """The rows of a plain table of the report (cells' text)."""
    body = re.search(rf'<table class="{css}">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_the_report_lists_every_mous_done_or_excluded_with_its_reasons(demo):
    demo, html = demo
    rows = table_data(html)
    by_uid = {row[0]: row for row in rows}
    assert sorted(by_uid) == sorted(r.uid for r in demo_rows(12))
    states = {uid: row[12] for uid, row in by_uid.items()}
    assert sorted(states.values()) == ["done"] * 6 + ["excluded"] * 6
    # each excluded MOUS with the reasons the demo's archive export gives it
    expected = {"2016.1.00731.S": "qa2-fail", "2015.1.01089.S": "total-power",
                "2018.1.00545.S": "cycle", "2016.1.00050.S": "solar",
                "2015.1.00624.S": "full-pol", "2016.1.01116.V": "full-pol, vlbi"}
    assert {row[1]: row[13] for row in rows if row[12] == "excluded"} == expected
    assert len(TEMPLATES) == 12
    for row in rows:
        if row[12] == "done":       # where it ran, what it cost, what it made
            assert row[6] == "local" and row[7] == "local" and row[8] == 1
            assert row[9] > 0 and row[10] > 0 and row[11] > 0 and row[14][0] == 3
            workdir = demo / "work" / disk_name(row[0])
            links = dict(row[16])
            assert links["weblog"] == (workdir / "weblog" / "index.html").as_uri()
            assert links["products"] == (workdir / "export").as_uri() + "/"


def test_the_ariqa_section_counts_what_the_ecsv_files_hold(demo):
    demo, html = demo
    tables = sorted((demo / "work").glob("*/qa/ariqa.ecsv"))
    assert len(tables) == 6
    verdicts = [str(v) for path in tables for v in Table.read(path)["verdict"]]
    counts = dict(html_table(html, "ariqa-counts"))
    assert counts == {"accepted": str(verdicts.count("accept")),
                      "rejected": str(verdicts.count("reject")),
                      "without a QA2 counterpart": str(verdicts.count("no-counterpart")),
                      "MOUS with an ARIQA table": "6"}
    section = html[html.index('<section id="report-ariqa">'):]
    section = section[:section.index("</section>")]
    assert section.count("data-root-id") == 4                   # the four distributions
    for title in ("Peak flux: ", "Integrated flux: ", "Rms noise: ", "Dynamic range: "):
        assert title in html
    assert "the ARI study: 90 % of peaks within " in html            # its reference band


def test_the_gallery_shows_a_thumbnail_of_each_mous_done_linked_to_its_preview(demo):
    _, html = demo
    gallery = html[html.index('<section id="report-gallery">'):]
    gallery = gallery[:gallery.index("</section>")]
    links = re.findall(r'<a href="([^"]+)"><img src="data:image/png;base64,', gallery)
    assert len(links) == 6
    for href in links:
        assert href.startswith("file://") and ".cont." in href
        assert Path(href.removeprefix("file://")).is_file()

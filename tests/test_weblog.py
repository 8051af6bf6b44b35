"""The weblog of a MOUS and ARIQA layer 2: a score per stage, a MOUS with a low score not
packaged, with the reason in the weblog and in ``arihpc status``; the report links each
weblog. Real CASA (a small simulated MOUS), real Chromium, and unit tests of the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import asdict
from pathlib import Path

import dask.config
import numpy as np
import pytest
from astropy.io import fits
from helpers import run
from matplotlib.image import imsave

from arihpc.mous import disk_name
from arihpc.products import packaging, scores, weblog
from arihpc.runner import workdir as wd
from arihpc.runner.failures import classify, retry_policy
from arihpc.runner.plans import PAYLOADS, MousTask
from arihpc.runner.run import retry_task, run_mous
from arihpc.store.campaign import CampaignStore

UID = "uid://A001/X87a/X7a1"
DISK = disk_name(UID)
DATA = Path(__file__).parent / "data"
EXTERNAL = re.compile(r"https?://|src=\"?//|<script[^>]+src=|<link[^>]+href=", re.I)


def _task(root: Path, name: str = "work") -> MousTask:
    return MousTask(UID, root / name / DISK, "casa", size_gb=0.1, memory_gb=8,
                    options={"source": str(root / "archive" / "{uid}" / "raw")})


@pytest.fixture(scope="module")
def mous(tmp_path_factory) -> dict:
    """One small simulated MOUS (one spw of 4 channels, 60 s) through all stages."""
    root = tmp_path_factory.mktemp("weblog")
    done = subprocess.run([sys.executable, "-m", "arihpc.payloads.casa_stages", "simulate",
                           "--workdir", str(root / "archive" / DISK), "--uid", UID,
                           "--spw", "100:4", "--duration-s", "60"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    task = _task(root)
    outcome = run_mous(task)
    assert outcome.status == "done", (outcome.error_class, outcome.message, outcome.log_lines)
    ari_l = next((task.workdir / "package" / "tree").rglob("ari_l"))
    return {"root": root, "task": task, "workdir": task.workdir, "ari_l": ari_l}


@pytest.mark.casa
def test_every_stage_scores_and_the_weblog_is_in_the_workdir_ari_l_and_tar(mous):
    workdir, task = mous["workdir"], mous["task"]
    plan = [stage.name for stage in PAYLOADS["casa"](task)]
    found = scores.score_stages(workdir, plan)
    assert {s: v.value for s, v in found.items()} == {s: 1.0 for s in plan}, found
    assert "iteration limit" in " ".join(found["image"].reasons)     # read from tclean's log
    for page in (workdir / "weblog" / "index.html", mous["ari_l"] / "weblog" / "index.html"):
        text = page.read_text()
        assert not EXTERNAL.search(text), EXTERNAL.search(text)
        for stage in plan:
            assert f'id="stage-{stage}"' in text
        assert "packaged for ingestion" in text and "ARIQA" in text
        assert text.count('src="data:image/png;base64,') == 2        # cube and continuum
        assert "CASA version" in text and "6.7.0" in text
        assert "Leap second" not in text                             # harmless, not shown
    record = wd.read_checkpoint(workdir, "image")
    assert record["command"][-4:] == ["--workdir", str(workdir), "--uid", UID]
    tar = next((workdir / "package").glob("*.ari_l.tar"))
    with tarfile.open(tar) as t:
        assert any(n.endswith("/ari_l/weblog/index.html") for n in t.getnames())
    assert packaging.verify_tar(tar) == []                           # in the manifest too


@pytest.mark.casa
@pytest.mark.browser
def test_the_weblog_shows_its_previews_in_headless_chromium(mous):
    from test_dashboard_browser import chromium

    with chromium(offline=True) as driver:
        driver.get((mous["ari_l"] / "weblog" / "index.html").as_uri())
        widths = driver.execute_script(
            "return [...document.images].map((i) => i.complete ? i.naturalWidth : 0);")
    assert len(widths) == 2 and all(w > 0 for w in widths), widths


def _store_with(root: Path) -> tuple[str, str]:
    """A campaign store whose one selected MOUS is UID, and a site profile of root/work."""
    (root / "aq.tsv").write_text("Member ous id\tProject code\tQA2 Status\tArray\n"
                                 f"{UID}\t2016.1.00001.S\tPASS\t12m\n")
    url = f"sqlite:///{root}/campaign.db"
    assert run(url, "catalog", "import", root / "aq.tsv").exit_code == 0
    assert run(url, "select").exit_code == 0
    profile = root / "lowsite.yaml"
    profile.write_text("batch-system: local\nx11: false\npayload: casa\n"
                       f"storage: {{kind: local, work-dir: {root / 'low'}, scratch: /tmp}}\n"
                       "node-classes: {main: {cores: 2, memory: 8GB, count: 1}}\n"
                       "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    return url, str(profile)


@pytest.mark.casa
def test_a_stage_with_nan_pixels_only_is_not_packaged_and_status_says_why(mous):
    root = mous["root"]
    task = _task(root, "low")
    shutil.copytree(mous["workdir"], task.workdir, symlinks=True)
    shutil.rmtree(task.workdir / "package")
    shutil.rmtree(task.workdir / "weblog")
    wd.drop_checkpoint(task.workdir, "package")
    cube = next((task.workdir / "export").glob("*.cube.I.pbcor.fits"))
    with fits.open(cube, mode="update") as hdul:        # same size: its checkpoint still holds
        hdul[0].data[...] = np.nan
    outcome = run_mous(task)
    assert (outcome.status, outcome.stage, outcome.error_class) == \
        ("failed", "package", "low-score")
    assert re.search(r"arihpc: not packaged: stage export scored 0\.00 < 0\.90: "
                     rf"no finite pixel in {re.escape(cube.name)}", outcome.message)
    assert not list((task.workdir / "package").glob("*.tar"))
    assert not (task.workdir / "package" / "tree").exists()
    page = (task.workdir / "weblog" / "index.html").read_text()
    assert "not packaged: stage export scored 0.00" in page and "no finite pixel" in page
    # The orchestrator's way: no retry for low-score, the MOUS failed with its message.
    url, profile = _store_with(root)
    store = CampaignStore.open(url)
    [claim] = store.claim("lowsite", "lowsite@1", 1)
    attempt = store.start_attempt(claim.uid, "lowsite", 8.0)
    assert retry_task(task, outcome, store.failures_of_class(UID, "low-score")) is None
    store.finish_attempt(attempt, asdict(outcome), "failed")
    shown = run(url, "status")
    assert shown.exit_code == 0, shown.output
    assert re.search(rf"failed: {re.escape(UID)} \(low-score\): .*not packaged: stage export "
                     r"scored 0\.00", shown.output), shown.output
    report = root / "report.html"
    written = run(url, "report", "--out", report, "--site", profile)
    assert written.exit_code == 0, written.output
    assert f'href="{(task.workdir / "weblog" / "index.html").as_uri()}"' in report.read_text()


# ---- the rules on small files ---------------------------------------------------------------

def _fits(path: Path, data: np.ndarray, beam: bool = True) -> Path:
    header = fits.Header({"BMAJ": 1e-4, "BMIN": 8e-5, "BPA": 0.0} if beam else {})
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    return path


def _export(workdir: Path, arrays: dict[str, tuple[np.ndarray, bool]]) -> None:
    (workdir / "export").mkdir(parents=True)
    products = []
    for name, (data, beam) in arrays.items():
        _fits(workdir / "export" / name, data, beam)
        products.append({"fits": f"export/{name}"})
    wd.write_json_atomic(workdir / "export" / "products.json", {"products": products})
    wd.write_checkpoint(workdir, "export", {
        "stage": "export", "start": 1.0, "end": 2.0, "wall_s": 1.0, "cpu_s": 1.0,
        "peak_rss": 1, "outputs": wd.output_sizes(workdir, "export")})


def test_an_image_of_nan_pixels_only_scores_zero_and_a_beamless_one_less_than_one(tmp_path):
    good, nan = tmp_path / "good", tmp_path / "nan"
    _export(good, {"a.fits": (np.ones((1, 1, 8, 8)), True), "b.fits": (np.ones((8, 8)), False)})
    _export(nan, {"a.fits": (np.full((1, 1, 8, 8), np.nan), True)})
    beamless = scores.score_stage(good, "export")
    assert 0.5 < beamless.value < 1.0
    assert beamless.failed == ["FAIL: b.fits has no beam (BMAJ/BMIN or BEAMS table)"]
    empty = scores.score_stage(nan, "export")
    assert empty.value == 0.0 and "FAIL: no finite pixel in a.fits" in empty.reasons


def test_a_missing_checkpoint_or_a_changed_output_fails_the_default_rule(tmp_path):
    assert scores.score_stage(tmp_path, "new-stage").value == 0.0     # a stage with no rule
    _export(tmp_path, {"a.fits": (np.ones((4, 4)), True)})
    assert scores.score_stage(tmp_path, "export").value == 1.0
    assert scores.RULES.get("new-stage") is None
    wd.write_checkpoint(tmp_path, "new-stage", {**wd.read_checkpoint(tmp_path, "export"),
                                              "stage": "new-stage"})
    assert scores.score_stage(tmp_path, "new-stage").value == 1.0     # the default: finished
    with open(tmp_path / "export" / "a.fits", "ab") as f:
        f.write(b"\0" * 2880)
    changed = scores.score_stage(tmp_path, "new-stage")
    assert changed.value == 0.5 and "resized" in changed.failed[0]


def _image(workdir: Path, threshold_jy: float | None, log: str) -> None:
    (workdir / "image" / "x.image.pbcor").mkdir(parents=True, exist_ok=True)
    item = {"name": "x", "image": "image/x.image.pbcor"}
    if threshold_jy is not None:
        item["threshold_jy"] = threshold_jy
    wd.write_json_atomic(workdir / "image" / "products.json", {"images": [item]})
    (workdir / "log").mkdir(exist_ok=True)
    (workdir / "log" / "casa-image-1.log").write_text(log)


def test_tclean_must_say_it_reached_its_stopping_criterion(tmp_path):
    _image(tmp_path, None, (DATA / "casa-image-tclean.log").read_text())
    assert all(c.passed for c in scores.image_checks(tmp_path))
    _image(tmp_path / "cut", None, "INFO tclean started\n")
    [stopped] = [c for c in scores.image_checks(tmp_path / "cut") if not c.passed]
    assert "0 of 1 run(s) (no stop message)" in stopped.reason


def test_the_rms_must_be_within_a_factor_of_the_expected_noise(tmp_path):
    _export(tmp_path, {"member.x.I.pbcor.fits": (np.ones((4, 4)), True)})
    (tmp_path / "qa").mkdir()
    wd.write_json_atomic(tmp_path / "qa" / "keywords.json",
                         {"member.x.I.pbcor.fits": {"rms": 0.01}})
    (tmp_path / "qa" / "ariqa.ecsv").write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: product, datatype: string}\n"
        "# - {name: verdict, datatype: string}\nproduct verdict\nmember.x.I.pbcor.fits accept\n")
    _image(tmp_path, 0.004, "")             # expected noise 0.004 / 4 = 1 mJy: rms is 10 x
    with dask.config.set({"arihpc.imaging.threshold-sigma": 4}):
        far = scores.qa_checks(tmp_path)
    assert [c.reason for c in far if not c.passed] == [
        "member.x.I.pbcor.fits: rms 0.01 Jy/beam is 10.00 x the expected 0.001 "
        "(allowed 1/5 to 5 x)"]
    _image(tmp_path, None, "")              # no threshold_jy: not compared, with the reason
    assert all(c.passed for c in scores.qa_checks(tmp_path))


def test_a_blank_preview_fails(tmp_path):
    _export(tmp_path, {"a.fits": (np.ones((4, 4)), True), "b.fits": (np.ones((4, 4)), True)})
    (tmp_path / "preview").mkdir()
    imsave(tmp_path / "preview" / "a.png", np.random.default_rng(1).random((8, 8)))
    imsave(tmp_path / "preview" / "b.png", np.zeros((8, 8)), vmin=0, vmax=1)
    assert [c.reason for c in scores.preview_checks(tmp_path) if not c.passed] == \
        ["b.png is blank"]


def test_the_not_packaged_line_is_class_low_score_never_retried():
    score = scores.StageScore(0.0, ["FAIL: no finite pixel in x.fits", "ok: x.fits opens"])
    line = scores.not_packaged_reason("export", score, 0.9)
    assert line == ("arihpc: not packaged: stage export scored 0.00 < 0.90: "
                    "no finite pixel in x.fits")
    found = classify([f"2026 products package ERROR package failed: {line} (oom-kill)"], 1)
    assert found.name == "low-score"                # before oom: its reasons may quote anything
    assert retry_policy("low-score") == {"retries": 0}


def test_a_url_in_a_command_is_no_link_in_the_weblog(tmp_path):
    wd.write_checkpoint(tmp_path, "fetch", {"stage": "fetch", "start": 1.0, "wall_s": 1.0,
                                            "cpu_s": 0.5, "peak_rss": 10**8, "outputs": {},
                                            "command": ["fetch", "--source", "https://x/{uid}"]})
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "fetch.log").write_text(
        "WARN retrying http://x/a\nINFO fine\nSEVERE Leap second table TAI_UTC seems out-of-date\n")
    page = weblog.write_weblog(tmp_path, UID, scores.score_stages(tmp_path, ["fetch"]),
                               "not packaged: test", False, tmp_path).read_text()
    assert not EXTERNAL.search(page)
    assert "fetch --source &#x27;https:&#47;&#47;x/{uid}" in page and "retrying" in page
    assert "Leap second" not in page and "INFO fine" not in page

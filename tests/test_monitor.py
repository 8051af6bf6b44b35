"""The read-only views: numbers agree with the store and with `arihpc status`, tokens, report."""
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from helpers import import_sizes, run
from matplotlib.image import imsave
from test_campaign import campaign, orchestrate, site_profile

from arihpc.monitor import mous_list, server, stats, views
from arihpc.mous import disk_name
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, mous, stages


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An emulated campaign on the local site, run to its end: 6 done (one after two
    download failures), one failed for good (casa-version)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    url, uids = campaign(tmp_path, 7)
    import_sizes(url, tmp_path, {u: (i + 1) * 300_000_000 for i, u in enumerate(uids)})
    plan = [{"uid": uids[0], "class": "download", "stage": "fetch", "attempt": 1},
            {"uid": uids[0], "class": "download", "stage": "fetch", "attempt": 2},
            {"uid": uids[1], "class": "casa-version", "stage": "restore", "attempt": 1}]
    profile = site_profile(tmp_path, "  one: {cores: 1, memory: 2GB, slots: 2}\n", max_jobs=1)
    import dask.config
    with dask.config.set({"arihpc.failures.retry.download": {"retries": 2, "backoff-s": 0.05},
                          "arihpc.planning.median-memory-gb": 0.4,
                          "arihpc.planning.min-memory-gb": 0.1}):
        store = orchestrate(url, profile, {"cpu-s-per-gb": 0.02, "fail-plan": plan})
    qa_products(Path(profile.storage.work_dir) / disk_name(uids[2]), uids[2])
    return url, store, profile, tmp_path


def qa_products(workdir: Path, uid: str) -> None:
    """What the product stages would leave in a work directory (the emulator makes none): an
    ARIQA table (one product accepted, one rejected), a continuum preview and a weblog."""
    from test_report_units import _table

    from arihpc.products import ariqa

    stem = f"member.{disk_name(uid)}.M83_sci.spw0_1.cont.I.pbcor"
    ariqa.write_table(_table([
        {"product": f"{stem}.fits", "verdict": "accept", "reason": "within 30%",
         "reldiff_peak": 0.04, "reldiff_flux": -0.02, "reldiff_rms": 0.01,
         "reldiff_dynamic_range": 0.03},
        {"product": f"{stem.replace('cont', 'cube')}.fits", "verdict": "reject",
         "reason": "rms 1.60 x QA2's > 1.30", "reldiff_peak": -0.1, "reldiff_flux": 0.2,
         "reldiff_rms": 0.23, "reldiff_dynamic_range": -0.3}]), workdir / "qa" / "ariqa.ecsv")
    (workdir / "preview").mkdir()
    imsave(workdir / "preview" / f"{stem}.png", np.random.default_rng(1).random((50, 60)))
    (workdir / "weblog").mkdir()
    (workdir / "weblog" / "index.html").write_text("<!DOCTYPE html><title>weblog</title>\n")


def get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def test_progress_and_figures_data_agree_with_the_store(finished):
    url, store, profile, _ = finished
    with store.engine.connect() as conn:
        by_state = dict(conn.execute(sa.select(mous.c.state, sa.func.count())
                                     .where(mous.c.selected.is_(True))
                                     .group_by(mous.c.state)).all())
        classes = dict(conn.execute(sa.select(attempts.c.error_class, sa.func.count())
                                    .where(attempts.c.error_class.is_not(None))
                                    .group_by(attempts.c.error_class)).all())
        done_attempts = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
            attempts.c.outcome == "done")).scalar_one()
    assert by_state == {"done": 6, "failed": 1}
    view = views.campaign_view(views.read_numbers(store), {profile.name: profile})
    assert view["progress"]["done"] == 6 and view["progress"]["failed"] == 1
    assert view["progress"]["selected"] == 7
    assert view["progress"]["failed_by_class"] == {"casa-version": 1}
    assert view["failure_classes"] == classes and classes["download"] == 2
    assert len(view["runs"]["hours"]) == 6 and all(h > 0 for h in view["runs"]["hours"])
    assert all(p > 0 for p in view["runs"]["peak_gb"])
    assert sum(view["throughput"]["done"]) == done_attempts == 6
    assert view["throughput"]["total"][-1] == 6
    end = view["expected_end"]
    assert end["left"] == 0 and end["slots"] == profile.mous_slots == 2
    site = views.campaign_view(views.read_numbers(store), {profile.name: profile}, profile.name)
    assert site["progress"]["done"] == 6 and "excluded" not in site["progress"]
    assert views.campaign_view(views.read_numbers(store), {}, "elsewhere")["progress"][
        "selected"] == 0


def test_api_json_agrees_with_arihpc_status_and_with_the_store(finished):
    url, store, profile, _ = finished
    app = server.make_app(store, {profile.name: profile})
    port, stop = server.serve_in_thread(app)
    try:
        status, body, headers = get(f"http://127.0.0.1:{port}/api/status")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        api = json.loads(body)
        cli = run(url, "status", "--format", "json", "--site", profile.path)
        assert cli.exit_code == 0, cli.output
        assert api == json.loads(cli.stdout)
        assert api["states"] == store.status()["states"] == {"done": 6, "failed": 1}
        assert api["progress"]["done"] == 6 and api["progress"]["excluded"] == 0
        # the site's line: its run has ended, so no worker and no job, and it says why
        line = api["resources"][profile.name]
        assert line["workers"] == 0 and line["jobs_running"] == 0
        assert line["errors"] == ["its arihpc run has ended"]
        _, body, _ = get(f"http://127.0.0.1:{port}/api/site/{profile.name}")
        site = json.loads(body)
        assert site["campaign"]["progress"]["done"] == 6
        assert site["now"]["scheduler"]["dashboard"].startswith("http://")
        assert get(f"http://127.0.0.1:{port}/api/site/nowhere")[0] == 404
        endpoints = json.loads(get(f"http://127.0.0.1:{port}/api/")[1])["endpoints"]
        assert f"/api/site/{profile.name}" in endpoints
    finally:
        stop()
    table = run(url, "status", "--site", profile.path).stdout
    assert f"site {profile.name}: jobs 0 running, 0 pending; workers 0" in table


def test_a_token_guards_every_page_and_nothing_writes(finished):
    url, store, profile, _ = finished
    port, stop = server.serve_in_thread(server.make_app(store, {}, token="s3cret-token"))
    base = f"http://127.0.0.1:{port}"
    try:
        for path in ("/", f"/site/{profile.name}", "/api/status", "/api/",
                     "/static/js/bokeh.min.js"):
            assert get(base + path)[0] == 403, path
            assert get(base + path + "?token=wrong")[0] == 403, path
            assert get(base + path, {"Authorization": "Bearer s3cret-token"})[0] == 200, path
        status, page, headers = get(base + "/?token=s3cret-token")
        assert status == 200 and "Whole campaign" in page
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert get(base + "/static/js/bokeh.min.js", {"Cookie": cookie})[0] == 200
        for method in ("POST", "PUT", "DELETE"):
            request = urllib.request.Request(base + "/api/status?token=s3cret-token",
                                             data=b"{}", method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 405, method
    finally:
        stop()
    before = json.dumps(store.status(), sort_keys=True)
    assert before == json.dumps(CampaignStore.open(url).status(), sort_keys=True)


def _dashboard(url: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Start `arihpc dashboard`; returns the process and the URL it printed."""
    process = subprocess.Popen([sys.executable, "-m", "arihpc.cli", "--store", url,
                                "dashboard", "--port", "0", *args],
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    found = re.search(r"(http://\S+)", line)
    assert found, line + process.stderr.read() if process.poll() is not None else line
    return process, found.group(1)


def test_the_dashboard_binds_loopback_by_default_and_needs_a_token_elsewhere(finished):
    url = finished[0]
    process, address = _dashboard(url)
    try:
        assert address.startswith("http://127.0.0.1:") and "token" not in address
        listening = [c.laddr for c in psutil.Process(process.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        assert get(address)[0] == 200
        taken = subprocess.run([sys.executable, "-m", "arihpc.cli", "--store", url, "dashboard",
                                "--port", address.split(":")[2].strip("/")],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == 1 and "choose another --port" in taken.stderr
    finally:
        process.terminate()
        process.wait(30)
    process, address = _dashboard(url, "--host", "0.0.0.0")
    try:
        token = re.search(r"token=([\w-]+)", address).group(1)
        assert len(token) >= 24
        port = address.split(":")[2].split("/")[0]
        assert get(f"http://127.0.0.1:{port}/api/status")[0] == 403
        assert get(f"http://127.0.0.1:{port}/api/status?token={token}")[0] == 200
    finally:
        process.terminate()
        assert process.wait(30) == 0


def test_the_report_is_one_file_that_needs_no_network(finished, tmp_path):
    url, _, profile, _ = finished
    out = tmp_path / "report.html"
    result = run(url, "report", "--out", out, "--site", profile.path)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    # nothing fetched: no script, style or image from anywhere (the thumbnails are data: URIs)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", html)
    assert html.count('<img src="data:image/png;base64,') == 1
    assert "<script>" in html and "Bokeh" in html
    assert len(html) > 500_000                                      # BokehJS is inside
    # the campaign's five figures (each site in its colour), ARIQA's four; the site's
    # section has its tables, no figures of its own
    assert html.count("data-root-id") == 9
    assert "Run time against raw size (6 MOUS done)" in html
    assert f'"{profile.name} (6)"' in html
    assert f'"done at {profile.name}"' not in html      # one site: the campaign's line
    assert f"Site {profile.name}" in html and "casa-version" in html
    # every MOUS, the failed one with the line that decided it
    columns = json.loads(re.search(r'id="mous-data">(.*?)</script>', html).group(1))["columns"]
    rows = list(zip(*columns))
    assert len(rows) == 7
    [failed] = [row for row in rows if row[12].startswith("failed")]
    assert failed[12] == "failed: casa-version" and failed[13]
    # the ARIQA table in the work directory of the third MOUS: counted, the rejected listed
    assert re.search(r"<td>accepted</td><td>1</td>.*<td>rejected</td><td>1</td>", html, re.S)
    assert "rms 1.60 x QA2&#39;s &gt; 1.30" in html


def test_a_stage_publishes_its_memory_to_the_worker_metrics():
    from arihpc.runner import live

    class Worker:
        metrics: dict = {}
    with live.running("uid://A001/X1/X1", "image", 2) as now:
        now.sample(3_000_000, 0.0)
        now.sample(1_000_000, 0.5)
        live.publish(Worker)
        [entry] = Worker.metrics[live.METRIC](Worker)
    assert entry["stage"] == "image" and entry["attempt"] == 2
    assert entry["rss"] == 1_000_000 and entry["peak_rss"] == 3_000_000
    assert live.snapshot() == []                    # gone once the stage ends
    assert time.time() - entry["started"] < 60


def test_a_staging_mous_is_counted_as_staging_then_running(tmp_path):
    from arihpc.monitor import stats

    url, uids = campaign(tmp_path, 3)
    store = CampaignStore.open(url)
    [claim] = store.claim("eso", "eso@1", 1)
    attempt = store.start_attempt(claim.uid, "eso", 1.0, "staging")

    def progress():
        with store.engine.connect() as conn:
            return stats.StateCounts(conn).progress("eso")
    assert (progress()["staging"], progress()["running"]) == (1, 0)
    assert store.status()["running"][0]["uid"] == claim.uid     # active, like running
    store.computing([claim.uid])
    assert (progress()["staging"], progress()["running"]) == (0, 1)
    store.finish_attempt(attempt, {"uid": claim.uid, "status": "interrupted",
                                   "error_class": "walltime", "peak_rss": 5_000_000},
                         "queued")
    with store.engine.connect() as conn:
        assert stats.CampaignNumbers(conn).cut_peaks_gb("eso") == [0.005]
    attempt = store.start_attempt(claim.uid, "eso", 1.0, "staging")
    assert store.recover("eso") == 1                            # a dead run's staging MOUS
    assert store.states()[claim.uid][0] == "new"


def test_the_mous_table_is_sorted_filtered_and_paged_by_the_store(finished):
    url, store, profile, _ = finished
    with store.engine.connect() as conn:
        run_s = dict(conn.execute(sa.select(mous.c.uid, sa.func.sum(stages.c.wall_s))
                                  .join(stages, stages.c.uid == mous.c.uid)
                                  .group_by(mous.c.uid)).all())
    app = server.make_app(store, {profile.name: profile})
    port, stop = server.serve_in_thread(app)
    base = f"http://127.0.0.1:{port}"
    try:
        page = json.loads(get(f"{base}/api/mous?sort=run_time&order=desc&per=10")[1])
        assert page["total"] == 7
        slowest = sorted(run_s, key=run_s.get, reverse=True)
        assert [m["uid"] for m in page["mous"]][:len(slowest)] == slowest
        second = json.loads(get(f"{base}/api/mous?sort=run_time&order=desc&per=10&page=2")[1])
        assert second["mous"] == []
        failed = json.loads(get(f"{base}/api/mous?state=failed")[1])
        assert failed["total"] == 1 and failed["mous"][0]["error_class"] == "casa-version"
        assert failed["mous"][0]["why"]                    # its attempt's deciding line
        found = json.loads(get(f"{base}/api/mous?q=x20/x3")[1])
        assert [m["uid"] for m in found["mous"]] == ["uid://A001/X20/X3"]
        assert found["mous"][0]["ariqa"] == "1 accept, 1 reject"
        status, html, _ = get(f"{base}/site/{profile.name}?sort=run_time&order=desc&per=10")
        assert status == 200 and '<table class="mous"' in html
        assert 'aria-sort="descending"' in html and "page 1 of 1 (7 MOUS)" in html
        assert "mous-data" not in html                     # live: one page, from the store
        assert "Products by ARIQA verdict" in html and "Product gallery" in html
    finally:
        stop()


def test_a_mous_links_to_its_weblog_products_and_preview_and_nothing_else_is_served(finished):
    url, store, profile, _ = finished
    port, stop = server.serve_in_thread(server.make_app(store, {profile.name: profile}))
    base, name = f"http://127.0.0.1:{port}", disk_name("uid://A001/X20/X3")
    try:
        _, html, _ = get(f"{base}/")
        assert f'href="/mous/{name}/file/weblog/index.html"' in html
        assert f'<img src="/mous/{name}/thumbnail"' in html
        with urllib.request.urlopen(f"{base}/mous/{name}/thumbnail", timeout=30) as answer:
            assert answer.headers["Content-Type"] == "image/png"
            assert answer.read().startswith(b"\x89PNG")
        assert get(f"{base}/mous/{name}/file/weblog/index.html")[1].startswith("<!DOCTYPE")
        assert get(f"{base}/mous/{name}/file/qa/ariqa.ecsv")[0] == 200
        for path in ("file/../../campaign.db", "file/qa/../../../campaign.db",
                     "file/checkpoints/fetch.json", "file/log/fetch.log", "nothing"):
            assert get(f"{base}/mous/{name}/{path}")[0] == 404, path
        assert get(f"{base}/mous/not-a-uid/thumbnail")[0] == 404
        assert get(f"{base}/mous/uid___A001_X20_X1/thumbnail")[0] == 404     # no preview
    finally:
        stop()


def test_mous_slots_count_what_ran_at_once_when_the_profile_says_less(tmp_path):
    url, uids = campaign(tmp_path, 3)
    store = CampaignStore.open(url)
    claims = store.claim("local", "local@1", 3)
    for n, claim in enumerate(claims):      # three MOUS computing 100-400 s, two at a time
        start = 1000.0 + 100 * n
        attempt = store.start_attempt(claim.uid, "local", 1.0)
        records = {name: {"stage": name, "start": start + offset, "end": start + offset + 150,
                          "wall_s": 150, "cpu_s": 100, "peak_rss": 10**8, "outputs": {}}
                   for name, offset in (("fetch", 0), ("image", 0))}
        store.finish_attempt(attempt, {"uid": claim.uid, "status": "done", "records": records},
                             "done")
    with store.engine.connect() as conn:
        assert stats.concurrency_seen(conn) == {"local": 2}
    numbers = views.read_numbers(store)
    one_slot = site_profile(tmp_path, "  one: {cores: 1, memory: 2GB, slots: 1}\n", 1)
    assert one_slot.mous_slots == 1
    assert views.mous_slots(numbers, {"local": one_slot}) == {"local": 2}
    four = site_profile(tmp_path, "  one: {cores: 4, memory: 8GB, slots: 4}\n", 1)
    view = views.campaign_view(numbers, {"local": four})
    assert view["expected_end"]["slots"] == 4
    with store.engine.connect() as conn:
        rows = mous_list.read_rows(conn)
    assert [r.state for r in rows] == ["done"] * 3

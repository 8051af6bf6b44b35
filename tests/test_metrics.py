"""/metrics: a real campaign's figures for Prometheus agree with `arihpc status`, behind the
dashboard's token; the sample Grafana dashboard uses only metrics /metrics exports."""
import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import import_sizes, run
from prometheus_client.parser import text_string_to_metric_families
from test_campaign import campaign, site_profile

from arihpc.monitor import metrics, server, stats
from arihpc.store.campaign import CampaignStore

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZE_GB, CPU_S_PER_GB, STAGES = 0.5, 1.0, 4      # each emulated stage spends 0.5 s of CPU
CONFIG = ("arihpc:\n  planning: {median-memory-gb: 0.4, min-memory-gb: 0.1}\n"
          "  failures:\n    retry:\n      download: {retries: 2, backoff-s: 0.05}\n")
# No proxy: the dashboard is on this machine, on whatever address it was bound to.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    try:
        with OPENER.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted (label, value) pairs: value}, by prometheus_client's parser."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name + ("_total" if family.type == "counter" else ""), {})
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by(samples: dict[tuple, float], *names: str) -> dict:
    """The samples keyed by the values of these labels (one label: the value alone)."""
    keyed = {}
    for labels, value in samples.items():
        found = dict(labels)
        key = tuple(found[n] for n in names)
        keyed[key[0] if len(names) == 1 else key] = value
    return keyed


def outside_address() -> str:
    """An IPv4 address of this machine that is not loopback (else 127.0.0.1: the bind to
    0.0.0.0 alone is what makes the token needed)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and \
                    not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return "127.0.0.1"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """`arihpc run` on the local site with the emulator, 6 MOUS: one download failure
    retried, casa-version and unsupported-mode failed for good, tclean twice then failed;
    /metrics scraped (loopback, no token) all the while. Returns the store URL, the site
    profile's path and name, and the scrapes taken during the run."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    url, uids = campaign(tmp_path, 6)
    import_sizes(url, tmp_path, {u: int(SIZE_GB * 1e9) for u in uids})
    profile = site_profile(tmp_path, "  one: {cores: 1, memory: 2GB, slots: 2}\n", max_jobs=1)
    plan = [{"uid": uids[0], "class": "download", "stage": "fetch", "attempt": 1},
            {"uid": uids[1], "class": "casa-version", "stage": "restore", "attempt": 1},
            {"uid": uids[2], "class": "unsupported-mode", "stage": "image", "attempt": 1},
            {"uid": uids[3], "class": "tclean", "stage": "image", "attempt": 1},
            {"uid": uids[3], "class": "tclean", "stage": "image", "attempt": 2}]
    (tmp_path / "c.yaml").write_text(CONFIG)
    campaign_run = subprocess.Popen(
        [sys.executable, "-m", "arihpc.cli", "--store", url, "--config", str(tmp_path / "c.yaml"),
         "run", "--site", str(tmp_path / "site.yaml"), "--payload", "emulator",
         "--payload-options", json.dumps({"cpu-s-per-gb": CPU_S_PER_GB, "fail-plan": plan})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    port, stop = server.serve_in_thread(server.make_app(CampaignStore.open(url),
                                                        {profile.name: profile}))
    scrapes = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            ended = campaign_run.poll() is not None
            status, body, _ = get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200, body
            scrapes.append(parse(body))         # the last one after the run ended
            if ended:
                break
            time.sleep(0.2)
    finally:
        stop()
        if campaign_run.poll() is None:
            campaign_run.kill()
    _, err = campaign_run.communicate(timeout=30)
    assert campaign_run.returncode == 0, err[-3000:]
    return url, tmp_path / "site.yaml", profile.name, scrapes


def test_metrics_of_a_campaign_equal_arihpc_status_and_need_the_token_outside(finished):
    url, site_path, site, _ = finished
    dashboard = subprocess.Popen([sys.executable, "-m", "arihpc.cli", "--store", url, "dashboard",
                                  "--host", "0.0.0.0", "--port", "0", "--site", str(site_path)],
                                 stderr=subprocess.PIPE, text=True)
    try:
        line = dashboard.stderr.readline()
        found = re.search(r":(\d+)/\?token=([\w-]+)", line)
        assert found, f"arihpc dashboard printed no URL with a token: {line!r}"
        port, token = found.groups()
        base = f"http://{outside_address()}:{port}/metrics"
        assert get(base)[0] == 403
        assert get(base, {"Authorization": "Bearer not-the-token"})[0] == 403
        assert get(base + "?token=not-the-token")[0] == 403
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 403   # bound to all: all need it
        status, body, headers = get(base, {"Authorization": f"Bearer {token}"})
        endpoints = json.loads(get(f"http://127.0.0.1:{port}/api/?token={token}")[1])
    finally:
        dashboard.terminate()
        dashboard.wait(30)
    assert status == 200, body
    assert headers["Content-Type"] == metrics.CONTENT_TYPE
    assert "/metrics" in endpoints["endpoints"]
    scraped = parse(body)
    cli = run(url, "status", "--format", "json", "--site", str(site_path))
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout)

    # MOUS by state: the site's, as `status` counts them by site, and the campaign's
    assert report["states"] == {"done": 3, "failed": 3}
    per_site = {key.split("/")[1]: n for key, n in report["sites"].items()
                if key.split("/")[0] == site}
    mous = by(scraped["arihpc_mous"], "site", "state")
    expected = {state: per_site.get(state, 0) for state in ("staging", "running", "done",
                                                            "failed", "cancelled")}
    expected["queued"] = sum(per_site.get(state, 0) for state in stats.WAITING)
    assert {state: n for (s, state), n in mous.items() if s == site} == expected
    whole = by(scraped["arihpc_campaign_mous"], "state")
    assert whole == {k: v for k, v in report["progress"].items()
                     if k not in ("selected", "failed_by_class")}
    assert sum(whole.values()) - whole["excluded"] == report["progress"]["selected"] == 6
    # failures by class: failed attempts (counters) and MOUS failed for good
    attempts = by(scraped["arihpc_attempt_failures_total"], "site", "class")
    assert {cls: n for (s, cls), n in attempts.items() if s == site} == \
        report["failure_classes"] == {"download": 1, "casa-version": 1,
                                      "unsupported-mode": 1, "tclean": 2}
    assert {cls: n for (s, cls), n in by(scraped["arihpc_mous_failed"], "site", "class").items()
            if s == site} == report["progress"]["failed_by_class"] == {
        "casa-version": 1, "unsupported-mode": 1, "tclean": 1}
    assert by(scraped["arihpc_mous_done_total"], "site") == {site: 3}
    assert by(scraped["arihpc_mous_done_per_hour"], "site") == {site: 3}
    # the site now: its run has ended, as `status` says for its line
    line = report["resources"][site]
    assert by(scraped["arihpc_workers"], "site")[site] == line["workers"] == 0
    assert by(scraped["arihpc_batch_jobs"], "site", "state") == {
        (site, "pending"): line["jobs_pending"], (site, "running"): line["jobs_running"]}
    assert by(scraped["arihpc_running_mous"], "site")[site] == line["running_mous"] == 0
    assert by(scraped["arihpc_source_errors"], "site")[site] == len(line["errors"]) == 1
    assert scraped["arihpc_mous_left"][()] == 0
    assert scraped["arihpc_mous_slots"][()] == 2
    assert by(scraped["arihpc_eta_seconds"], "method") == {"model": 0.0, "pace": 0.0}


def test_useful_and_lost_cpu_follow_what_the_stages_spent(finished):
    final = finished[3][-1]
    site = finished[2]
    useful = by(final["arihpc_useful_cpu_seconds"], "site")[site]
    lost = by(final["arihpc_lost_cpu_seconds"], "site")[site]
    stage_s = SIZE_GB * CPU_S_PER_GB
    # useful: the 3 MOUS done, 4 stages each. lost: the stages the MOUS failed for good had
    # checkpointed: each one's fetch (done ahead of compute), and restore for unsupported-mode
    # and tclean, which the store does not record (a failed attempt's outcome carries no
    # stage records), hence 3 to 5 stages.
    assert 3 * STAGES * stage_s <= useful < 3 * STAGES * (stage_s + 1.0)
    assert 3 * stage_s <= lost < 5 * (stage_s + 1.0)


def _record(stage: str, start: float, cpu_s: float) -> dict:
    return {"stage": stage, "start": start, "end": start + cpu_s, "wall_s": cpu_s,
            "cpu_s": cpu_s, "peak_rss": 1_000_000, "outputs": {}}


def test_a_stage_run_again_at_another_site_is_lost_where_it_ran_first(tmp_path):
    url, uids = campaign(tmp_path, 3)
    store = CampaignStore.open(url)
    moved, failed, running = uids
    first = store.start_attempt(moved, "eso", 1.0)
    store.record_stages(first, moved, {"fetch": _record("fetch", 100.0, 7.0)})
    store.finish_attempt(first, {"uid": moved, "status": "failed", "error_class": "unknown",
                                 "stage": "restore"}, "waiting")
    again = store.start_attempt(moved, "mup", 1.0)      # from its first stage, elsewhere
    store.finish_attempt(again, {"uid": moved, "status": "done", "records": {
        "fetch": _record("fetch", 200.0, 3.0), "restore": _record("restore", 210.0, 5.0)}},
        "done")
    for uid, state in ((failed, "failed"), (running, "running")):
        attempt = store.start_attempt(uid, "eso", 1.0)
        store.record_stages(attempt, uid, {"fetch": _record("fetch", 300.0, 2.0)})
        if state == "failed":
            store.finish_attempt(attempt, {"uid": uid, "status": "failed",
                                           "error_class": "casa-version"}, "failed")
    with store.engine.connect() as conn:
        cpu = metrics.stage_cpu_s(conn)
    # eso: the first fetch of the MOUS done at mup, and the failed MOUS's fetch; the running
    # MOUS's fetch is neither yet
    assert cpu == {"eso": {"useful": 0.0, "lost": 9.0}, "mup": {"useful": 8.0, "lost": 0.0}}


def test_live_figures_are_scraped_while_the_campaign_runs(finished):
    scrapes = finished[3]
    site = finished[2]
    busy = [s for s in scrapes if by(s["arihpc_workers"], "site").get(site)
            and by(s["arihpc_running_stages"], "site", "stage")]
    assert busy, f"no scrape of {len(scrapes)} saw a worker running a stage"
    for scrape in busy:
        running = by(scrape["arihpc_running_mous"], "site")[site]
        assert 1 <= sum(by(scrape["arihpc_running_stages"], "site", "stage").values()) \
            <= running <= 2 + 2                 # 2 slots, and up to 2 fetched ahead
        assert by(scrape["arihpc_memory_limit_bytes"], "site")[site] == pytest.approx(2e9)
        assert by(scrape["arihpc_memory_in_use_bytes"], "site")[site] > 0
        assert by(scrape["arihpc_memory_requested_bytes"], "site")[site] > 0
    done = [by(s["arihpc_mous_done_total"], "site").get(site, 0) for s in scrapes]
    assert done == sorted(done) and done[-1] == 3           # a counter: never goes down
    failures = [sum(s["arihpc_attempt_failures_total"].values()) for s in scrapes]
    assert failures == sorted(failures) and failures[-1] == 5


def test_every_family_is_arihpc_s_own_with_help_and_documented(finished):
    final = finished[3][-1]
    assert final and all(name.startswith("arihpc_") for name in final)    # no process_, python_
    text = (DOCS / "metrics.md").read_text()
    missing = [name for name in final if f"`{name}`" not in text]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_the_grafana_dashboard_uses_only_exported_metrics(finished):
    exported = set(finished[3][-1])
    board = json.loads((DOCS / "grafana-arihpc.json").read_text())
    assert board["schemaVersion"] >= 36 and board["title"]
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus"
               for i in board["__inputs"])
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "site"]
    assert "label_values(arihpc_mous, site)" in json.dumps(variable["query"])
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 6
    used = {name for expr in exprs for name in re.findall(r"\barihpc_[a-z0-9_]+", expr)}
    assert used and not used - exported, f"not exported: {sorted(used - exported)}"
    for family in ("arihpc_mous", "arihpc_mous_done_total", "arihpc_attempt_failures_total",
                   "arihpc_memory_in_use_bytes", "arihpc_memory_limit_bytes",
                   "arihpc_useful_cpu_seconds", "arihpc_lost_cpu_seconds", "arihpc_eta_seconds"):
        assert family in used, family
    for panel in board["panels"]:
        assert panel.get("datasource", {}).get("uid") in (None, "${DS_PROMETHEUS}"), panel

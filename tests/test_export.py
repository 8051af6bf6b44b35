"""arihpc export and the tables behind it (arihpc/monitor/tables.py, exports.py): the demo's
store exported and read back with pandas has the report's totals; CSV round trips; the
planner fits an export as it fits the store; bad names and paths are clear errors.

Two stores: the demo's (``arihpc demo --payload emulator``, 2 MOUS done, made once per test
session and shared with test_notebook.py) and one made here with the store's own API, whose
run times follow a known power law, with failures and workers named as the orchestrator names
them (the demo has neither failures nor two raw sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from helpers import run, select_mous

import arihpc
from arihpc.cli import export as export_cli
from arihpc.cli.main import main
from arihpc.monitor import exports, tables, views
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import attempts, mous, stages

_DEMO: dict[str, str] = {}          # the demo's store URL, once made in this session

# The made store: 12 MOUS of 2..13 GB; 8 done in 0.5 h * GB^0.8, the second and fifth after a
# first attempt failed in tclean; the ninth failed (download); three left.
UIDS = [f"uid://A001/X7e/X{i + 1:x}" for i in range(12)]
SIZE_GB = {uid: 2 + i for i, uid in enumerate(UIDS)}
DONE, FAILED, LEFT = UIDS[:8], UIDS[8], UIDS[9:]
RETRIED = (UIDS[1], UIDS[4])
SLOPE, INTERCEPT = 0.8, -0.30103            # log10(h) = INTERCEPT + SLOPE * log10(GB)


def demo_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The store of a finished ``arihpc demo --mous 4 --payload emulator``, made once."""
    if "url" not in _DEMO:
        directory = tmp_path_factory.mktemp("demo") / "demo"
        made = subprocess.run(
            [sys.executable, "-m", "arihpc.cli", "demo", "--dir", str(directory), "--mous", "4",
             "--payload", "emulator"], capture_output=True, text=True, timeout=180,
            env={k: v for k, v in os.environ.items() if k != "ARIHPC_STORE"})
        assert made.returncode == 0, made.stdout + made.stderr[-3000:]
        _DEMO["url"] = f"sqlite:///{directory / 'arihpc.db'}"
    return _DEMO["url"]


def _stage(name: str, start: float, wall_s: float) -> dict:
    return {"stage": name, "start": start, "end": start + wall_s, "wall_s": wall_s,
            "cpu_s": wall_s / 2, "peak_rss": int(wall_s * 1e5), "outputs": {}}


def make_history_store(folder: Path) -> str:
    """The made store (see UIDS): sites ci, workers ``ci-big-N`` (odd MOUS) or an address."""
    url = f"sqlite:///{folder / 'history.db'}"
    select_mous(url, folder, UIDS, {u: g * 10**9 for u, g in SIZE_GB.items()})
    store = CampaignStore.open(url)
    for n, uid in enumerate(DONE + [FAILED]):
        worker = f"ci-big-{n}" if n % 2 else "tcp://10.0.0.5:4000"
        where = {"uid": uid, "worker": worker, "batch_job": str(1000 + n)}
        hours = 10 ** INTERCEPT * SIZE_GB[uid] ** SLOPE
        fetch = _stage("fetch", 1e9 + n * 1e5, 0.1 * hours * 3600)
        if uid == FAILED:
            attempt = store.start_attempt(uid, "ci", 4.0)
            store.finish_attempt(attempt, {**where, "status": "failed", "error_class":
                                           "download", "message": "HTTP Error 404"}, "failed")
            continue
        if uid in RETRIED:      # the fetch done, then tclean failed; the retry images
            attempt = store.start_attempt(uid, "ci", 4.0)
            store.finish_attempt(attempt, {**where, "status": "failed", "error_class": "tclean",
                                           "records": {"fetch": fetch}}, "waiting")
            records = {"image": _stage("image", fetch["end"] + 60, 0.9 * hours * 3600)}
        else:
            records = {"fetch": fetch,
                       "image": _stage("image", fetch["end"] + 1, 0.9 * hours * 3600)}
        attempt = store.start_attempt(uid, "ci", 4.0)
        store.finish_attempt(attempt, {**where, "status": "done", "records": records,
                                       "peak_rss": 5 * 10**8}, "done")
    store.close()
    return url


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    return demo_store(tmp_path_factory)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> str:
    return make_history_store(tmp_path_factory.mktemp("history"))


def sql(url: str, query) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(query).all()
    finally:
        engine.dispose()


def rows_in(url: str, table: sa.Table) -> int:
    return sql(url, sa.select(sa.func.count()).select_from(table))[0][0]


def export(url: str, *args) -> str:
    result = run(url, "export", *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_stages_parquet_of_the_demo_reads_back_with_the_reports_totals(demo, tmp_path):
    path = tmp_path / "stages.parquet"
    assert f"stages, 8 rows, parquet: {path}" in export(demo, "stages", "--format", "parquet",
                                                        path)
    frame = pd.read_parquet(path)
    count, wall, cpu, first = sql(demo, sa.select(sa.func.count(), sa.func.sum(stages.c.wall_s),
                                                  sa.func.sum(stages.c.cpu_s),
                                                  sa.func.min(stages.c.started_at)))[0]
    # one row per stage run: every stage of both MOUS done, once
    assert len(frame) == count == 8 and frame["stage_run_id"].is_unique
    assert sorted(frame.groupby("uid")["stage"].apply(list).sum()) == \
        sorted(["fetch", "restore", "image", "export"] * 2)
    assert frame["wall_s"].sum() == pytest.approx(wall) and \
        frame["cpu_s"].sum() == pytest.approx(cpu)
    assert str(frame["start"].dtype) == "datetime64[us, UTC]"
    assert abs(frame["start"].min().timestamp() - first) < 1e-6
    # the report's numbers (arihpc report / the dashboard: monitor.stats via views)
    store = CampaignStore.open(demo)
    try:
        numbers = views.read_numbers(store)
    finally:
        store.close()
    runs, done = numbers.runs(), frame[frame["mous_state"] == "done"]
    per_mous = done.groupby("uid").agg(size=("raw_size_bytes", "first"), wall=("wall_s", "sum"),
                                       peak=("peak_rss_bytes", "max"))
    assert numbers.progress()["done"] == len(per_mous) == 2
    assert sorted(per_mous["wall"] / 3600) == pytest.approx(sorted(runs["hours"]))
    assert sorted(per_mous["peak"] / 1e9) == pytest.approx(sorted(runs["peak_gb"]))
    assert sorted(per_mous["size"] / 1e9) == pytest.approx(sorted(runs["size_gb"]))
    assert numbers.failure_classes() == {} and done["attempt_error_class"].isna().all()


def test_csv_of_attempts_and_mous_round_trip(demo, tmp_path):
    export(demo, "attempts", tmp_path / "attempts.csv")                  # format from the name
    export(demo, "mous", tmp_path / "mous.csv.gz")
    back = {name: exports.read_table(tmp_path / file)
            for name, file in (("attempts", "attempts.csv"), ("mous", "mous.csv.gz"))}
    assert (tmp_path / "mous.csv.gz").read_bytes()[:2] == b"\x1f\x8b"   # gzip
    with arihpc.open_campaign(demo) as campaign:
        fresh = {"attempts": campaign.attempts(), "mous": campaign.mous()}
    assert len(back["attempts"]) == rows_in(demo, attempts) == 2
    assert len(back["mous"]) == rows_in(demo, mous) == 4
    for name, frame in back.items():
        assert list(frame.columns) == list(fresh[name].columns)
        text = [c for c, dtype in tables.COLUMNS[name].items() if dtype == "str"]
        # CSV writes an empty text and a missing one alike (a selected MOUS's reasons: "")
        pd.testing.assert_frame_equal(frame.fillna({c: "" for c in text}),
                                      fresh[name].fillna({c: "" for c in text}))
    assert str(back["attempts"]["end"].dtype) == "datetime64[us, UTC]"
    excluded = back["mous"][~back["mous"]["selected"]]
    assert sorted(excluded["reasons"]) == ["qa2-fail", "total-power"]   # as in the store


def test_the_made_stores_tables_name_classes_failures_and_the_queue(history):
    with arihpc.open_campaign(history) as campaign:
        tried, ran, every, queue = (campaign.attempts(), campaign.stages(), campaign.mous(),
                                    campaign.queue())
    assert len(tried) == 11 and len(ran) == 8 * 2     # two stages per MOUS done
    named = tried["worker"].str.startswith("ci-big-")
    assert (tried.loc[named, "node_class"] == "big").all() and named.sum() == 5
    assert tried.loc[~named, "node_class"].isna().all()               # an address: not known
    assert tried["error_class"].value_counts().to_dict() == {"tclean": 2, "download": 1}
    by_attempt = ran.groupby("attempt_id")["cpu_s"].sum()
    assert tried.set_index("attempt_id")["stages_cpu_s"].dropna().to_dict() == \
        pytest.approx(by_attempt.to_dict())
    retried = every.set_index("uid").loc[list(RETRIED)]
    assert retried["attempts"].tolist() == [2, 2] and retried["stage_runs"].tolist() == [2, 2]
    assert every.set_index("uid").loc[FAILED, "error_class"] == "download"
    assert queue["uid"].tolist() == LEFT and queue["position"].tolist() == [1, 2, 3]
    assert queue["priority"].is_monotonic_increasing and (queue["state"] == "new").all()


def without_store(*args) -> Result:
    """The arihpc CLI in-process with neither --store nor $ARIHPC_STORE."""
    return CliRunner(env={"ARIHPC_STORE": None}).invoke(main, list(map(str, args)))


def plan_json(url: str, *args) -> dict:
    result = run(url, "plan", "--machines", "1", "--runs", "20", "--no-failures",
                 "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_planner_fits_an_export_as_it_fits_the_store(history, tmp_path):
    export(history, "stages", tmp_path / "stages.parquet")
    export(history, "mous", tmp_path / "mous.csv")
    from_store = plan_json(history)
    assert "run times fitted to 8 MOUS done; sizes known for 3 of 3, run time ~ size^0.80" \
        in from_store["workload"]
    for name in ("stages.parquet", "mous.csv"):
        path = tmp_path / name
        from_file = plan_json(history, "--history", path)
        assert from_file["workload"] == from_store["workload"].replace(
            "8 MOUS done;", f"8 MOUS done in {path};")
        assert from_file["duration_h"] == from_store["duration_h"]
    export(history, "attempts", tmp_path / "attempts.parquet")
    wrong = run(history, "plan", "--machines", "1", "--history", tmp_path / "attempts.parquet")
    assert wrong.exit_code == 1 and "not an arihpc export of stages or mous" in wrong.output


def test_a_catalog_is_planned_with_an_exports_run_times(history, tmp_path):
    export(history, "stages", tmp_path / "stages.csv")
    catalog = tmp_path / "aq.tsv"
    catalog.write_text("Member ous id\tProject code\tQA2 Status\tArray\n"
                       "uid://A001/X7f/X1\t2016.1.00001.S\tPASS\t12m\n")
    planned = json.loads(run(history, "plan", "--machines", "1", "--runs", "5", "--format",
                             "json", "--catalog", catalog, "--history",
                             tmp_path / "stages.csv").stdout)
    assert planned["workload"].startswith(f"selected in {catalog}, run times fitted to 8 MOUS "
                                          f"done in {tmp_path / 'stages.csv'}; ")
    assert "size^0.80" in planned["workload"]
    alone = without_store("plan", "--machines", "1", "--history", tmp_path / "stages.csv")
    assert alone.exit_code == 2 and "--history fits the run times of --catalog or --store" \
        in alone.output


def test_bad_table_format_path_or_store_are_clear_errors(history, tmp_path):
    bad = run(history, "export", "jobs", tmp_path / "x.csv")
    assert bad.exit_code == 2 and \
        "'jobs' is not one of 'attempts', 'stages', 'mous', 'queue'" in bad.output
    unnamed = run(history, "export", "stages", tmp_path / "stages.txt")
    assert unnamed.exit_code == 2 and "give --format parquet or --format csv" in unnamed.output
    (tmp_path / "afile").write_text("")
    blocked = run(history, "export", "stages", tmp_path / "afile" / "stages.csv")
    assert blocked.exit_code == 1 and f"cannot write {tmp_path / 'afile' / 'stages.csv'}" \
        in blocked.output
    missing = run(f"sqlite:///{tmp_path}/typo.db", "export", "mous", tmp_path / "mous.csv")
    assert missing.exit_code == 1 and f"no campaign store at {tmp_path}/typo.db" in missing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]     # nothing made


def test_the_commands_tables_are_the_monitors_and_the_help_says_what_they_hold():
    assert export_cli.TABLE_NAMES == tuple(tables.TABLES)
    assert export_cli.FORMATS == exports.FORMATS
    text = without_store("export", "--help").output
    for words in ("attempts", "stages", "mous", "queue", "UTC timestamps", "whole table",
                  "node_class", "plan --history"):
        assert words in text, words


def test_import_arihpc_stays_light():
    found = subprocess.run([sys.executable, "-c", "import sys, arihpc; print(sorted(m for m in "
                            "sys.modules if m.startswith(('arihpc.', 'pandas', 'sqlalchemy'))))"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stdout + found.stderr
    assert tables.node_class_of("eso", "eso-256gb-12") == "256gb"
    assert tables.node_class_of("eso", "mup-64gb-1") is None
    assert tables.node_class_of("eso", "tcp://10.1.2.3:40000") is None

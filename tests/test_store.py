"""The campaign store on SQLite and on PostgreSQL (every test here runs on both)."""

import pytest
import sqlalchemy as sa

from arihpc.catalog.formats import CatalogRead
from arihpc.catalog.selection import Verdict
from arihpc.errors import StoreError
from arihpc.mous import MousRecord
from arihpc.store.catalog import CatalogStore
from arihpc.store.schema import SCHEMA_VERSION, attempts, meta, mous, stages, store_url

UID = "uid://A001/X87a/X706"


def read(*records, path="x.tsv"):
    return CatalogRead(path, "aq-tsv", {r.uid: r for r in records}, [])


@pytest.fixture
def store(store_url):
    s = CatalogStore.open(store_url)
    yield s
    s.close()


def test_schema_is_created_with_its_version(store):
    with store.engine.connect() as conn:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert int(version.scalar()) == SCHEMA_VERSION
    assert set(sa.inspect(store.engine).get_table_names()) >= {
        "mous", "attempts", "stages", "events", "arihpc_meta"}


def test_a_newer_schema_is_refused(store_url):
    CatalogStore.open(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(meta.update().values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    with pytest.raises(StoreError, match="newer than this arihpc"):
        CatalogStore.open(store_url)


def test_import_inserts_updates_and_counts(store):
    first = store.import_catalogs([read(MousRecord(UID, project="2016.1.00650.S", qa2="PASS"))])
    assert (first.inserted, first.updated, first.unchanged) == (1, 0, 0)
    again = store.import_catalogs([read(MousRecord(UID, project="2016.1.00650.S", qa2="PASS"))])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)
    more = store.import_catalogs([read(MousRecord(UID, size_bytes=5, size_source="datalink"))])
    assert (more.inserted, more.updated) == (0, 1)
    assert store.record(UID) == MousRecord(UID, project="2016.1.00650.S", qa2="PASS",
                                           size_bytes=5, size_source="datalink")


def test_reimport_never_blanks_known_values(store):
    store.import_catalogs([read(MousRecord(UID, qa2="SEMIPASS", antennas=40,
                                           targets=frozenset({"NGC3504"})))])
    store.import_catalogs([read(MousRecord(UID, qa2=None, antennas=None))])
    record = store.record(UID)
    assert (record.qa2, record.antennas, record.targets) == ("SEMIPASS", 40,
                                                              frozenset({"NGC3504"}))
    store.import_catalogs([read(MousRecord(UID, qa2="PASS"))])      # a known value updates
    assert store.record(UID).qa2 == "PASS"


def test_reimport_never_touches_campaign_state(store):
    store.import_catalogs([read(MousRecord(UID, project="2016.1.00650.S", qa2="PASS"))])
    verdict = Verdict(UID, True, 1, (), ("antennas-unknown",))
    store.save_decisions([verdict], {UID: 1})
    with store.engine.begin() as conn:
        conn.execute(mous.update().values(state="running"))
        attempt = conn.execute(attempts.insert().values(
            uid=UID, site="mup", batch_job="123", started_at=1.0)).inserted_primary_key[0]
        conn.execute(stages.insert().values(attempt_id=attempt, uid=UID, stage="fetch",
                                            started_at=1.0, ended_at=2.0, status="done"))
    store.import_catalogs([read(MousRecord(UID, qa2="SEMIPASS", antennas=12))])
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(mous)).one()
        assert (row.state, row.selected, row.tier, row.priority, row.flags) == (
            "running", True, 1, 1, "antennas-unknown")
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar() == 1
        assert conn.execute(sa.select(stages.c.status)).scalar() == "done"
    assert store.record(UID).qa2 == "SEMIPASS"                     # metadata did update
    assert store.undecided() == 1                                  # and the decision is stale


def test_decisions_come_back_in_priority_order(store):
    uids = [f"uid://A001/X1/X{i}" for i in range(1, 5)]
    store.import_catalogs([read(*[MousRecord(u) for u in uids])])
    verdicts = [Verdict(u, u != uids[3], 1, () if u != uids[3] else ("cycle",), ())
                for u in uids]
    store.save_decisions(verdicts, {uids[2]: 1, uids[0]: 2, uids[1]: 3})
    assert [d.uid for d in store.decisions(selected_only=True)] == [uids[2], uids[0], uids[1]]
    excluded = [d for d in store.decisions() if not d.selected]
    assert excluded[0].reasons == ("cycle",) and excluded[0].priority is None
    assert store.undecided() == 0


def test_events_are_appended(store):
    store.import_catalogs([read(MousRecord(UID), path="a.tsv")])
    store.import_catalogs([read(MousRecord(UID), path="b.tsv")])
    store.log_event("note", UID, text="hello")
    log = store.events()
    assert [e["kind"] for e in log] == ["import", "import", "note"]
    assert [e["data"].get("file") for e in log[:2]] == ["a.tsv", "b.tsv"]
    assert log[0]["id"] < log[1]["id"] < log[2]["id"]


def test_sqlite_store_uses_wal(sqlite_url):
    store = CatalogStore.open(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_store_url_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("ARIHPC_STORE", raising=False)
    assert store_url() == "sqlite:///arihpc.db"
    assert store_url(str(tmp_path / "c.db")) == f"sqlite:///{tmp_path}/c.db"
    assert store_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("ARIHPC_STORE", "sqlite:///env.db")
    assert store_url() == "sqlite:///env.db"
    assert store_url("sqlite:///given.db") == "sqlite:///given.db"


def test_missing_store_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        CatalogStore.open(str(tmp_path / "nowhere" / "c.db"))


def test_large_import_in_one_transaction(store):
    records = [MousRecord(f"uid://A001/X2/X{i:x}", qa2="PASS", size_bytes=i) for i in range(1200)]
    assert store.import_catalogs([read(*records)]).inserted == 1200
    changed = [MousRecord(r.uid, antennas=40) for r in records[:700]]
    summary = store.import_catalogs([read(*changed)])
    assert (summary.updated, summary.inserted) == (700, 0)
    assert store.count() == 1200
    assert store.record("uid://A001/X2/X3").antennas == 40


def test_a_version_1_store_is_upgraded_in_place(store_url):
    from arihpc.store.schema import CAMPAIGN_COLUMNS

    engine = sa.create_engine(store_url)
    old = sa.MetaData()
    keep = [c._copy() for c in mous.columns if c.name not in dict(CAMPAIGN_COLUMNS)]
    sa.Table("mous", old, *keep)
    sa.Table("arihpc_meta", old, *[c._copy() for c in meta.columns])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO arihpc_meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text("INSERT INTO mous (uid, qa2, imported_at, state) "
                             "VALUES ('uid://A001/X1/X1', 'PASS', 1.0, 'new')"))
    engine.dispose()
    store = CatalogStore.open(store_url)
    assert store.record("uid://A001/X1/X1").qa2 == "PASS"
    with store.engine.connect() as conn:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert int(version.scalar()) == SCHEMA_VERSION
        assert conn.execute(sa.select(mous.c.site, mous.c.memory_gb)).one() == (None, None)
    store.close()


def test_a_version_2_store_gains_the_attempts_peak_rss(store_url):
    engine = sa.create_engine(store_url)
    old = sa.MetaData()
    for table in (meta, mous, attempts):
        columns = [c._copy() for c in table.columns
                   if not (table is attempts and c.name == "peak_rss")]
        sa.Table(table.name, old, *columns)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO arihpc_meta (key, value) VALUES ('schema_version', '2')"))
        conn.execute(sa.text("INSERT INTO mous (uid, imported_at, state) "
                             "VALUES ('uid://A001/X1/X1', 1.0, 'done')"))
        conn.execute(sa.text("INSERT INTO attempts (uid, site, started_at, outcome) "
                             "VALUES ('uid://A001/X1/X1', 'eso', 1.0, 'done')"))
    engine.dispose()
    store = CatalogStore.open(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(attempts.c.outcome, attempts.c.peak_rss)).one() == (
            "done", None)
    store.close()


def stage_record(stage: str, start: float, wall: float, peak: int | None) -> dict:
    return {"stage": stage, "start": start, "end": start + wall, "wall_s": wall,
            "cpu_s": wall / 2, "peak_rss": peak, "outputs": {f"{stage}.fits": 10}}


def totals(conn) -> dict:
    """Each MOUS's totals as its row keeps them."""
    from arihpc.store.schema import TOTALS_COLUMNS
    names = [name for name, _ in TOTALS_COLUMNS]
    return {row.uid: tuple(getattr(row, n) for n in names) for row in conn.execute(
        sa.select(mous.c.uid, *(mous.c[n] for n in names)).order_by(mous.c.uid))}


def test_the_store_keeps_each_mous_totals_as_it_writes_attempts_and_stages(store_url):
    from arihpc.store.campaign import CampaignStore, Finish
    from arihpc.store.schema import refresh_totals

    store = CampaignStore.open(store_url)
    uids = [f"uid://A001/X1/X{i}" for i in range(1, 4)]
    store.import_catalogs([read(*[MousRecord(u) for u in uids])])
    store.save_decisions([Verdict(u, True, 1, (), ()) for u in uids], {u: i for i, u in
                                                                      enumerate(uids)})
    # MOUS 1: fetch, then failed; the retry images and exports (its export is the second)
    first, second = store.start_attempts([(uids[0], 4.0), (uids[1], 4.0)], "eso")
    store.finish_attempts([
        Finish(first, {"uid": uids[0], "status": "failed", "error_class": "tclean",
                       "records": {"fetch": stage_record("fetch", 10, 5, 100)}}, "waiting"),
        Finish(second, {"uid": uids[1], "status": "done", "records": {
            "fetch": stage_record("fetch", 10, 7, None),
            "export": stage_record("export", 20, 3, None)}}, "done")])
    retry = store.start_attempt(uids[0], "eso", 8.0)
    store.record_stages(retry, uids[0], {"image": stage_record("image", 30, 60, 900)})
    store.finish_attempt(retry, {"uid": uids[0], "status": "done", "records": {
        "image": stage_record("image", 30, 60, 900),              # recorded already: once
        "export": stage_record("export", 95, 2, 50)}}, "done")
    with store.engine.begin() as conn:
        kept = totals(conn)
        export_of_first = conn.execute(sa.select(stages.c.id).where(
            stages.c.uid == uids[0], stages.c.stage == "export")).scalar_one()
        assert kept[uids[0]] == (2, retry, 67.0, 33.5, 900, export_of_first)
        assert kept[uids[1]][:4] == (1, second, 10.0, 5.0) and kept[uids[1]][4] is None
        assert kept[uids[2]] == (None,) * 6                       # never tried
        refresh_totals(conn)                                    # from the rows themselves
        recomputed = totals(conn)
    assert recomputed[uids[0]] == kept[uids[0]] and recomputed[uids[1]] == kept[uids[1]]
    assert recomputed[uids[2]] == (0, None, None, None, None, None)
    store.close()


def test_a_version_3_store_gains_the_totals_of_its_mous(store_url):
    from arihpc.store.schema import TOTALS_COLUMNS

    engine = sa.create_engine(store_url)
    old = sa.MetaData()
    for table in (meta, mous, attempts, stages):
        sa.Table(table.name, old, *[c._copy() for c in table.columns
                                    if not (table is mous and c.name in dict(TOTALS_COLUMNS))])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO arihpc_meta (key, value) VALUES ('schema_version', '3')"))
        conn.execute(sa.text("INSERT INTO mous (uid, imported_at, state) "
                             "VALUES ('uid://A001/X1/X1', 1.0, 'done')"))
        for n in (1, 2):
            conn.execute(sa.text("INSERT INTO attempts (id, uid, site, started_at, outcome) "
                                 f"VALUES ({n}, 'uid://A001/X1/X1', 'eso', {n}.0, 'done')"))
        for n, stage in enumerate(("fetch", "export", "export"), 1):
            conn.execute(sa.text("INSERT INTO stages (id, attempt_id, uid, stage, started_at, "
                                 f"wall_s, cpu_s, peak_rss) VALUES ({n}, 2, 'uid://A001/X1/X1', "
                                 f"'{stage}', {n}.0, {n}.5, 1.0, {n * 100})"))
    engine.dispose()
    store = CatalogStore.open(store_url)
    with store.engine.connect() as conn:
        assert totals(conn)["uid://A001/X1/X1"] == (2, 2, 7.5, 3.0, 300, 3)
    store.close()

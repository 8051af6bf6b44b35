"""Staging: with one MOUS slot and downloads from a throttled HTTP archive on 127.0.0.1, the next
MOUS's fetch runs while the current MOUS computes; it does not when the site has no I/O slot,
or when the staging budget (GB) cannot hold the next MOUS's raw data."""

import hashlib
import http.server
import json
import os
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import dask.config
import pytest
import sqlalchemy as sa
from distributed import Client
from helpers import run

from arihpc.campaign.orchestrator import Orchestrator, campaign_options
from arihpc.mous import disk_name
from arihpc.sites.cluster import SiteCluster
from arihpc.sites.profile import load_profile
from arihpc.store.campaign import CampaignStore
from arihpc.store.schema import stages

RATE = 1_000_000        # bytes per second the archive serves
FILE_BYTES = 2_000_000  # so a fetch takes about 2 s


class ThrottledHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files at RATE bytes/s, like a busy archive."""

    def copyfile(self, source, outputfile):
        while chunk := source.read(RATE // 10):
            outputfile.write(chunk)
            time.sleep(0.1)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive(tmp_path):
    """Serve ``tmp_path/archive``; yields (root folder, URL template)."""
    root = tmp_path / "archive"
    root.mkdir()
    handler = partial(ThrottledHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield root, f"http://127.0.0.1:{server.server_address[1]}/{{uid}}/"
    server.shutdown()


def publish(root: Path, uid: str) -> None:
    folder = root / disk_name(uid)
    folder.mkdir()
    data = os.urandom(FILE_BYTES)
    (folder / "raw.tar").write_bytes(data)
    (folder / "MANIFEST.json").write_text(json.dumps({"files": [
        {"name": "raw.tar", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}))


@pytest.mark.parametrize("io_slots, staging_gb, ahead", [
    (1, 100, True), (0, 100, False), (1, 0.001, False)])
def test_the_next_fetch_overlaps_the_current_compute_within_io_slots_and_budget(
        tmp_path, archive, io_slots, staging_gb, ahead):
    root, source = archive
    uids = [f"uid://A001/X40/X{i}" for i in range(1, 5)]
    (tmp_path / "aq.tsv").write_text("Member ous id\tProject code\tQA2 Status\tArray\n" + "".join(
        f"{u}\t2016.1.0000{i}.S\tPASS\t12m\n" for i, u in enumerate(uids)))
    url = f"sqlite:///{tmp_path}/campaign.db"
    assert run(url, "catalog", "import", tmp_path / "aq.tsv").exit_code == 0
    (tmp_path / "sizes.csv").write_text("uid,size_bytes,size_source\n" + "".join(
        f"{u},{FILE_BYTES},datalink\n" for u in uids))
    assert run(url, "catalog", "import", tmp_path / "sizes.csv").exit_code == 0
    assert run(url, "select").exit_code == 0
    for uid in uids:
        publish(root, uid)
    (tmp_path / "site.yaml").write_text(
        "batch-system: local\nmax-jobs: 1\nx11: false\npayload: emulator\n"
        f"archive: '{source}'\nnode-classes:\n  one: {{cores: 1, memory: 1GB, slots: 1}}\n"
        f"storage: {{kind: local, work-dir: {tmp_path}/work, scratch: /tmp, "
        f"io-slots: {io_slots}, staging-gb: {staging_gb}}}\n"
        "casa: {imaging: '6.7.0.31', installations: {'6.7.0.31': pypi}}\n")
    profile = load_profile(str(tmp_path / "site.yaml"))
    store = CampaignStore.open(url)
    options = campaign_options(profile, {"cpu-s-per-gb": 500})      # ~1 s per compute stage
    with dask.config.set({"arihpc.planning.median-memory-gb": 0.4,
                          "arihpc.planning.min-memory-gb": 0.1}), \
            SiteCluster.start(profile) as cluster, Client(cluster.cluster) as client:
        tally = Orchestrator(store, profile, cluster, client, "emulator", options,
                             Path(profile.storage.work_dir)).run(threading.Event())
    assert tally.done == 4
    with store.engine.connect() as conn:
        times = {(r.uid, r.stage): (r.started_at, r.ended_at) for r in conn.execute(
            sa.select(stages.c.uid, stages.c.stage, stages.c.started_at, stages.c.ended_at))}
    assert len(times) == 4 * 4
    for uid in uids:        # the real download from the throttled archive
        fetched = tmp_path / "work" / disk_name(uid) / "fetch" / "raw.tar"
        assert fetched.stat().st_size == FILE_BYTES
        start, end = times[(uid, "fetch")]
        assert end - start >= 0.8 * FILE_BYTES / RATE
    computes = [(times[(u, "restore")][0], times[(u, "export")][1]) for u in uids]
    assert computes == sorted(computes)                     # one slot, in queue order
    # (the first two fetch side by side: the first one's inside its compute slot)
    for current, following in zip(uids[1:], uids[2:]):
        compute_start, compute_end = times[(current, "restore")][0], times[(current, "export")][1]
        fetch_start, fetch_end = times[(following, "fetch")]
        overlaps = fetch_start < compute_end and fetch_end > compute_start
        assert overlaps == ahead, (current, following, times)
    shutil.rmtree(tmp_path / "work")

"""Progress of the long commands (issue 22): `arihpc catalog import` of a large export and
`arihpc plan` show a bar with counts and ETA on a terminal, a few plain lines off one, always
on stderr; stdout is what it was (arihpc/cli/common.py Progress)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arihpc.catalog.formats import read_catalog, row_estimate
from arihpc.cli.common import Progress
from arihpc.store.catalog import CatalogStore

ARIHPC = [sys.executable, "-m", "arihpc.cli"]
ENV = {k: v for k, v in os.environ.items() if k not in ("ARIHPC_STORE", "ARIHPC_CONFIG")}


def export(folder: Path, mous: int, name: str = "aq.tsv") -> tuple[Path, int]:
    """An Archive Query TSV of ``mous`` MOUS, every third one with a second row (a second
    source); returns its path and its row count."""
    lines = ["Member ous id\tProject code\tQA2 Status\tArray\tALMA source name"]
    for i in range(mous):
        uid = f"uid://A001/X{0x100 + i // 4096:x}/X{i % 4096:x}"
        for source in range(1 + (i % 3 == 0)):
            lines.append(f"{uid}\t2016.1.{i:05d}.S\tPASS\t12m\tSRC{i}_{source}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines) - 1


def expected_stdout(path: Path, mous: int, store: Path) -> str:
    return (f"{path}: aq-tsv, {mous} MOUS\n"
            f"store sqlite:///{store}: {mous} new, 0 updated, 0 unchanged MOUS\n")


def in_pty(args: list[str], cwd: Path, timeout: float = 60) -> tuple[str, str, int]:
    """Run a command whose stderr is a pseudo-terminal (stdout a pipe): (stdout, what the
    terminal got, exit status)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, cwd=cwd, env=ENV)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:         # EIO: the last holder of the terminal closed it
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        out = proc.stdout.read().decode()
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return out, seen.decode(errors="replace"), status


def test_off_a_terminal_an_import_prints_a_few_plain_lines_on_stderr(tmp_path):
    path, rows = export(tmp_path, 3000)
    store = tmp_path / "c.db"
    done = subprocess.run([*ARIHPC, "--store", str(store), "catalog", "import", str(path)],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_stdout(path, 3000, store)
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and "\x1b" not in done.stderr       # no bar redraws
    assert re.fullmatch(rf"arihpc: reading {re.escape(str(path))}: {rows:,} rows in [\d.]+ s",
                        lines[-2]), lines
    assert re.fullmatch(r"arihpc: writing the store: 3,000 rows in [\d.]+ s", lines[-1]), lines
    assert len(lines) <= 2 * 10, lines
    assert all(line.startswith("arihpc: reading ") or
               line.startswith("arihpc: writing the store: ") for line in lines)


def test_a_small_import_shows_no_progress(tmp_path):
    path, _ = export(tmp_path, 20)
    store = tmp_path / "c.db"
    done = subprocess.run([*ARIHPC, "--store", str(store), "catalog", "import", str(path)],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == expected_stdout(path, 20, store)


def test_on_a_terminal_an_import_draws_a_bar_and_stdout_is_unchanged(tmp_path):
    path, rows = export(tmp_path, 6000)         # two write batches
    store = tmp_path / "c.db"
    out, terminal, status = in_pty([*ARIHPC, "--store", str(store), "catalog", "import",
                                    str(path)], tmp_path)
    assert status == 0, terminal
    assert out == expected_stdout(path, 6000, store)
    assert "\r" in terminal
    assert re.search(rf"reading {re.escape(str(path))} \(rows\)\s+\[#+\]\s+{rows}/{rows}\s+100%",
                     terminal), terminal
    bar = r"\r(?:\x1b\[\?25l)?writing the store \(rows\)  "             # redrawn in place
    assert re.search(bar + r"\[#{20}-{4}\]  5000/6000\s+83%", terminal), terminal
    assert re.search(bar + r"\[#{24}\]  6000/6000\s+100%", terminal), terminal
    assert "arihpc: reading" not in terminal            # the bar, not the plain lines


def test_on_a_terminal_plan_draws_a_bar_over_its_mous(tmp_path):
    out, terminal, status = in_pty([*ARIHPC, "plan", "--machines", "3", "--mous", "2000",
                                    "--runs", "20", "--format", "json"], tmp_path)
    assert status == 0, terminal
    assert json.loads(out)["done"]["median"] > 0                    # stdout: the JSON only
    assert "\r" in terminal
    redraws = re.findall(r"simulating 20 campaigns \(MOUS\)\s+\[[#-]{24}\]\s+(\d+)/2000", terminal)
    assert len(redraws) >= 10 and redraws[-1] == "2000", terminal
    assert [int(n) for n in redraws] == sorted(int(n) for n in redraws)


def test_plan_off_a_terminal_ends_with_one_plain_line(tmp_path):
    done = subprocess.run([*ARIHPC, "plan", "--machines", "3", "--mous", "2000", "--runs",
                           "20", "--format", "json"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runs"] == 20
    assert "\r" not in done.stderr
    assert re.fullmatch(r"arihpc: simulating 20 campaigns: 2,000 MOUS in [\d.]+ s",
                        done.stderr.splitlines()[-1]), done.stderr


def test_plain_lines_come_every_tenth_at_most_once_each_and_not_too_often(capsys):
    with Progress("counting", "rows", gap_s=0) as shown:
        for done in range(0, 100_001, 500):
            shown(done, 100_000)
    lines = capsys.readouterr().err.splitlines()
    percents = [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines[:-1]]
    assert percents == [10, 20, 30, 40, 50, 60, 70, 80, 90], lines
    assert lines[-1].startswith("arihpc: counting: 100,000 rows in ")

    with Progress("counting", "rows") as shown:         # gap_s 2: all of it in a moment
        for done in range(0, 100_001, 500):
            shown(done, 100_000)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("arihpc: counting: 100,000 rows in ")


def test_a_failed_phase_prints_no_end_line(capsys):
    with pytest.raises(RuntimeError):
        with Progress("counting", "rows") as shown:
            shown(5000, 10_000)
            raise RuntimeError("stop")
    assert capsys.readouterr().err == ""


def test_read_and_write_report_counts_up_to_their_totals(tmp_path):
    path, rows = export(tmp_path, 12_000)       # more than one write batch
    assert row_estimate(path, "tab") == rows
    reads = []
    read = read_catalog(path, progress=lambda done, total: reads.append((done, total)))
    assert len(read.records) == 12_000 and reads[-1] == (rows, rows)
    assert len(reads) == rows // 1000 + 1 and all(t == rows for _, t in reads)

    store = CatalogStore.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        writes = []
        first = store.import_catalogs([read], lambda done, total: writes.append((done, total)))
        assert (first.inserted, first.updated) == (12_000, 0)
        assert writes == [(n, 12_000) for n in (5000, 10_000, 12_000)]
        assert store.count() == 12_000
        assert {r.uid: r for r in store.records()} == read.records
        again = []      # a re-import reads the 12,000 stored rows back, then writes
        second = store.import_catalogs([read], lambda done, total: again.append((done, total)))
        assert second.unchanged == 12_000
        assert again[-1] == (24_000, 24_000) and again[0] == (1000, 24_000)
        assert [d for d, _ in again] == sorted(d for d, _ in again)
    finally:
        store.close()

"""The fetch stage against a real HTTP server on 127.0.0.1 and a mirror folder (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from arihpc.errors import InvalidUid
from arihpc.runner.fetch import DownloadError, fetch_mous

UID = "uid___A001_X147_X5b"
SIZES = {"a.tar": 2 * 1024 * 1024 + 17, "b.tar": 3 * 1024 * 1024}
FAST = {"backoff_s": 0.01, "timeout_s": 10}


def make_archive(root: Path, manifest_names: list[str] | None = None) -> dict[str, bytes]:
    """Write ``root/UID/`` with random files and their MANIFEST.json; returns name -> bytes."""
    folder = root / UID
    folder.mkdir(parents=True)
    data = {name: os.urandom(size) for name, size in SIZES.items()}
    entries = []
    for name, blob in data.items():
        (folder / name).write_bytes(blob)
        entries.append({"name": name, "size": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest()})
    for i, name in enumerate(manifest_names or []):
        entries[i]["name"] = name
    (folder / "MANIFEST.json").write_text(json.dumps({"files": entries}))
    return data


class Archive:
    """Switches and records of the test server."""

    def __init__(self, root: Path):
        self.root = root
        self.drop_once: set[str] = set()    # first GET: full-length headers, half the body
        self.missing: set[str] = set()      # answered 404
        self.ignore_range = False           # answer 200 with the whole file to a Range request
        self.requests: list[tuple[str, str | None]] = []   # (file name, Range header)
        self.sent: Counter[str] = Counter()  # body bytes written per file name
        self.template = ""

    def url(self, name: str) -> str:
        return self.template.replace("{uid}", UID) + name

    def file_requests(self, name: str) -> list[str | None]:
        return [rng for got, rng in self.requests if got == name]


def _handler(archive: Archive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            name, rng = rel.rsplit("/", 1)[-1], self.headers.get("Range")
            archive.requests.append((name, rng))
            path = archive.root / rel
            if name in archive.missing or ".." in rel or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            if rng and not archive.ignore_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in archive.drop_once:
                archive.drop_once.discard(name)
                body = body[: len(body) // 2]
                self.close_connection = True
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client hung up early (it rejected the size): expected here
            archive.sent[name] += len(body)

    return Handler


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A threaded HTTP server on 127.0.0.1 serving an archive of one MOUS; yields an Archive."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    state = Archive(tmp_path / "archive")
    state.data = make_archive(state.root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.template = f"http://127.0.0.1:{server.server_address[1]}/{{uid}}/"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def assert_complete(dest: Path, data: dict[str, bytes]) -> None:
    for name, blob in data.items():
        assert hashlib.sha256((dest / name).read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert not list(dest.glob("*.part"))


def test_plain_download(archive: Archive, tmp_path: Path):
    dest = tmp_path / "work" / "raw"
    files = fetch_mous(archive.template, UID, dest, **FAST)
    assert [f["name"] for f in files] == ["a.tar", "b.tar"]
    for f in files:
        blob = archive.data[f["name"]]
        assert f["size"] == len(blob) and f["sha256"] == hashlib.sha256(blob).hexdigest()
        assert Path(f["path"]) == dest / f["name"]
    assert_complete(dest, archive.data)
    assert archive.file_requests("a.tar") == [None] and archive.file_requests("b.tar") == [None]


def test_dropped_connection_resumes_with_range(archive: Archive, tmp_path: Path):
    archive.drop_once.add("a.tar")
    size = SIZES["a.tar"]
    fetch_mous(archive.template, UID, tmp_path / "dest", **FAST)
    assert archive.file_requests("a.tar") == [None, f"bytes={size // 2}-"]
    # Resumed: the file crossed the wire once in total (a restart from zero would be 1.5x).
    assert archive.sent["a.tar"] == size
    assert_complete(tmp_path / "dest", archive.data)


def test_404_is_not_retried(archive: Archive, tmp_path: Path):
    archive.missing.add("b.tar")
    with pytest.raises(DownloadError) as err:
        fetch_mous(archive.template, UID, tmp_path / "dest", retries=3, **FAST)
    assert archive.url("b.tar") in str(err.value) and "404" in str(err.value)
    assert archive.file_requests("b.tar") == [None]


def test_sha256_mismatch_fails_after_retries(archive: Archive, tmp_path: Path):
    (archive.root / UID / "a.tar").write_bytes(os.urandom(SIZES["a.tar"]))
    with pytest.raises(DownloadError, match="sha256") as err:
        fetch_mous(archive.template, UID, tmp_path / "dest", retries=2, **FAST)
    assert archive.url("a.tar") in str(err.value)
    assert archive.file_requests("a.tar") == [None, None, None]   # each retry from zero
    assert not (tmp_path / "dest" / "a.tar").exists()
    assert not (tmp_path / "dest" / "a.tar.part").exists()


@pytest.mark.parametrize("source", ["http", "mirror"])
def test_size_mismatch_names_the_source(archive: Archive, tmp_path: Path, source: str):
    (archive.root / UID / "b.tar").write_bytes(archive.data["b.tar"] + b"extra")
    template = archive.template if source == "http" else str(archive.root / "{uid}")
    with pytest.raises(DownloadError, match=r"size mismatch: source has \d+ bytes") as err:
        fetch_mous(template, UID, tmp_path / "dest", **FAST)
    where = archive.url("b.tar") if source == "http" else str(archive.root / UID / "b.tar")
    assert where in str(err.value)


def test_server_ignoring_range_restarts_from_zero(archive: Archive, tmp_path: Path):
    archive.ignore_range = True
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.tar.part").write_bytes(b"garbage" * 1000)   # appended to, this would fail sha256
    fetch_mous(archive.template, UID, dest, retries=0, **FAST)
    assert archive.file_requests("a.tar") == ["bytes=7000-"]
    assert_complete(dest, archive.data)


def test_mirror_copy_resumes_from_part(tmp_path: Path):
    data = make_archive(tmp_path / "mirror")
    template = str(tmp_path / "mirror" / "{uid}")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.tar.part").write_bytes(data["a.tar"][:1000])
    files = fetch_mous(template, UID, dest, retries=0, **FAST)
    assert [f["name"] for f in files] == ["a.tar", "b.tar"]
    assert_complete(dest, data)
    # The copy appends after the .part: a wrong prefix is kept, then caught by sha256.
    (dest / "a.tar").unlink()
    (dest / "a.tar.part").write_bytes(b"x" * 1000)
    with pytest.raises(DownloadError, match="sha256"):
        fetch_mous(template, UID, dest, retries=0, **FAST)
    fetch_mous(template, UID, dest, retries=1, **FAST)   # the retry starts from zero
    assert_complete(dest, data)


def test_second_fetch_transfers_nothing(archive: Archive, tmp_path: Path):
    fetch_mous(archive.template, UID, tmp_path / "dest", **FAST)
    archive.requests.clear()
    archive.sent.clear()
    files = fetch_mous(archive.template, UID, tmp_path / "dest", **FAST)
    assert len(files) == 2
    assert archive.requests == [("MANIFEST.json", None)] and set(archive.sent) == {"MANIFEST.json"}


def test_invalid_uid_rejected_before_any_request(archive: Archive, tmp_path: Path):
    with pytest.raises(InvalidUid):
        fetch_mous(archive.template, "../x", tmp_path / "dest", **FAST)
    assert archive.requests == [] and not (tmp_path / "dest").exists()


@pytest.mark.parametrize("bad", ["../evil", "sub/file.tar", "", "..", "a.tar.part"])
def test_manifest_name_not_plain_raises(tmp_path: Path, bad: str):
    make_archive(tmp_path / "mirror", manifest_names=["ok.tar", bad])
    with pytest.raises(DownloadError, match=r"files\[1\]: field 'name'"):
        fetch_mous(str(tmp_path / "mirror" / "{uid}"), UID, tmp_path / "dest", **FAST)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arihpc.runner.fetch", *args],
                          capture_output=True, text=True, timeout=30)


def test_cli_success_and_404(archive: Archive, tmp_path: Path):
    dest = tmp_path / "dest"
    ok = run_cli("--source", archive.template, "--uid", UID, "--dest", str(dest),
                 "--backoff", "0.01")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == [hashlib.sha256(archive.data["a.tar"]).hexdigest(),
                                str(SIZES["a.tar"]), str(dest / "a.tar")]
    archive.missing.add("a.tar")
    failed = run_cli("--source", archive.template, "--uid", UID, "--dest", str(tmp_path / "other"),
                     "--retries", "1", "--backoff", "0.01")
    assert failed.returncode == 3
    assert failed.stderr.startswith("arihpc-fetch: download failed: ")
    assert archive.url("a.tar") in failed.stderr and "404" in failed.stderr


def test_cli_bad_arguments_exit_2(tmp_path: Path):
    assert run_cli("--source", "x/{uid}", "--uid", UID).returncode == 2          # no --dest
    bad = run_cli("--source", "x/{uid}", "--uid", "../x", "--dest", str(tmp_path))
    assert bad.returncode == 2 and "../x" in bad.stderr

"""The fetch stage: download (or copy) the archived files of one MOUS into its work directory.

Archive layout (arihpc's own convention). A MOUS's files live in one folder named by a source
template containing ``{uid}``, replaced by the on-disk uid (``uid___A001_X147_X5b``):

- an HTTP(S) URL template, e.g. ``http://127.0.0.1:8000/{uid}/``, or
- a mirror path template, e.g. ``/mirror/{uid}/`` (a local or shared file system).

That folder holds ``MANIFEST.json``::

    {"files": [{"name": "member.uid___A001_X147_X5b.asdm.tar", "size": 123, "sha256": "<hex>"}]}

``name`` is a plain file name (no ``/``, no ``..``). Each file is written to ``<dest>/<name>.part``
and resumed from there after an interruption (HTTP ``Range: bytes=N-``; a mirror copy seeks). A
completed ``.part`` is checked against ``size`` and ``sha256``, fsynced and renamed to ``<name>``; a
file already present with the right size and sha256 is not fetched again. A dropped connection, a
timeout or a 5xx is retried (``backoff_s * 2**n`` seconds before retry n+1, resuming the .part); a
sha256 mismatch deletes the .part and retries from zero; a 4xx, a missing mirror file or a source
whose size differs from the MANIFEST fails at once with DownloadError.

Run as a command: ``python -m arihpc.runner.fetch --source TEMPLATE --uid UID --dest DIR``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from arihpc.errors import ArihpcError, ConfigError, InvalidUid
from arihpc.mous import disk_name
from arihpc.runner.manifest import sha256_of
from arihpc.runner.workdir import fsync_path

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# A transfer cut short by these keeps its .part and is retried (resuming).
_INTERRUPTED = (OSError, http.client.HTTPException)


class DownloadError(ArihpcError):
    """A MOUS file that could not be fetched: the message names the URL or path and the cause."""


class _Retry(Exception):
    """A failure worth another attempt (5xx, connection refused)."""


def _is_http(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _join(base: str, name: str) -> str:
    if _is_http(base):
        return base.rstrip("/") + "/" + urllib.parse.quote(name)
    return str(Path(base) / name)


def _urlopen(url: str, timeout_s: float, headers: dict[str, str]) -> http.client.HTTPResponse:
    """urlopen; a 4xx raises DownloadError at once, 5xx and connection errors raise _Retry."""
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason} (not retried)") from None
        raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Retry(f"cannot connect: {exc.reason}") from None


def _size_mismatch(where: str, total: int, size: int) -> DownloadError:
    return DownloadError(f"{where}: size mismatch: source has {total} bytes, MANIFEST says {size}")


def _open_http(url: str, offset: int, size: int, timeout_s: float) -> tuple[BinaryIO, bool]:
    """GET ``url`` from ``offset``; returns the body and whether it continues the .part."""
    response = _urlopen(url, timeout_s, {"Range": f"bytes={offset}-"} if offset else {})
    append = bool(offset) and response.status == 206
    if append:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        if not content_range.startswith(f"bytes {offset}-"):
            response.close()
            raise DownloadError(f"{url}: asked for bytes {offset}- but got Content-Range "
                                f"{content_range!r}")
    else:
        if offset:
            log.info("%s: server ignored Range, restarting from zero", url)
        total = response.headers.get("Content-Length", "")
    if total.isdigit() and int(total) != size:
        response.close()
        raise _size_mismatch(url, int(total), size)
    return response, append


def _open_file(path: str, offset: int, size: int) -> tuple[BinaryIO, bool]:
    """Open a mirror file at ``offset``; returns it and whether it continues the .part."""
    try:
        source = open(path, "rb")
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DownloadError(f"{path}: cannot read mirror file: {exc.strerror}") from None
    total = os.fstat(source.fileno()).st_size
    if total != size:
        source.close()
        raise _size_mismatch(path, total, size)
    source.seek(offset)
    return source, offset > 0


def _transfer(location: str, part: Path, size: int, timeout_s: float, chunk: int) -> None:
    """Append the rest of ``location`` to ``part`` (or rewrite it), then fsync it."""
    offset = part.stat().st_size if part.exists() else 0
    if part.exists() and offset >= size:
        return  # nothing left to ask for: the checks decide whether the .part is good
    if _is_http(location):
        source, append = _open_http(location, offset, size, timeout_s)
    else:
        source, append = _open_file(location, offset, size)
    with source, open(part, "ab" if append else "wb") as out:
        while block := source.read(chunk):
            out.write(block)
            if out.tell() > size:
                break
        out.flush()
        os.fsync(out.fileno())


def _fetch_file(location: str, entry: dict, dest: Path, retries: int, backoff_s: float,
                timeout_s: float, chunk: int) -> Path:
    """Fetch one manifest entry into ``dest`` with resume, verification and retries."""
    final, part = dest / entry["name"], dest / (entry["name"] + ".part")
    size, want = entry["size"], entry["sha256"].lower()
    problem = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            log.warning("%s: %s; retry %d of %d", location, problem, attempt, retries)
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _transfer(location, part, size, timeout_s, chunk)
        except (_Retry, *_INTERRUPTED) as exc:
            problem = f"transfer interrupted ({type(exc).__name__}: {exc})"
            continue
        have = part.stat().st_size if part.exists() else 0
        if have < size:
            problem = f"connection dropped after {have} of {size} bytes"
            continue
        got = sha256_of(part) if have == size else None
        if got == want:
            os.replace(part, final)
            fsync_path(dest)
            return final
        problem = (f"size mismatch: got more than {size} bytes" if got is None
                   else f"sha256 mismatch: got {got}, MANIFEST says {want}")
        part.unlink()
    raise DownloadError(f"{location}: {problem} (after {retries + 1} attempts)")


def _load_json(where: str, timeout_s: float) -> object:
    if _is_http(where):
        with _urlopen(where, timeout_s, {}) as response:
            return json.load(response)
    try:
        with open(where, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, PermissionError) as exc:
        raise DownloadError(f"{where}: cannot read manifest: {exc.strerror}") from None


def _read_manifest(base: str, timeout_s: float, retries: int, backoff_s: float) -> list[dict]:
    """The validated ``files`` list of the MANIFEST.json in ``base`` (read with retries)."""
    where = _join(base, MANIFEST)
    for attempt in range(retries + 1):
        try:
            data = _load_json(where, timeout_s)
            break
        except ValueError as exc:
            raise DownloadError(f"{where}: not valid JSON: {exc}") from None
        except (_Retry, *_INTERRUPTED) as exc:
            if attempt == retries:
                raise DownloadError(f"{where}: cannot read manifest: {exc}") from None
            time.sleep(backoff_s * 2 ** attempt)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise DownloadError(f"{where}: field 'files': expected a list of entries")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        problem = _entry_problem(entry, seen)
        if problem:
            raise DownloadError(f"{where}: files[{i}]: {problem}")
    return files


def _entry_problem(entry: object, seen: set[str]) -> str | None:
    """What is wrong with one manifest entry, or None."""
    if not isinstance(entry, dict):
        return "expected an object with name, size, sha256"
    name, size, sha = entry.get("name"), entry.get("size"), entry.get("sha256")
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name or name.endswith(".part")):
        return f"field 'name': {name!r} is not a plain file name"
    if name in seen:
        return f"field 'name': {name!r} listed twice"
    seen.add(name)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"field 'size': {size!r} is not a byte count"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return f"field 'sha256': {sha!r} is not a hex sha256"
    return None


def fetch_mous(source_template: str, disk_uid: str, dest: Path, retries: int = 2,
               backoff_s: float = 1.0, timeout_s: float = 60, chunk: int = 1 << 20) -> list[dict]:
    """Fetch every file of one MOUS into ``dest``; returns [{name, size, sha256, path}].

    Raises InvalidUid for a bad uid (before any request), ConfigError for a template without
    ``{uid}`` and DownloadError when a file cannot be fetched intact.
    """
    uid = disk_name(disk_uid)
    if "{uid}" not in source_template:
        raise ConfigError(f"source template {source_template!r} has no {{uid}} placeholder")
    base = source_template.replace("{uid}", uid)
    entries = _read_manifest(base, timeout_s, retries, backoff_s)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fetched = []
    for entry in entries:
        path = dest / entry["name"]
        location = _join(base, entry["name"])
        if (path.is_file() and path.stat().st_size == entry["size"]
                and sha256_of(path) == entry["sha256"].lower()):
            log.info("%s: already complete, skipped", path)
        else:
            _fetch_file(location, entry, dest, retries, backoff_s, timeout_s, chunk)
            log.info("%s: fetched from %s", path, location)
        fetched.append({"name": entry["name"], "size": entry["size"],
                        "sha256": entry["sha256"].lower(), "path": str(path)})
    return fetched


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch one MOUS, print ``<sha256>  <size>  <path>`` per file."""
    parser = argparse.ArgumentParser(prog="arihpc-fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="URL or path template with {uid}")
    parser.add_argument("--uid", required=True, help="MOUS uid (either ALMA form)")
    parser.add_argument("--dest", required=True, type=Path, help="destination directory")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout, seconds")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        parser.error("--retries and --backoff must be >= 0, --timeout > 0")
    try:
        files = fetch_mous(args.source, args.uid, args.dest, retries=args.retries,
                           backoff_s=args.backoff, timeout_s=args.timeout)
    except (InvalidUid, ConfigError) as exc:
        print(f"arihpc-fetch: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"arihpc-fetch: download failed: {exc}", file=sys.stderr)
        return 3
    for item in files:
        print(f"{item['sha256']}  {item['size']}  {item['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

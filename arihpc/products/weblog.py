"""The weblog of one MOUS: one self-contained HTML file (``weblog/index.html``).

One section per stage (command, CASA version, wall and CPU time, peak memory, the WARN and
SEVERE lines of its logs but the harmless ones of ``failures.ignore``, its products with their
previews, its score and reasons), the ARIQA table, and the decision: packaged, or not and why.
No external URL: inline CSS, previews as ``data:`` URIs, no script.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shlex
import time
from pathlib import Path

from astropy.table import Table

import arihpc
from arihpc import config
from arihpc.products.scores import StageScore
from arihpc.runner.workdir import fsync_path, read_checkpoint

WEBLOG = Path("weblog", "index.html")
CASA_STAGES = ("restore", "image", "export")     # stages that run CASA: their version is shown
NOTABLE = re.compile(r"\b(WARN|WARNING|SEVERE|ERROR)\b")
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #212121; max-width: 70em; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
pre { background: #fafafa; border: 1px solid #eee; padding: 0.5em; overflow-x: auto;
      font-size: 0.8em; white-space: pre-wrap; }
.ok { color: #2e7d32; } .fail { color: #c62828; font-weight: bold; }
.decision { font-size: 1.1em; padding: 0.5em; border: 2px solid; display: inline-block; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _e(value: object) -> str:
    """Escaped text; ``://`` as entities, so a URL in a command or log line is plain text,
    never something a reader (or a check for external URLs) takes for a link."""
    return html.escape(str(value)).replace("://", ":&#47;&#47;")


def notable_lines(workdir: Path, stage: str, limit: int | None = None) -> list[str]:
    """WARN/SEVERE/ERROR lines of the stage's log and its CASA logs, minus the harmless ones
    (``failures.ignore``), at most ``limit`` (``products.weblog-log-lines``)."""
    ignore = [re.compile(p) for p in config.get("failures.ignore")]
    limit = int(limit or config.get("products.weblog-log-lines"))
    logs = [workdir / "log" / f"{stage}.log",
            *sorted((workdir / "log").glob(f"casa-{stage}-*.log"))]
    found: list[str] = []
    for path in logs:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if NOTABLE.search(line) and not any(p.search(line) for p in ignore):
                found.append(f"{path.name}: {line.strip()}")
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


def data_uri(png: Path) -> str:
    """A PNG as a data: URI (the weblog fetches nothing)."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _imaging(workdir: Path, key: str) -> str:
    """One item of how the images were made (image/products.json), or 'unknown'."""
    try:
        made = json.loads((workdir / "image" / "products.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    return str((made.get("imaging") or {}).get(key, "unknown"))


def _products_html(workdir: Path, record: dict) -> str:
    """The stage's output files; a FITS product's preview image beside it."""
    rows, outputs = [], sorted((record.get("outputs") or {}).items())
    shown = int(config.get("products.weblog-max-files"))
    for rel, size in outputs[:shown]:
        # A product's preview is in preview/; a moment map's beside it in moments/.
        png = next((p for p in (workdir / "preview" / f"{Path(rel).stem}.png",
                                workdir / Path(rel).with_suffix(".png")) if p.is_file()),
                   workdir / "preview" / f"{Path(rel).stem}.png")
        image = (f'<img alt="preview of {_e(Path(rel).name)}" src="{data_uri(png)}">'
                 if rel.endswith(".fits") and png.is_file() else "")
        rows.append(f"<tr><td>{_e(rel)}</td><td>{size:,}</td><td>{image}</td></tr>")
    if not rows:
        return "<p>no output files</p>"
    more = f"<p>... and {len(outputs) - shown} more file(s)</p>" if len(outputs) > shown else ""
    return ("<table><tr><th>file</th><th>bytes</th><th>preview</th></tr>"
            + "".join(rows) + "</table>" + more)


def _score_html(score: StageScore) -> str:
    items = "".join(f'<li class="{"ok" if r.startswith("ok") else "fail"}">{_e(r)}</li>'
                    for r in score.reasons)
    return f"<p>score <b>{score.value:.2f}</b></p><ul>{items}</ul>"


def _stage_html(workdir: Path, stage: str, score: StageScore) -> str:
    record = read_checkpoint(workdir, stage) or {}
    command = record.get("command")
    facts = [("command", shlex.join(command) if command else "not recorded"),
             ("wall time", f"{record['wall_s']:.1f} s" if "wall_s" in record else "-"),
             ("CPU time", f"{record['cpu_s']:.1f} s" if "cpu_s" in record else "-"),
             ("peak memory", f"{record['peak_rss'] / 1e6:.0f} MB"
              if record.get("peak_rss") else "-")]
    if stage in CASA_STAGES:
        facts.insert(1, ("CASA version", _imaging(workdir, "casa")))
    if stage == "image":
        facts.insert(2, ("effective bandwidth from", _imaging(workdir, "bandwidth")))
        facts.insert(3, ("cleaning threshold", _imaging(workdir, "threshold")))
    table = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in facts)
    lines = notable_lines(workdir, stage)
    log_html = (f"<pre>{_e(chr(10).join(lines))}</pre>" if lines
                else "<p>no warnings or errors in its logs</p>")
    return (f'<section id="stage-{_e(stage)}"><h2>{_e(stage)}</h2>{_score_html(score)}'
            f"<table>{table}</table><h3>log lines that matter</h3>{log_html}"
            f"<h3>products</h3>{_products_html(workdir, record)}</section>")


def _ariqa_html(workdir: Path) -> str:
    path = workdir / "qa" / "ariqa.ecsv"
    if not path.is_file():
        return "<p>no ARIQA table (the qa stage did not run)</p>"
    table = Table.read(path, format="ascii.ecsv")
    head = "".join(f"<th>{_e(c)}</th>" for c in table.colnames)
    body = "".join("<tr>" + "".join(f"<td>{_e(row[c])}</td>" for c in table.colnames) + "</tr>"
                   for row in table)
    verdicts = sorted(set(str(v) for v in table["verdict"])) if "verdict" in table.colnames \
        else []
    return (f"<p>verdicts: <b>{_e(', '.join(verdicts) or 'none')}</b></p>"
            f"<table><tr>{head}</tr>{body}</table>")


def render(workdir: Path, uid: str, scores: dict[str, StageScore], decision: str,
           packaged: bool) -> str:
    """The weblog's HTML."""
    summary = "".join(
        f'<tr><td><a href="#stage-{_e(s)}">{_e(s)}</a></td><td>{v.value:.2f}</td>'
        f'<td>{_e("; ".join(v.failed) or "all checks passed")}</td></tr>'
        for s, v in scores.items())
    colour = "#2e7d32" if packaged else "#c62828"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>weblog {_e(uid)}</title><style>{STYLE}</style></head><body>"
            f"<h1>MOUS {_e(uid)}</h1><p>arihpc {_e(arihpc.__version__)} · written {stamp} · "
            f"minimum stage score {float(config.get('products.min-stage-score')):.2f}</p>"
            f'<p class="decision" style="border-color:{colour}">{_e(decision)}</p>'
            f"<h2>stage scores</h2><table><tr><th>stage</th><th>score</th><th>failed checks"
            f"</th></tr>{summary}</table>"
            + "".join(_stage_html(workdir, s, v) for s, v in scores.items())
            + f'<section id="ariqa"><h2>ARIQA</h2>{_ariqa_html(workdir)}</section>'
            "</body></html>\n")


def write_weblog(workdir: Path, uid: str, scores: dict[str, StageScore], decision: str,
                 packaged: bool, into: Path) -> Path:
    """Write ``into/weblog/index.html`` atomically (temp file, fsync, rename); its path."""
    target = Path(into) / WEBLOG
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render(Path(workdir), uid, scores, decision, packaged))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_path(target.parent)
    return target

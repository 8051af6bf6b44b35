"""The dashboard and the report in real headless Chromium (Debian chromium + chromedriver)."""
import contextlib
import io
import json
import re
import subprocess
import sys
import time

import dask.config
import pytest
from helpers import import_sizes, run
from test_campaign import CONFIG_FILE, SETTINGS, campaign, ci_slurm_site, orchestrate
from test_campaign import site_profile as local_site

from arihpc.store.campaign import CampaignStore

pytestmark = pytest.mark.browser

# For each Bokeh figure (a div with data-root-id): how many of its canvases have pixels drawn
# that are neither transparent nor white. Bokeh renders inside shadow roots, so walk them.
DRAWN_PER_FIGURE = """
const canvases = (node, found = []) => {
  if (node.tagName === 'CANVAS') found.push(node);
  if (node.shadowRoot) canvases(node.shadowRoot, found);
  for (const child of node.children || []) canvases(child, found);
  return found;
};
const drawn = (canvas) => {
  if (!canvas.width || !canvas.height) return 0;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && (data[i] < 235 || data[i + 1] < 235 || data[i + 2] < 235)) count++;
  }
  return count;
};
return [...document.querySelectorAll('[data-root-id]')].map(
  (div) => Math.max(0, ...canvases(div).map(drawn)));
"""


@contextlib.contextmanager
def chromium(offline: bool = False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1300,2400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        if offline:
            driver.set_network_conditions(offline=True, latency=0, download_throughput=0,
                                          upload_throughput=0)
        yield driver
    finally:
        driver.quit()


def rendered(driver, figures: int, timeout: float = 60) -> list[int]:
    """Wait until ``figures`` Bokeh figures have drawn pixels; returns the counts per figure."""
    deadline = time.time() + timeout
    while True:
        counts = driver.execute_script(DRAWN_PER_FIGURE)
        if (len(counts) == figures and all(counts)) or time.time() > deadline:
            return counts
        time.sleep(0.5)


def not_blank(png: bytes) -> float:
    """Share of the screenshot's pixels that are not (near) white."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return float((pixels < 235).mean())


def table(driver, css: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in driver.find_elements(By.CSS_SELECTOR, f"table.{css} tbody tr")]


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i|%j|%T"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return sorted(line.split("|")[0] for line in out.splitlines()
                  if line.split("|")[1].startswith("arihpc-ci-slurm-")
                  and line.split("|")[2] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"))


def store_counts(store: CampaignStore) -> dict[str, int]:
    from arihpc.monitor import views

    numbers = views.read_numbers(store).progress("ci-slurm")
    return {k: v for k, v in numbers.items() if k != "failed_by_class"}


@pytest.mark.slurm
def test_site_page_shows_the_store_the_batch_jobs_and_drawn_plots(tmp_path):
    url, uids = campaign(tmp_path, 6)
    import_sizes(url, tmp_path, {u: 2_000_000_000 for u in uids})
    path = ci_slurm_site(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG_FILE)
    campaign_run = subprocess.Popen(
        [sys.executable, "-m", "arihpc.cli", "--store", url, "--config", str(tmp_path / "c.yaml"),
         "run", "--site", str(path), "--payload", "emulator",
         "--payload-options", json.dumps({"cpu-s-per-gb": 1.5})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    dashboard = subprocess.Popen([sys.executable, "-m", "arihpc.cli", "--store", url, "dashboard",
                                  "--site", str(path), "--port", "0", "--refresh", "3"],
                                 stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    store = CampaignStore.open(url)
    try:
        address = re.search(r"(http://\S+)", dashboard.stderr.readline()).group(1)
        # wait for a MOUS whose running stage its worker reports to the scheduler
        deadline = time.time() + 180
        live = []
        while time.time() < deadline and campaign_run.poll() is None:
            site = json.loads(urlopen(f"{address}api/site/ci-slurm"))
            live = [m for m in site["now"]["running"] if m["stage"] and m["peak_rss_gb"]]
            if live and site["now"]["jobs"]:
                break
            time.sleep(1)
        assert live, "no running stage reached the dashboard: " + (
            campaign_run.stderr.read()[-3000:] if campaign_run.poll() is not None else "")
        with chromium() as driver:
            # The campaign moves on: compare at a quiet moment, with a stage running (a MOUS
            # just sent to a worker, or between two stages, shows none for a moment).
            for _ in range(20):
                before, jobs_before = store_counts(store), squeue_ids()
                driver.get(f"{address}site/ci-slurm")
                shown = {row[0]: int(row[1]) for row in table(driver, "progress")}
                jobs = sorted(row[0] for row in table(driver, "jobs"))
                running = table(driver, "running")
                staged = any(row[2] in ("fetch", "restore", "image", "export")
                             and re.fullmatch(r"[\d.,]+ [kMGT]B", row[6]) for row in running)
                if before == store_counts(store) and jobs_before == squeue_ids() and jobs \
                        and staged:
                    break
                time.sleep(0.5)
            assert {k: shown.get(k) for k in before} == before
            assert jobs == jobs_before and jobs
            assert running and staged, running
            counts = rendered(driver, 10)           # workers, the site's five, ARIQA's four
            assert len(counts) == 10 and all(counts), counts
            share = not_blank(driver.get_screenshot_as_png())
            assert share > 0.03, f"screenshot nearly blank: {share:.3f} of pixels drawn"
            assert "dask dashboard" in driver.page_source
        assert campaign_run.wait(300) == 0, campaign_run.stderr.read()[-3000:]
        assert store.status()["states"] == {"done": 6}
    finally:
        for process in (campaign_run, dashboard):
            if process.poll() is None:
                process.terminate()
                process.wait(60)


def urlopen(address: str) -> str:
    import urllib.request

    with urllib.request.urlopen(address, timeout=30) as response:
        return response.read().decode()


def test_the_report_opens_offline_with_every_figure_drawn(tmp_path):
    url, uids = campaign(tmp_path, 4)
    import_sizes(url, tmp_path, {u: (i + 1) * 200_000_000 for i, u in enumerate(uids)})
    profile = local_site(tmp_path, "  one: {cores: 1, memory: 2GB, slots: 2}\n", max_jobs=1)
    with dask.config.set(SETTINGS):
        orchestrate(url, profile, {"cpu-s-per-gb": 0.02})
    out = tmp_path / "report.html"
    assert run(url, "report", "--out", out, "--site", profile.path).exit_code == 0
    figures = out.read_text().count("data-root-id")
    assert figures == 9                         # the campaign's 5, ARIQA's 4
    with chromium(offline=True) as driver:
        driver.get(out.as_uri())
        counts = rendered(driver, figures)
        assert len(counts) == figures and all(counts), counts
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched == []                        # nothing loaded from anywhere
        assert "Run time against raw size (4 MOUS done)" in driver.page_source
        assert not_blank(driver.get_screenshot_as_png()) > 0.03


# Each Bokeh axis of the page with the labels it draws (tick labels are drawn on a canvas:
# read them from BokehJS's axis views), but datetime and categorical axes.
AXIS_LABELS = """
const found = [];
for (const root of Bokeh.index) {
  for (const view of root.renderer_views?.values() ?? []) {
    const type = view.model.type;
    if (!type.endsWith('Axis') || type === 'DatetimeAxis' || type === 'CategoricalAxis') continue;
    const ticks = view.tick_coords.major[view.dimension];
    const labels = view.compute_labels(ticks);
    found.push([root.model.title?.text ?? '', view.model.axis_label ?? '',
                (labels.items ?? [...labels]).map((label) => label.text)]);
  }
}
return found;
"""
NUMBER = re.compile(r"(?<![\w.])[-−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")
UNITS = {"ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}


def below_a_hundredth(texts: list[str]) -> list[str]:
    """The texts that show a number other than 0 below 0.01 (0.00 counts as one)."""
    found = []
    for text in texts:
        for number in NUMBER.findall(text):
            value = abs(float(number.replace(",", "").replace("−", "-")))
            if value < 0.01 and (value > 0 or "." in number):
                found.append(text)
    return found


def seconds(text: str) -> float | None:
    """'1.23 min' -> 73.8; '-' -> None."""
    if text == "-":
        return None
    number, unit = text.split()
    return float(number.replace(",", "")) * UNITS[unit]


def column(driver, name: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR,
                                                       f"table.mous tbody td.{name}")]


@pytest.mark.casa
def test_the_demo_report_sorts_loads_its_thumbnails_and_shows_no_value_below_0_01(
        tmp_path_factory):
    from selenium.webdriver.common.by import By
    from test_report import demo_report

    report = demo_report(tmp_path_factory)
    html = report.read_text()
    start = html.index('<table class="mous"')
    rows = re.findall(r"<tr>(.*?)</tr>", html[start:html.index("</table>", start)])
    written = [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
               for row in rows]
    with chromium(offline=True) as driver:
        driver.get(report.as_uri())
        counts = rendered(driver, html.count("data-root-id"))
        assert all(counts), counts
        # the page's script draws the rows as the report wrote them (units mirrored in JS)
        shown = table(driver, "mous")
        assert len(shown) == 12 and shown == [row for row in written if row]
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="run_time"] a').click()
        ran = [seconds(t) for t in column(driver, "run_time")]
        assert ran[:6] == sorted(ran[:6]) and ran[6:] == [None] * 6, ran
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="run_time"] a').click()
        ran = [seconds(t) for t in column(driver, "run_time")]
        assert ran[:6] == sorted(ran[:6], reverse=True) and ran[6:] == [None] * 6, ran
        assert driver.find_element(By.CSS_SELECTOR, 'th[data-key="run_time"]'
                                   ).get_attribute("aria-sort") == "descending"
        loaded = driver.execute_script(
            "return [...document.querySelectorAll('.gallery img')].map("
            "(img) => img.complete ? img.naturalWidth : 0)")
        assert len(loaded) == 6 and all(width > 0 for width in loaded), loaded
        axes = driver.execute_script(AXIS_LABELS)
        assert len(axes) >= 10 and all(labels for _, _, labels in axes[:4]), axes
        assert below_a_hundredth([label for *_, labels in axes for label in labels]) == []
        cells = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "td")
                 if not {"uid", "project", "source", "why"} & set(
                     (cell.get_attribute("class") or "").split())]
        assert len(cells) > 100 and below_a_hundredth(cells) == []
        folder = tmp_path_factory.getbasetemp() / "screenshots"
        folder.mkdir(exist_ok=True)
        driver.set_window_size(1300, driver.execute_script("return document.body.scrollHeight"))
        png = driver.get_screenshot_as_png()
        (folder / "report.png").write_bytes(png)
        assert not_blank(png) > 0.03

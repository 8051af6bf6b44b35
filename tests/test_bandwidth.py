"""Effective bandwidth -> expected noise -> tclean threshold (arihpc.payloads.bandwidth): the
rules by cycle, the observing-tool file of cycle 2, and real CASA measurement sets whose
EFFECTIVE_BW is rewritten to show the threshold follows it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from arihpc.payloads import bandwidth
from arihpc.payloads.bandwidth import SpwObservation

DATA = Path(__file__).parent / "data"
AOT = DATA / "cycle2-project.aot"
UID = "uid://A001/X1b0/X3"


def _spw(spw: int, start_ghz: float, nchan: int, column: float | None = 15.625e6):
    width = 15.625e6
    return SpwObservation(spw, start_ghz * 1e9 + width * (nchan - 1) / 2, nchan, width, column,
                          1e5, 2, 12.0)


SPWS = {0: _spw(0, 230, 4), 1: _spw(1, 232, 8)}


def test_noise_follows_one_over_the_root_of_the_effective_bandwidth():
    full = bandwidth.expected_noise_jy(15.625e6, 1e5, 2, 230e9, 12)
    half = bandwidth.expected_noise_jy(15.625e6 / 2, 1e5, 2, 230e9, 12)
    assert half / full == pytest.approx(math.sqrt(2))
    assert bandwidth.threshold_jy(full) == pytest.approx(3 * full)
    # A higher band has a higher Tsys, so more noise in the same bandwidth.
    assert bandwidth.expected_noise_jy(15.625e6, 1e5, 2, 345e9, 12) > full


@pytest.mark.parametrize("ghz, band", [(100, 3), (145, 4), (230, 6), (345, 7), (460, 8),
                                       (690, 9), (80, 2), (118, 3)])
def test_band_of_a_frequency(ghz, band):
    assert bandwidth.band_of(ghz * 1e9) == band


def test_cycle_three_and_later_read_effective_bw_of_the_measurement_set():
    widths = bandwidth.effective_bandwidth({0: _spw(0, 230, 4, column=7e6)}, 4, [])
    assert widths.per_channel_hz == {0: 7e6}
    assert widths.source == "EFFECTIVE_BW of the measurement set"


def test_the_observing_tool_file_gives_cycle_two_its_effective_bandwidth(tmp_path):
    assert bandwidth.read_aot_windows(AOT) == [(230.0234375e9, 31.25e6, 4),
                                               (232.0546875e9, 62.5e6, 8)]
    shutil.copy(AOT, tmp_path)
    widths = bandwidth.effective_bandwidth(SPWS, 2, [None, tmp_path])
    assert widths.per_channel_hz == {0: 7.8125e6, 1: 7.8125e6}
    assert widths.source == "observing-tool file cycle2-project.aot (effectiveBandwidth)"


def test_cycle_two_without_an_observing_tool_file_falls_back_and_says_so(tmp_path):
    widths = bandwidth.effective_bandwidth(SPWS, 2, [tmp_path])
    assert widths.per_channel_hz == {0: 15.625e6, 1: 15.625e6}
    assert widths.source == "nominal CHAN_WIDTH (cycle 2, no .aot beside the raw data)"
    missing = bandwidth.effective_bandwidth({0: _spw(0, 230, 4, column=None)}, 5, [])
    assert missing.source == "nominal CHAN_WIDTH (the measurement set has no EFFECTIVE_BW)"


def test_an_observing_tool_file_for_other_frequencies_falls_back(tmp_path):
    shutil.copy(AOT, tmp_path)
    widths = bandwidth.effective_bandwidth({0: _spw(0, 345, 4)}, 2, [tmp_path])
    assert widths.source.startswith("nominal CHAN_WIDTH (cycle2-project.aot has no window")


def test_a_broken_observing_tool_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.aot").write_text("not a zip")
    with pytest.raises(bandwidth.BandwidthError, match="not an observing-tool file"):
        bandwidth.read_aot_windows(tmp_path / "bad.aot")
    with zipfile.ZipFile(tmp_path / "short.aot", "w") as z:
        z.writestr("SchedBlock0.xml", "<SchedBlock><BLSpectralWindow><centerFrequency "
                   "unit='GHz'>230</centerFrequency></BLSpectralWindow></SchedBlock>")
    with pytest.raises(bandwidth.BandwidthError, match="without centerFrequency, effectiveBand"):
        bandwidth.read_aot_windows(tmp_path / "short.aot")


def test_a_continuum_image_combines_its_spws():
    widths = bandwidth.EffectiveBandwidth({0: 15.625e6, 1: 15.625e6}, "test")
    cube = bandwidth.image_noise(SPWS, widths, [0])
    cont = bandwidth.image_noise(SPWS, widths, [0, 1])
    assert cont["effective_bw_hz"] == pytest.approx(12 * 15.625e6)
    assert cube["threshold_jy"] / cont["threshold_jy"] == pytest.approx(math.sqrt(12), rel=1e-3)
    assert cont["bandwidth_source"] == "test"


# ---- real CASA ----------------------------------------------------------------------------

PROBE = """
import json, sys
from pathlib import Path
from arihpc.payloads import casa_config
casa_config.activate(Path(sys.argv[1]), "probe")
import casatools
from arihpc.payloads import bandwidth
ms = sys.argv[2]
if len(sys.argv) > 3:           # rewrite EFFECTIVE_BW of every spw to this many Hz
    tb = casatools.table()
    tb.open(ms + "/SPECTRAL_WINDOW", nomodify=False)
    for row in range(tb.nrows()):
        cell = tb.getcell("EFFECTIVE_BW", row)
        cell[:] = float(sys.argv[3])
        tb.putcell("EFFECTIVE_BW", row, cell)
    tb.close()
observed = bandwidth.observe([ms])
widths = bandwidth.effective_bandwidth(observed, 4, [])
print(json.dumps({str(s): bandwidth.image_noise(observed, widths, [s]) for s in observed}))
"""


def _casa(stage: str, workdir: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, "-m", "arihpc.payloads.casa_stages", stage,
                           "--workdir", str(workdir), "--uid", UID, *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"


def _probe(workdir: Path, ms: Path, *rewrite: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(workdir), str(ms), *rewrite],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def restored(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("bandwidth") / "mous"
    _casa("simulate", workdir, "--duration-s", "60", "--spw", "230:4", "--spw", "232:8")
    (workdir / "fetch").mkdir()
    shutil.copy(next((workdir / "raw").glob("*.tar")), workdir / "fetch")
    _casa("restore", workdir)
    return workdir


@pytest.mark.casa
def test_the_threshold_changes_with_effective_bw_of_a_real_measurement_set(restored, tmp_path):
    ms = next((restored / "restore").glob("*.ms"))
    nominal = _probe(tmp_path / "a", ms)
    assert nominal["0"]["effective_bw_hz"] == 15.625e6       # what CASA's simulator writes
    assert nominal["0"]["bandwidth_source"] == "EFFECTIVE_BW of the measurement set"
    copy = tmp_path / ms.name
    shutil.copytree(ms, copy)
    halved = _probe(tmp_path / "b", copy, str(15.625e6 / 2))
    for spw in ("0", "1"):
        assert halved[spw]["effective_bw_hz"] == 15.625e6 / 2
        assert halved[spw]["threshold_jy"] / nominal[spw]["threshold_jy"] == \
            pytest.approx(math.sqrt(2))


@pytest.mark.casa
def test_tclean_cleans_to_the_threshold_of_the_effective_bandwidth(restored):
    shutil.copy(AOT, restored / "fetch")       # a cycle 2 MOUS with its observing-tool file
    _casa("image", restored, "--project", "2013.1.00001.S", "--niter", "10")
    made = json.loads((restored / "image" / "products.json").read_text())
    assert made["imaging"]["bandwidth"] == \
        "observing-tool file cycle2-project.aot (effectiveBandwidth)"
    cube = next(i for i in made["images"] if i["spws"] == [0])
    assert cube["effective_bw_hz"] == 7.8125e6
    log = "".join(p.read_text() for p in (restored / "log").glob("casa-image-*.log"))
    assert f"threshold='{cube['threshold_jy']:.6g}Jy'" in log

"""Line detection and moment maps (arihpc.products.lines) on cubes shaped like CASA's
exportfits output: a line at a known channel is found there, a cube without one says so,
the moment maps pass fitsverify and carry HISTORY."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from fits_images import casa_header, fitsverify, write_image

from arihpc.products import lines

NCHAN, LINE_CHANNELS = 16, [6, 7, 8]


def _cube(path: Path, with_line: bool, seed: int = 3) -> Path:
    header = casa_header(nx=96, ny=96, nchan=NCHAN, freq_hz=232e9)
    # A 1 Jy continuum source everywhere, and in three channels a line of up to 0.5 Jy.
    data = write_image(path, header, noise=0.002, source_jy=1.0, seed=seed)
    if with_line:
        for channel, peak in zip(LINE_CHANNELS, (0.25, 0.5, 0.25)):
            data[0, channel, 48 - 9, 48] += peak           # 3 arcsec south, as simulated
        fits.writeto(path, data, header, overwrite=True)
    return path


def test_a_line_is_found_at_its_channel_with_its_peak_and_width(tmp_path):
    cube = lines.read_cube(_cube(tmp_path / "a.cube.I.pbcor.fits", True))
    found = lines.find_lines(cube, 8)
    assert len(found) == 1
    line = found[0]
    freq_of = 232e9 + np.arange(NCHAN) * 15.625e6
    assert abs(line.freq_hz - freq_of[7]) < 15.625e6 / 2
    assert line.channels == tuple(LINE_CHANNELS)
    assert line.peak == pytest.approx(0.5, abs=0.01)
    assert line.width_hz == 3 * 15.625e6 and (line.y, line.x) == (39, 48)
    assert cube.rms == pytest.approx(0.002, rel=0.2)


def test_a_cube_without_a_line_gets_a_line_list_that_says_so(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    made = lines.analyse_cube(_cube(tmp_path / "b.cube.I.pbcor.fits", False), out)
    assert made["found"] == 0 and made["moments"] == []
    table = Table.read(out / made["lines"], format="ascii.ecsv")
    assert len(table) == 0 and table.meta["comment"].startswith("no line above 8 sigma")
    assert sorted(p.name for p in out.iterdir()) == ["b.cube.I.lines.ecsv"]


def test_the_threshold_is_configurable(tmp_path):
    cube = lines.read_cube(_cube(tmp_path / "c.cube.I.pbcor.fits", True))
    assert [ln.channels for ln in lines.find_lines(cube, 8)] == [(6, 7, 8)]
    assert [ln.channels for ln in lines.find_lines(cube, 200)] == [(7,)]
    assert lines.find_lines(cube, 1000) == []
    with dask.config.set({"arihpc.products.line-sigma": 1000}):
        out = tmp_path / "out"
        out.mkdir()
        assert lines.analyse_cube(cube.path, out)["found"] == 0


def test_moment_maps_pass_fitsverify_and_say_how_they_were_made(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    made = lines.analyse_cube(_cube(tmp_path / "d.cube.I.pbcor.fits", True), out)
    assert made["moments"] == [f"d.cube.I.{m}.fits" for m in ("mom0", "mom1", "mom8")]
    for name, unit in zip(made["moments"], ("Jy/beam.km/s", "km/s", "Jy/beam")):
        fitsverify(out / name)
        with fits.open(out / name) as hdul:
            header, data = hdul[0].header, hdul[0].data
        assert header["BUNIT"] == unit and data.shape == (1, 1, 96, 96)
        assert header["BMAJ"] > 0 and header["CTYPE3"] == "FREQ"
        history = "".join(str(h) for h in header["HISTORY"])    # cards wrap anywhere
        assert "d.cube.I.pbcor.fits" in history and "channels 6-8" in history
    mom8 = fits.getdata(out / made["moments"][2])[0, 0]
    assert np.nanmax(mom8) == pytest.approx(0.5, abs=0.01)
    mom1 = fits.getdata(out / made["moments"][1])[0, 0]
    assert np.isfinite(mom1[39, 48]) and abs(mom1[39, 48]) < 15.625e6 / 232e9 * 3e5
    table = Table.read(out / made["lines"], format="ascii.ecsv")
    assert table["width_km_s"][0] == pytest.approx(3 * 15.625e6 / table["freq_hz"][0] * 299792.458)


def test_the_moments_stage_writes_lists_maps_and_previews(tmp_path):
    workdir = tmp_path / "mous"
    (workdir / "export").mkdir(parents=True)
    _cube(workdir / "export" / "member.x.spw1.cube.I.pbcor.fits", True)
    _cube(workdir / "export" / "member.x.cont.I.pbcor.fits", False)
    (workdir / "export" / "products.json").write_text(
        '{"uid": "uid://A001/X1/X2", "products": ['
        '{"fits": "export/member.x.spw1.cube.I.pbcor.fits", "kind": "cube"},'
        '{"fits": "export/member.x.cont.I.pbcor.fits", "kind": "cont"}]}')
    done = subprocess.run([sys.executable, "-m", "arihpc.products.stages", "moments",
                           "--workdir", str(workdir), "--uid", "uid://A001/X1/X2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (workdir / "moments").iterdir())
    assert names == sorted(["products.json", "member.x.spw1.cube.I.lines.ecsv",
                            *(f"member.x.spw1.cube.I.{m}.{e}" for m in ("mom0", "mom1", "mom8")
                              for e in ("fits", "png"))])

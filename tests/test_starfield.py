"""The synthetic NEOSTED star fields (examples/neosted/starfield.py): real files in tmp_path,
read back with astropy, measured with the example Focus algorithm as the IOC would run it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ndflow.algorithm import Dimension, FrameInfo, Input, Params

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "neosted" / "starfield.py"
sys.path.insert(0, str(SCRIPT.parent))
import starfield  # noqa: E402

SMALL = {"shape": (256, 256), "stars": 30}
WHEN = datetime(2026, 11, 21, 22, 0, 0, tzinfo=timezone.utc)
KEYWORD_TYPES = {
    "DATE-OBS": str, "EXPTIME": float, "TELESCOP": str, "INSTRUME": str, "CAMERA": int,
    "CAMNAME": str, "OBJECT": str, "RA": float, "DEC": float, "FILTER": str, "GAIN": float,
    "RDNOISE": float, "CCD-TEMP": float, "AMBTEMP": float, "SEEING": float, "FOCUSPOS": float,
    "DEFOCUS": float, "PIXSCALE": float, "IMAGETYP": str,
}
INTEGER_BITPIX = {8: np.uint8, 16: np.uint16, 32: np.int32}
FLOAT_BITPIX = {-32: np.float32, -64: np.float64}


def load_focus():
    """The example algorithm file, imported from its path as the algorithm host does."""
    path = REPO / "examples" / "algorithms" / "focus.py"
    spec = importlib.util.spec_from_file_location("neosted_focus_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Focus


def measure(focus, path: Path) -> dict:
    """Read a written file back and run Focus.process on it with the inputs' defaults and the
    header keywords as attributes (what the FITS driver hands on)."""
    with fits.open(path) as hdus:
        image, header = hdus[0].data.copy(), hdus[0].header
    attributes = {key: value for key, value in header.items()
                  if key not in ("COMMENT", "HISTORY", "")}
    params = Params({d.attr: d.default for d in type(focus).declarations()
                     if isinstance(d, Input)})
    metadata = FrameInfo(unique_id=1, timestamp=0.0, epics_ts=(0, 0),
                         dims=(Dimension(image.shape[1]), Dimension(image.shape[0])),
                         dtype=image.dtype, color_mode="Mono", transform=np.eye(3))
    result = focus.process(image, params, attributes, metadata)
    assert result.message == ""
    return result.outputs


# 1. headers -------------------------------------------------------------------------------

def test_headers_carry_every_keyword_typed_with_a_comment(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a card too long for FITS would be truncated silently
        paths = starfield.write_series(tmp_path, cameras=3, defocus=[0.0, -1.5], seed=4,
                                       start=WHEN, cadence_s=30.0, **SMALL)
    assert len(paths) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam01", "cam02", "cam03"]
    for folder in tmp_path.iterdir():  # the atomic writer left no temporary file behind
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            p.name for p in paths if p.parent == folder)
    pointings = set()
    for path in paths:
        header = fits.getheader(path)
        assert header["SIMPLE"] is True and header["BITPIX"] == 16 and header["NAXIS"] == 2
        assert (header["NAXIS1"], header["NAXIS2"]) == (256, 256)
        for keyword, kind in KEYWORD_TYPES.items():
            assert type(header[keyword]) is kind, keyword
            assert header.comments[keyword].strip(), f"{keyword} has no comment"
        assert header["COMMENT"] or header["HISTORY"]
        assert (header["TELESCOP"], header["IMAGETYP"]) == ("NEOSTED", "LIGHT")

        name, sequence = path.name, int(path.name.split("_")[2].split(".")[0])
        camera = int(name[3:5])
        assert header["CAMERA"] == camera and 1 <= camera <= 16
        assert header["CAMNAME"] == name[:5] == f"CAM{camera:02d}"
        assert path.parent.name == header["CAMNAME"].lower()
        date_obs = datetime.fromisoformat(header["DATE-OBS"]).replace(tzinfo=timezone.utc)
        assert date_obs == WHEN + timedelta(seconds=30 * (sequence - 1))
        assert name == f"CAM{camera:02d}_{date_obs:%Y%m%dT%H%M%S}_{sequence:04d}.fits"
        assert header["DEFOCUS"] == [0.0, -1.5][sequence - 1]
        pointings.add((header["RA"], header["DEC"]))
        assert 0 <= header["RA"] < 360 and -90 <= header["DEC"] <= 90
    assert len(pointings) == 3  # each camera looks at its own part of the sky
    first, second = fits.getheader(paths[0]), fits.getheader(paths[3])
    assert second["FOCUSPOS"] < first["FOCUSPOS"]  # negative defocus: focuser moved inwards


# 2. pixels --------------------------------------------------------------------------------

@pytest.mark.parametrize("bitpix", [8, 16, 32, -32, -64])
def test_pixels_read_back_as_the_quantised_image(tmp_path, bitpix):
    path = starfield.write_starfield(tmp_path / "frame.fits", camera=5, defocus=1.0, seed=3,
                                     date_obs=WHEN, bitpix=bitpix, **SMALL)
    expected = starfield.quantise(starfield.star_field(defocus=1.0, seed=3, **SMALL), bitpix)
    dtype = {**INTEGER_BITPIX, **FLOAT_BITPIX}[bitpix]
    assert expected.dtype == dtype
    with fits.open(path) as hdus:
        header, data = hdus[0].header, hdus[0].data
        assert header["BITPIX"] == bitpix
        assert data.dtype.kind == np.dtype(dtype).kind
        assert data.dtype.itemsize == np.dtype(dtype).itemsize
        assert np.array_equal(data, expected)
    if bitpix == 16:  # stored the FITS way: signed 16-bit plus BZERO 32768
        with fits.open(path, do_not_scale_image_data=True) as hdus:
            raw = hdus[0]
            assert (raw.header["BZERO"], raw.header["BSCALE"]) == (32768, 1)
            assert raw.data.dtype == np.dtype(">i2")
            assert np.array_equal(raw.data.astype(np.int32) + 32768, expected)
    sky_adu = np.median(expected)
    gain = fits.getheader(path)["GAIN"]
    assert gain == (16.0 if bitpix == 8 else 1.0)
    assert abs(sky_adu * gain - 400) < 20  # the sky level, in electrons, whatever the ADU


def test_bright_stars_are_bright_but_not_saturated_in_focus():
    for seed in range(5):
        image = starfield.quantise(starfield.star_field(defocus=0.0, seed=seed), 16)
        assert 10_000 < image.max() < 65535


# 3. tile compression ----------------------------------------------------------------------

@pytest.mark.parametrize("bitpix", [8, 16, 32, -32, -64])
def test_fits_fz_holds_the_same_pixels_in_hdu_1(tmp_path, bitpix):
    plain = starfield.write_starfield(tmp_path / "a.fits", camera=2, defocus=2.0, seed=8,
                                      date_obs=WHEN, bitpix=bitpix, **SMALL)
    packed = starfield.write_starfield(tmp_path / "a.fits.fz", camera=2, defocus=2.0, seed=8,
                                       date_obs=WHEN, bitpix=bitpix, compress=True, **SMALL)
    assert packed.stat().st_size < plain.stat().st_size
    with fits.open(plain) as a, fits.open(packed) as b:
        assert len(b) == 2 and b[0].data is None
        assert isinstance(b[1], fits.CompImageHDU)
        assert b[1].data.dtype.kind == a[0].data.dtype.kind
        assert b[1].data.dtype.itemsize == a[0].data.dtype.itemsize
        assert np.array_equal(b[1].data, a[0].data)  # lossless
        assert b[1].header["CAMNAME"] == "CAM02" and b[1].header["DEFOCUS"] == 2.0
    with fits.open(packed, disable_image_compression=True) as raw:
        assert raw[1].header["ZCMPTYPE"] == ("RICE_1" if bitpix > 0 else "GZIP_2")


# 4. physics and the focus figure of merit -------------------------------------------------

def test_same_seed_same_image_and_frame_changes_only_the_noise():
    one = starfield.star_field(defocus=2.0, seed=11, **SMALL)
    assert np.array_equal(one, starfield.star_field(defocus=2.0, seed=11, **SMALL))
    other_frame = starfield.star_field(defocus=2.0, seed=11, frame=1, **SMALL)
    other_seed = starfield.star_field(defocus=2.0, seed=12, **SMALL)
    assert not np.array_equal(one, other_frame) and not np.array_equal(one, other_seed)
    model = starfield.model_field(defocus=2.0, seed=11, **SMALL)
    noise = 1.4826 * np.median(np.abs(one - model - np.median(one - model)))
    assert abs(noise - np.sqrt(400 + 5 ** 2)) < 2  # Poisson sky + read noise, nothing else
    assert np.std(one - other_frame) > 20  # independent noise


@pytest.mark.parametrize("defocus", [0.0, 0.5, 2.0, -2.0, 6.0])
def test_a_star_keeps_its_flux_and_position_and_widens_as_the_optics_say(defocus):
    shape, seeing, scale = (96, 96), 2.0, 1.2
    model = starfield.model_field(defocus=defocus, seed=5, shape=shape, stars=1, sky=0.0,
                                  seeing_arcsec=seeing, pixel_scale_arcsec=scale)
    (position,), (flux,) = starfield.star_catalogue(seed=5, shape=shape, stars=1, sky=0.0,
                                                    seeing_arcsec=seeing,
                                                    pixel_scale_arcsec=scale)
    y, x = np.indices(shape)
    total = model.sum()
    cy, cx = (model * y).sum() / total, (model * x).sum() / total
    assert total == pytest.approx(flux, rel=1e-9)
    assert (cy, cx) == pytest.approx(tuple(position), abs=1e-3)
    sigma = seeing / scale / 2.3548
    # per axis: seeing Gaussian + pixel width + uniform annulus (outer radius |defocus|, 0.3)
    variance = sigma ** 2 + 1 / 12 + defocus ** 2 * (1 + 0.3 ** 2) / 4
    assert (model * (y - cy) ** 2).sum() / total == pytest.approx(variance, rel=0.02)
    assert (model * (x - cx) ** 2).sum() / total == pytest.approx(variance, rel=0.02)


def test_focus_figure_of_merit_rises_strictly_with_defocus(tmp_path):
    focus = load_focus()()
    steps = [0, 1, 2, 3, 4, 6]
    outputs = []
    for step in steps:
        path = starfield.write_starfield(tmp_path / f"d{step}.fits", camera=7, defocus=step,
                                         seed=21, date_obs=WHEN, seeing_arcsec=2.5, sky=200.0,
                                         **SMALL)
        outputs.append(measure(focus, path))
    fwhm = [o["fwhm"] for o in outputs]
    hfd = [o["hfd"] for o in outputs]
    assert all(np.diff(fwhm) > 0), fwhm
    assert all(np.diff(hfd) > 0), hfd
    assert all(o["stars"] > 10 for o in outputs), [o["stars"] for o in outputs]
    assert all(o["temperature"] == -20.0 and o["seeing"] == 2.5 for o in outputs)
    sampled = np.sqrt((2.5 / 1.2 / 2.3548) ** 2 + 1 / 12) * 2.3548  # pixelised seeing FWHM
    assert fwhm[0] == pytest.approx(sampled, rel=0.25)
    ring_mean_radius = 2 / 3 * (1 - 0.3 ** 3) / (1 - 0.3 ** 2) * steps[-1]  # uniform annulus
    assert 0.8 < hfd[-1] / (2 * ring_mean_radius) < 1.3  # defocus is the blur radius in px


def test_hfd_rises_strictly_with_defocus_at_default_seeing_and_sky(tmp_path):
    focus = load_focus()()
    hfd = []
    for step in [0, 1, 2, 3, 4, 6]:
        path = starfield.write_starfield(tmp_path / f"d{step}.fits", defocus=step, seed=2,
                                         date_obs=WHEN, **SMALL)
        hfd.append(measure(focus, path)["hfd"])
    assert all(np.diff(hfd) > 0), hfd


# 5. command line --------------------------------------------------------------------------

def test_cli_writes_one_file_per_camera_and_defocus(tmp_path, capsys):
    code = starfield.main(["--out", str(tmp_path), "--cameras", "2", "--defocus", "0", "2",
                           "--size", "128", "128", "--stars", "10",
                           "--start", "2026-11-21T22:00:00"])
    assert code == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.fits")) == [
        "cam01/CAM01_20261121T220000_0001.fits", "cam01/CAM01_20261121T220030_0002.fits",
        "cam02/CAM02_20261121T220000_0001.fits", "cam02/CAM02_20261121T220030_0002.fits"]
    assert fits.getheader(tmp_path / "cam02/CAM02_20261121T220030_0002.fits")["DEFOCUS"] == 2.0
    assert "4 files" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["--cameras", "0"], ["--cameras", "17"], ["--bitpix", "12"], ["--defocus", "near"],
    ["--start", "yesterday"], ["--seed", "-1"], ["--size", "20", "20"], ["--colour", "red"],
])
def test_cli_bad_argument_is_one_line_and_non_zero(tmp_path, capsys, args):
    code = starfield.main(["--out", str(tmp_path)] + args)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("starfield.py: error: ") and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("*.fits"))


def test_cli_unwritable_output_names_it(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    assert starfield.main(["--out", str(blocker), "--cameras", "1"]) != 0
    err = capsys.readouterr().err
    assert str(blocker) in err and err.count("\n") == 1, err
    assert blocker.read_text() == "a file where the output folder should be"


def test_runs_as_a_script(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--cameras", "1",
                           "--defocus", "1", "--size", "64", "64", "--stars", "3",
                           "--compress", "--start", "2026-11-21T22:00:00"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "cam01" / "CAM01_20261121T220000_0001.fits.fz"
    with fits.open(path) as hdus:
        assert hdus[1].header["DEFOCUS"] == 1.0 and hdus[1].data.shape == (64, 64)

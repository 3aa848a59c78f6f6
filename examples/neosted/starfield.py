"""Synthetic NEOSTED star fields at a known defocus, written as the cameras' FITS files.

NEOSTED (ESA's Flyeye telescope) splits its field over 16 cameras that each upload FITS files.
These files stand in for them in ndflow's autofocus example, its tests and its demos: the true
defocus is known (header keyword DEFOCUS), so a focus algorithm can be checked against it.

Unit of defocus: the outer radius, in pixels, of the geometric blur disc, i.e. of the
defocused pupil image (an annulus: the central obstruction hides its middle). A focal-plane shift
dz at f-ratio N on pixels of pitch p gives a radius dz / (2 N p), so with the f/2 beam and 15 um
pixels assumed here one unit is a focuser move of MM_PER_DEFOCUS = 0.060 mm; FOCUSPOS in the
header is BEST_FOCUS_MM plus that move. The sign (inside or outside focus) only changes FOCUSPOS:
a geometric blur looks the same on both sides. defocus 0 gives the pure seeing Gaussian.

Counts are electrons and GAIN is 1 e-/ADU, except for BITPIX 8, where pixel values are electrons
divided by EPERADU_8BIT (GAIN says so) and bright stars saturate as on a real 8-bit sensor.

Files are named `CAM07_20261121T220000_0003.fits` (camera, DATE-OBS, sequence number) and
`write_series` puts each camera's files in its own subfolder, `folder/cam07/`. Every file is
written under a hidden temporary name in its final folder and then renamed, so a reader watching
the folder never sees half a file.

    python starfield.py --out /tmp/neosted --cameras 16 --defocus -4 -2 0 2 4
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from astropy.io import fits
from scipy import ndimage
from scipy.special import erf

CAMERAS = 16
MM_PER_DEFOCUS = 0.060  # focuser mm per px of blur radius: f/2 beam, 15 um pixels
BEST_FOCUS_MM = 12.500  # FOCUSPOS at best focus
OBSTRUCTION = 0.3  # central obstruction, as a fraction of the pupil diameter
GAIN = 1.0  # e-/ADU of the 16-bit, 32-bit and float files
EPERADU_8BIT = 16.0  # e- per ADU of 8-bit files: sky noise stays above 1 ADU
FULL_SCALE_16 = 65535.0
BRIGHTEST_FRACTION = 0.8  # the brightest star's peak, as a fraction of the 16-bit range
FLUX_RANGE = 10.0  # brightest / faintest star flux: all stars are worth measuring
FLUX_SLOPE = 0.6  # N(> flux) ~ flux ** -FLUX_SLOPE: many faint stars, few bright ones
BORDER = 16  # px kept free of star centres (the focus algorithm's box is 15 px)
OVERSAMPLE = 8  # sub-pixels per pixel on which a star's image is built
REFERENCE_EXPTIME_S = 10.0  # star fluxes are set for this exposure and scale with it
SURVEY_RA_DEG, SURVEY_DEC_DEG = 62.5, 18.0  # centre of the mosaic (a plausible survey field)
CAMERA_STEP_DEG = 1.65  # the 16 cameras tile a 4 x 4 mosaic of about 6.7 x 6.7 degrees
BITPIX_CHOICES = (8, 16, 32, -32, -64)


def star_field(*, defocus: float, seed: int = 0, shape: tuple[int, int] = (512, 512),
               stars: int = 60, seeing_arcsec: float = 1.5, pixel_scale_arcsec: float = 1.2,
               sky: float = 400.0, read_noise: float = 5.0, exptime_s: float = 10.0,
               frame: int = 0) -> np.ndarray:
    """A star field in electrons (float64): `model_field` plus Poisson and read noise, not
    quantised. `seed` fixes the stars; `frame` varies only the noise, so every frame of a focus
    series sees the same sky. `defocus` is the blur-disc radius in px (module docstring)."""
    _check_field(defocus, shape, stars, seeing_arcsec, pixel_scale_arcsec, sky, read_noise,
                 exptime_s)
    expected = model_field(defocus=defocus, seed=seed, shape=shape, stars=stars,
                           seeing_arcsec=seeing_arcsec, pixel_scale_arcsec=pixel_scale_arcsec,
                           sky=sky, exptime_s=exptime_s)
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, frame + 1]))
    image = noise_rng.poisson(expected).astype(np.float64)
    return image + noise_rng.normal(0.0, read_noise, shape)


def model_field(*, defocus: float, seed: int = 0, shape: tuple[int, int] = (512, 512),
                stars: int = 60, seeing_arcsec: float = 1.5, pixel_scale_arcsec: float = 1.2,
                sky: float = 400.0, exptime_s: float = 10.0) -> np.ndarray:
    """The expected electrons per pixel, without noise: sky plus the stars of
    `star_catalogue`, each rendered with the defocused PSF (flux conserved)."""
    _check_field(defocus, shape, stars, seeing_arcsec, pixel_scale_arcsec, sky, 0.0, exptime_s)
    sigma = seeing_arcsec / pixel_scale_arcsec / 2.3548
    positions, fluxes = star_catalogue(seed=seed, shape=shape, stars=stars,
                                       seeing_arcsec=seeing_arcsec,
                                       pixel_scale_arcsec=pixel_scale_arcsec, sky=sky,
                                       exptime_s=exptime_s)
    expected = np.full(shape, float(sky))
    for (y, x), flux in zip(positions, fluxes):
        _add_star(expected, y, x, flux, abs(defocus), sigma)
    return expected


def star_catalogue(*, seed: int = 0, shape: tuple[int, int] = (512, 512), stars: int = 60,
                   seeing_arcsec: float = 1.5, pixel_scale_arcsec: float = 1.2,
                   sky: float = 400.0, exptime_s: float = 10.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(positions (stars, 2) as (y, x) pixel centres, fluxes (stars,) in e-) of a seed's stars.

    Centres are at least BORDER px from the edges. Fluxes follow a power law (many faint, few
    bright) over a factor FLUX_RANGE; the top of the range is set so that, at the reference
    10 s, the brightest possible star peaks at 80 % of the 16-bit range when in focus (`sky` is
    the frame's sky level in e-/px, what its median shows), and fluxes scale with exptime_s."""
    rng = np.random.default_rng(np.random.SeedSequence([seed]))
    ny, nx = shape
    positions = rng.uniform((BORDER, BORDER), (ny - 1 - BORDER, nx - 1 - BORDER), (stars, 2))
    sigma = seeing_arcsec / pixel_scale_arcsec / 2.3548
    centre_fraction = erf(0.5 / (sigma * math.sqrt(2))) ** 2  # a star centred on a pixel
    brightest = BRIGHTEST_FRACTION * (FULL_SCALE_16 - sky) / centre_fraction
    low, high = (brightest / FLUX_RANGE) ** -FLUX_SLOPE, brightest ** -FLUX_SLOPE
    u = rng.uniform(0.0, 1.0, stars)  # inverse CDF of N(> f) ~ f^-a between the two limits
    fluxes = (low - u * (low - high)) ** (-1.0 / FLUX_SLOPE)
    return positions, fluxes * (exptime_s / REFERENCE_EXPTIME_S)


def _check_field(defocus: float, shape: tuple[int, int], stars: int, seeing_arcsec: float,
                 pixel_scale_arcsec: float, sky: float, read_noise: float,
                 exptime_s: float) -> None:
    """Refuse values that would give a silently wrong field, with a message naming the value."""
    if not math.isfinite(defocus):
        raise ValueError(f"defocus must be a finite number, not {defocus}")
    if len(shape) != 2 or min(shape) <= 2 * BORDER + 1:
        raise ValueError(f"shape {shape} too small: need 2 axes of more than {2 * BORDER + 1} px")
    if abs(defocus) > max(shape):  # the stamp would outgrow memory, not just the frame
        raise ValueError(f"defocus {defocus} px is larger than the frame {tuple(shape)}")
    if stars < 0:
        raise ValueError(f"stars must be >= 0, not {stars}")
    if seeing_arcsec <= 0 or pixel_scale_arcsec <= 0:
        raise ValueError("seeing_arcsec and pixel_scale_arcsec must be > 0")
    if sky < 0 or read_noise < 0 or exptime_s <= 0:
        raise ValueError("sky and read_noise must be >= 0 and exptime_s > 0")


def _add_star(image: np.ndarray, y: float, x: float, flux: float, radius: float,
              sigma: float) -> None:
    """Add one star: the pupil annulus of outer `radius` px convolved with the seeing Gaussian
    and integrated over pixels, built on a sub-pixel grid so the position may be fractional.
    Flux is conserved unless the stamp is cut by the frame edge."""
    half = int(math.ceil(abs(radius) + 5 * sigma + 2))
    iy, ix = int(round(y)), int(round(x))
    stamp = _psf_stamp(y - iy, x - ix, abs(radius), sigma, half) * flux
    y0, x0 = iy - half, ix - half
    ys = slice(max(y0, 0), min(y0 + stamp.shape[0], image.shape[0]))
    xs = slice(max(x0, 0), min(x0 + stamp.shape[1], image.shape[1]))
    image[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]


def _psf_stamp(dy: float, dx: float, radius: float, sigma: float, half: int) -> np.ndarray:
    """A (2 half + 1)^2 PSF summing to 1, centred at (half + dy, half + dx) in pixel-centre
    coordinates. The annulus is sampled by points on a sub-pixel lattice centred on the star
    (so its shape does not depend on the fractional position), deposited bilinearly."""
    os_ = OVERSAMPLE
    size = (2 * half + 1) * os_
    step = 1.0 / os_
    n = int(math.ceil(radius / step))
    offsets = np.arange(-n, n + 1) * step
    py, px = np.meshgrid(offsets, offsets, indexing="ij")
    r = np.hypot(py, px)
    inside = (r <= radius) & (r >= OBSTRUCTION * radius)
    if not inside.any():  # a point source (in focus, or a blur smaller than a sub-pixel)
        inside = r == 0
    # fine-grid coordinate t: sub-pixel j's centre is at t = j; pixel k spans [k os, (k+1) os)
    ty = (half + 0.5 + dy + py[inside]) * os_ - 0.5
    tx = (half + 0.5 + dx + px[inside]) * os_ - 0.5
    fine = np.zeros((size, size))
    jy, jx = np.floor(ty).astype(int), np.floor(tx).astype(int)
    fy, fx = ty - jy, tx - jx
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(fine, (np.clip(jy + oy, 0, size - 1), np.clip(jx + ox, 0, size - 1)),
                      wy * wx)
    fine = ndimage.gaussian_filter(fine, sigma * os_, mode="constant", truncate=5.0)
    stamp = fine.reshape(2 * half + 1, os_, 2 * half + 1, os_).sum(axis=(1, 3))
    return stamp / stamp.sum()


def quantise(image: np.ndarray, bitpix: int) -> np.ndarray:
    """The pixel array a camera writing this BITPIX would store (electrons in, ADU out).

    16 gives uint16 (astropy writes it the FITS way: BITPIX 16, BZERO 32768), 8 gives uint8 of
    electrons / EPERADU_8BIT, 32 gives int32, -32 float32 and -64 float64. Integers are rounded
    and clipped to the type's range, as an ADC saturates."""
    if bitpix == 16:
        return np.clip(np.rint(image / GAIN), 0, 65535).astype(np.uint16)
    if bitpix == 8:
        return np.clip(np.rint(image / EPERADU_8BIT), 0, 255).astype(np.uint8)
    if bitpix == 32:
        info = np.iinfo(np.int32)
        return np.clip(np.rint(image / GAIN), info.min, info.max).astype(np.int32)
    if bitpix == -32:
        return (image / GAIN).astype(np.float32)
    if bitpix == -64:
        return (image / GAIN).astype(np.float64)
    raise ValueError(f"bitpix must be one of {BITPIX_CHOICES}, not {bitpix}")


def camera_name(camera: int) -> str:
    """'CAM07' for camera 7: the prefix of its files and, in lower case, its folder."""
    _check_camera(camera)
    return f"CAM{camera:02d}"


def _check_camera(camera: int) -> None:
    if isinstance(camera, bool) or not isinstance(camera, (int, np.integer)) or \
            not 1 <= camera <= CAMERAS:
        raise ValueError(f"camera must be an integer from 1 to {CAMERAS}, not {camera!r}")


def camera_pointing(camera: int) -> tuple[float, float]:
    """(RA, Dec) in degrees of a camera's field centre: the 16 cameras tile a 4 x 4 mosaic."""
    _check_camera(camera)
    row, col = divmod(camera - 1, 4)
    dec = SURVEY_DEC_DEG + (row - 1.5) * CAMERA_STEP_DEG
    ra = SURVEY_RA_DEG + (col - 1.5) * CAMERA_STEP_DEG / math.cos(math.radians(dec))
    return ra % 360.0, dec


def focus_position(defocus: float) -> float:
    """FOCUSPOS (mm) of a frame taken at this defocus."""
    return round(BEST_FOCUS_MM + defocus * MM_PER_DEFOCUS, 4)


def header_for(*, camera: int, defocus: float, date_obs: datetime, exptime_s: float,
               seeing_arcsec: float, ambient_c: float, ccd_temp_c: float,
               focus_position: float, pixel_scale_arcsec: float = 1.2, gain: float = GAIN,
               read_noise: float = 5.0, sequence: int = 1, object_name: str = "NEO survey",
               filter_name: str = "CLEAR", seed: int | None = None) -> fits.Header:
    """The keywords a NEOSTED camera would write; astropy adds SIMPLE/BITPIX/NAXIS when the
    header goes with its data. A naive `date_obs` is taken as UTC. Every card has a comment,
    because the FITS driver shows comments as attribute descriptions."""
    _check_camera(camera)
    when = _utc(date_obs)
    ra, dec = camera_pointing(camera)
    header = fits.Header()
    cards = [
        ("DATE-OBS", when.isoformat(timespec="milliseconds").replace("+00:00", ""),
         "[UTC] start of exposure"),
        ("EXPTIME", float(exptime_s), "[s] exposure time"),
        ("TELESCOP", "NEOSTED", "ESA Flyeye telescope"),
        ("INSTRUME", "Flyeye camera array", "16 cameras share the telescope field"),
        ("CAMERA", int(camera), "camera number, 1 to 16"),
        ("CAMNAME", camera_name(camera), "camera name"),
        ("OBJECT", object_name, "target or survey field"),
        ("RA", round(ra, 5), "[deg] RA of this camera's field centre"),
        ("DEC", round(dec, 5), "[deg] Dec of this camera's field centre"),
        ("RADESYS", "ICRS", "reference frame of RA and DEC"),
        ("EQUINOX", 2000.0, "[yr] equinox of RA and DEC"),
        ("FILTER", filter_name, "filter in the beam"),
        ("GAIN", float(gain), "[e-/ADU] conversion gain"),
        ("RDNOISE", float(read_noise), "[e-] read noise"),
        ("CCD-TEMP", float(ccd_temp_c), "[C] CCD temperature"),
        ("AMBTEMP", float(ambient_c), "[C] ambient air temperature"),
        ("SEEING", float(seeing_arcsec), "[arcsec] seeing FWHM"),
        ("FOCUSPOS", float(focus_position), "[mm] focuser position"),
        ("DEFOCUS", float(defocus), "[px] true blur-disc radius (synthetic)"),
        ("PIXSCALE", float(pixel_scale_arcsec), "[arcsec/px] pixel scale"),
        ("IMAGETYP", "LIGHT", "frame type"),
        ("SEQNUM", int(sequence), "sequence number of this frame"),
    ]
    if seed is not None:
        cards.append(("SIMSEED", int(seed), "seed of the synthetic star field"))
    for keyword, value, comment in cards:
        header[keyword] = (value, comment)
    header["COMMENT"] = "Synthetic star field made by ndflow examples/neosted/starfield.py."
    header["HISTORY"] = f"PSF: seeing Gaussian convolved with a pupil annulus, obstruction " \
                        f"{OBSTRUCTION}."
    return header


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def file_name(camera: int, date_obs: datetime, sequence: int, compress: bool = False) -> str:
    """`CAM07_20261121T220000_0003.fits` (or `.fits.fz`): camera, DATE-OBS (UTC), sequence."""
    stamp = _utc(date_obs).strftime("%Y%m%dT%H%M%S")
    return f"{camera_name(camera)}_{stamp}_{sequence:04d}.fits" + (".fz" if compress else "")


def write_starfield(path: Path, *, camera: int = 1, defocus: float = 0.0, seed: int = 0,
                    date_obs: datetime | None = None, bitpix: int = 16, compress: bool = False,
                    sequence: int = 1, frame: int = 0, ambient_c: float = 8.0,
                    ccd_temp_c: float = -20.0, atomic: bool = True, **field_kw) -> Path:
    """Write one camera frame to `path` and return it; `field_kw` goes to `star_field`.

    `compress=True` writes a tile-compressed file (CompImageHDU, image in HDU 1, empty primary):
    RICE_1 for integer BITPIX; GZIP_2 without quantisation for float BITPIX, because RICE_1
    (like astropy's default for floats) quantises them and loses data. Both are lossless.
    `atomic=False` writes in place, for a test that wants a reader to meet a file still being
    written."""
    if bitpix not in BITPIX_CHOICES:
        raise ValueError(f"bitpix must be one of {BITPIX_CHOICES}, not {bitpix}")
    _check_camera(camera)
    path = Path(path)
    when = _utc(date_obs or datetime.now(timezone.utc))
    image = star_field(defocus=defocus, seed=seed, frame=frame, **field_kw)
    data = quantise(image, bitpix)
    field = {name: parameter.default for name, parameter
             in inspect.signature(star_field).parameters.items()} | field_kw  # what was used
    header = header_for(
        camera=camera, defocus=defocus, date_obs=when, exptime_s=field["exptime_s"],
        seeing_arcsec=field["seeing_arcsec"], ambient_c=ambient_c, ccd_temp_c=ccd_temp_c,
        focus_position=focus_position(defocus),
        pixel_scale_arcsec=field["pixel_scale_arcsec"],
        gain=EPERADU_8BIT if bitpix == 8 else GAIN, read_noise=field["read_noise"],
        sequence=sequence, seed=seed)
    if compress:
        kind = "RICE_1" if bitpix > 0 else "GZIP_2"  # quantize_level 0: GZIP keeps floats
        hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
            data, header, compression_type=kind, quantize_level=0.0)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(data, header)])
    _write(hdus, path, atomic)
    return path


def _write(hdus: fits.HDUList, path: Path, atomic: bool) -> None:
    """Write under a hidden temporary name beside `path`, then rename: readers see all or none."""
    if not atomic:
        with open(path, "wb") as out:
            hdus.writeto(out)
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(temporary, "wb") as out:
            hdus.writeto(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_series(folder: Path, *, cameras: int = 16, defocus: Sequence[float], seed: int = 0,
                 start: datetime | None = None, cadence_s: float = 30.0, bitpix: int = 16,
                 compress: bool = False, ambient_c: float = 8.0,
                 ambient_drift_c_per_h: float = -0.5, ccd_temp_c: float = -20.0,
                 **field_kw) -> list[Path]:
    """A focus series: for each defocus value in turn (one exposure every `cadence_s`), one
    frame from each of cameras 1..`cameras`, written to `folder/cam07/CAM07_..._0003.fits`
    (a subfolder per camera, created as needed). Each camera sees its own stars, the same in
    every frame of the series; only the noise changes. The ambient temperature drifts as on a
    cooling night. Returns the paths in the order written (time, then camera)."""
    if not 1 <= cameras <= CAMERAS:
        raise ValueError(f"cameras must be from 1 to {CAMERAS}, not {cameras}")
    if cadence_s < 0:
        raise ValueError(f"cadence_s must be >= 0, not {cadence_s}")
    begin = _utc(start or datetime.now(timezone.utc).replace(microsecond=0))
    folder = Path(folder)
    written = []
    for index, value in enumerate(defocus):
        when = begin + timedelta(seconds=index * cadence_s)
        hours = index * cadence_s / 3600.0
        for camera in range(1, cameras + 1):
            where = folder / camera_name(camera).lower()
            where.mkdir(parents=True, exist_ok=True)
            path = where / file_name(camera, when, index + 1, compress)
            written.append(write_starfield(
                path, camera=camera, defocus=float(value), seed=camera_seed(seed, camera),
                date_obs=when, bitpix=bitpix, compress=compress, sequence=index + 1,
                frame=index, ambient_c=round(ambient_c + ambient_drift_c_per_h * hours, 2),
                ccd_temp_c=ccd_temp_c, **field_kw))
    return written


def camera_seed(seed: int, camera: int) -> int:
    """The star-field seed of one camera in a series: each camera looks at other stars."""
    return int(np.random.SeedSequence([seed, camera]).generate_state(1)[0])


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage + exit
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="starfield.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder (camNN/ made in it)")
    parser.add_argument("--cameras", type=int, default=CAMERAS, help="cameras 1..N (max 16)")
    parser.add_argument("--defocus", type=float, nargs="+", default=[0.0],
                        help="blur-disc radii in px, one exposure each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=datetime.fromisoformat,
                        help="DATE-OBS of the first exposure, ISO (UTC); default now")
    parser.add_argument("--cadence", type=float, default=30.0, help="s between exposures")
    parser.add_argument("--bitpix", type=int, choices=BITPIX_CHOICES, default=16)
    parser.add_argument("--compress", action="store_true", help="write tile-compressed .fits.fz")
    parser.add_argument("--size", type=int, nargs=2, metavar=("NY", "NX"), default=(512, 512))
    parser.add_argument("--stars", type=int, default=60)
    parser.add_argument("--seeing", type=float, default=1.5, help="arcsec FWHM")
    parser.add_argument("--exptime", type=float, default=10.0, help="s")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: write a focus series; errors are one line on stderr and a non-zero code."""
    try:
        args = _parser().parse_args(argv)
        paths = write_series(args.out, cameras=args.cameras, defocus=args.defocus,
                             seed=args.seed, start=args.start, cadence_s=args.cadence,
                             bitpix=args.bitpix, compress=args.compress,
                             shape=tuple(args.size), stars=args.stars,
                             seeing_arcsec=args.seeing, exptime_s=args.exptime)
    except SystemExit as stop:  # --help
        return int(stop.code or 0)
    except (_UsageError, ValueError) as error:
        print(f"starfield.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"starfield.py: cannot write under {args.out}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

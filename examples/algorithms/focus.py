"""Focus figure of merit on a star field, NEOSTED style (needs scipy): median FWHM and half-flux
diameter (HFD) of the stars, for a focus loop or a strip chart. background = median(frame),
noise = 1.4826 * MAD; stars = 4-connected regions above background + DetectSigma * noise, not
touching the border, of >= MinPixels pixels, the MaxStars brightest. With f = frame - background
and r the distance from a star's centroid: FWHM = 2.3548 * sqrt((sxx + syy) / 2) from the second
moments of f in the (2 Box + 1)^2 box; HFD = 2 * sum(f * r) / sum(f) over f > 0, r <= Box.
Pixels of other detected stars in the box are left out. A Gaussian star of width sigma gives
FWHM ~ 2.355 sigma, HFD ~ 2.507 sigma; stars that blend into one region are measured as one.
"""

import numpy as np
from scipy import ndimage

from ndflow.algorithm import Alarm, Algorithm, Input, Output, Result, Status


class Focus(Algorithm):
    detect_sigma = Input(5.0, low=0, doc="detection threshold in noise sigmas above background")
    min_pixels = Input(5, low=1, units="px", doc="smaller regions are not stars")
    max_stars = Input(200, low=1, doc="the brightest stars kept")
    box = Input(15, low=2, units="px", doc="half-size of the measuring box")

    stars = Output(int, doc="stars measured")
    fwhm = Output(float, units="px", precision=2, alarm=Alarm(high=8.0, hihi=12.0))
    hfd = Output(float, units="px", precision=2, alarm=Alarm(high=10.0, hihi=15.0))
    background = Output(float, units="counts", precision=1)
    noise = Output(float, units="counts", precision=2)
    temperature = Output(float, units="C", precision=1, doc="attribute CCD-TEMP or AMBTEMP")
    seeing = Output(float, units="arcsec", precision=2, doc="attribute SEEING")

    def process(self, image, params, attributes, metadata):
        frame = (image if image.ndim == 2 else image.mean(axis=-1)).astype(np.float64)
        background = float(np.median(frame))
        noise = 1.4826 * float(np.median(np.abs(frame - background)))
        flux = frame - background
        labels, n = ndimage.label(flux > params.detect_sigma * noise)
        index = np.arange(n + 1)
        size = np.bincount(labels.ravel(), minlength=n + 1)
        total = ndimage.sum_labels(flux, labels, index)
        edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        good = (size >= params.min_pixels) & (index > 0) & ~np.isin(index, edges)
        keep = index[good][np.argsort(total[good])[::-1][:int(params.max_stars)]]
        outputs = {"stars": int(keep.size), "background": background, "noise": noise,
                   "temperature": number(attributes, "CCD-TEMP", "AMBTEMP"),
                   "seeing": number(attributes, "SEEING")}
        if not keep.size:
            outputs.update(fwhm=float("nan"), hfd=float("nan"))
            return Result(outputs, status=Status.WARNING, message="no stars above threshold")
        cy, cx = np.array(ndimage.center_of_mass(flux, labels, keep)).T
        b = int(params.box)
        offsets = np.arange(-b, b + 1)
        padded = np.pad(flux, b)  # zero flux outside the frame
        iy, ix = np.rint(cy).astype(int)[:, None, None], np.rint(cx).astype(int)[:, None, None]
        rows, cols = iy + offsets[:, None] + b, ix + offsets + b  # (stars, 2b+1, 2b+1) boxes
        own = np.pad(labels, b)[rows, cols]
        f = np.where((own == 0) | (own == keep[:, None, None]), padded[rows, cols], 0.0)
        r = np.hypot(rows - b - cy[:, None, None], cols - b - cx[:, None, None])
        w = np.where((f > 0) & (r <= b), f, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):  # a faint star may give NaN: skipped
            second = (f * r ** 2).sum(axis=(1, 2)) / f.sum(axis=(1, 2))
            fwhm = 2.3548 * np.sqrt(np.where(second > 0, second, np.nan) / 2)
            hfd = 2 * (w * r).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
        outputs.update(fwhm=median(fwhm), hfd=median(hfd))
        # also on the frame, for a later stage (NEOSTED's field-wide focus reads them)
        return Result(outputs, attributes={"FWHM": outputs["fwhm"], "HFD": outputs["hfd"],
                                           "Stars": outputs["stars"]})


def median(values):  # over the stars that gave a number
    return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() else np.nan


def number(attributes, *names):  # the first named attribute that is a number, else NaN
    for value in (attributes.get(name) for name in names):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    return float("nan")


def star_field(shape=(512, 512), n_stars=40, sigma=2.0, seed=1, background=100.0, noise=5.0,
               peak=3000.0):
    """A synthetic defocused star field (float64): n_stars Gaussians of width sigma and height peak
    at random positions >= 25 px from the border (they may overlap), on background plus noise."""
    rng = np.random.default_rng(seed)
    (ny, nx), at = shape, rng.uniform(25, np.subtract(shape, 26), (n_stars, 2))  # (y, x) per star
    gy = np.exp(-0.5 * ((np.arange(ny) - at[:, :1]) / sigma) ** 2)  # (stars, ny)
    gx = np.exp(-0.5 * ((np.arange(nx) - at[:, 1:]) / sigma) ** 2)  # (stars, nx)
    return background + peak * gy.T @ gx + rng.normal(0.0, noise, shape)  # gy.T @ gx: sum of stars

"""Gaussian-plus-constant fits to a beam's x and y profiles (needs scipy), and the profiles.

x profile = sum over rows (length nx), y profile = sum over columns (RGB: colour axis averaged
first), each fitted with a * exp(-(x - c)**2 / (2 * s**2)) + b by scipy.optimize.curve_fit from a
first guess: b = min(profile), c = where the profile is highest, a = max - min, and s from the
width of the run of points above half that height around c (a small beam in a large noisy frame
is found as well as one that fills it). A failed fit gives FitOk 0, a warning, and the first
guess instead. Amplitudes are in summed counts, centres and widths in pixels.
"""

import math
import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ndflow.algorithm import Algorithm, Input, Output, Result, Status

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
PROFILE_LENGTH = 4096


def gaussian(x, amplitude, center, sigma, offset):
    return amplitude * np.exp(-0.5 * ((x - center) / sigma) ** 2) + offset


def first_guess(x, profile):
    """(amplitude, center, sigma, offset): the highest point above the lowest, and the width of
    the run of points around it above half its height."""
    offset = profile.min()
    above = profile - offset
    peak = int(np.argmax(above))
    amplitude = above[peak]
    if not amplitude > 0:
        return np.array([0.0, (x.size - 1) / 2, 0.0, offset])
    low = np.flatnonzero(above < amplitude / 2)  # the run ends at the nearest low point each side
    left = low[low < peak].max(initial=-1) + 1
    right = low[low > peak].min(initial=x.size) - 1
    sigma = max((right - left + 1) / FWHM_PER_SIGMA, 0.5)
    return np.array([amplitude, x[peak], sigma, offset])


def fit(profile, max_iterations):
    """((amplitude, center, |sigma|), error message or "")."""
    x = np.arange(profile.size, dtype=np.float64)
    guess = first_guess(x, profile)
    if not guess[2] > 0:
        return guess[:3], "flat profile"
    scale = np.abs(profile).max()  # fit a profile of order 1: better conditioned
    p0 = guess / [scale, 1.0, 1.0, scale]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(gaussian, x, profile / scale, p0=p0, maxfev=max_iterations)
    except (RuntimeError, ValueError) as exc:
        return guess[:3], str(exc).splitlines()[0]
    result = np.array([popt[0] * scale, popt[1], abs(popt[2])])
    if not (np.isfinite(result).all() and result[2] > 0 and 0 <= result[1] <= profile.size - 1):
        return guess[:3], f"fit diverged (center {result[1]:.4g}, sigma {result[2]:.4g})"
    return result, ""


class GaussFit(Algorithm):
    max_iterations = Input(200, low=10, doc="most function evaluations per fit")

    amplitude_x = Output(float, units="counts", doc="peak of the x profile above its base")
    center_x = Output(float, units="px", precision=2)
    sigma_x = Output(float, units="px", precision=2)
    fwhm_x = Output(float, units="px", precision=2)
    amplitude_y = Output(float, units="counts", doc="peak of the y profile above its base")
    center_y = Output(float, units="px", precision=2)
    sigma_y = Output(float, units="px", precision=2)
    fwhm_y = Output(float, units="px", precision=2)
    fit_ok = Output(bool, doc="both fits converged")
    profile_x = Output(float, length=PROFILE_LENGTH, units="counts", doc="sum over rows")
    profile_y = Output(float, length=PROFILE_LENGTH, units="counts", doc="sum over columns")

    def process(self, image, params, attributes, metadata):
        frame = image if image.ndim == 2 else image.mean(axis=-1)
        outputs, errors = {}, []
        for axis, name in ((0, "x"), (1, "y")):
            profile = frame.sum(axis=axis, dtype=np.float64)
            values, error = fit(profile, int(params.max_iterations))
            if error:
                errors.append(f"{name} fit failed: {error}")
            amplitude, center, sigma = (float(v) for v in values)
            outputs.update({f"amplitude_{name}": amplitude, f"center_{name}": center,
                            f"sigma_{name}": sigma, f"fwhm_{name}": FWHM_PER_SIGMA * sigma,
                            f"profile_{name}": profile[:PROFILE_LENGTH]})
        outputs["fit_ok"] = not errors
        status = Status.WARNING if errors else Status.OK
        return Result(outputs=outputs, status=status, message="; ".join(errors))

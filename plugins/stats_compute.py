"""NDPluginStats' computation, as pure functions (the plugin, stats.py, owns the PVs, the time
series and the data path; bench/stats.py times these): one pass over an image for min/max, sums
and moments (`scan`), ADCore's statistics, background and centroid formulas, the profiles and
the histogram. The formulas are spelled out in stats.py's docstring.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ndflow.ndarray import NDArray, xyz_dims

BLOCK_ELEMENTS = 1 << 17  # float64 elements per block: 1 MB, stays in L2

# result name -> ADCore's asyn drvInfo string (the source of a PARAM attribute)
STATISTICS = {"MinValue": "MIN_VALUE", "MinX": "MIN_X", "MinY": "MIN_Y",
              "MaxValue": "MAX_VALUE", "MaxX": "MAX_X", "MaxY": "MAX_Y",
              "MeanValue": "MEAN_VALUE", "SigmaValue": "SIGMA_VALUE", "Total": "TOTAL",
              "Net": "NET"}
CENTROID = {"CentroidTotal": "CENTROID_TOTAL", "CentroidX": "CENTROIDX_VALUE",
            "CentroidY": "CENTROIDY_VALUE", "SigmaX": "SIGMAX_VALUE", "SigmaY": "SIGMAY_VALUE",
            "SigmaXY": "SIGMAXY_VALUE", "SkewX": "SKEWX_VALUE", "SkewY": "SKEWY_VALUE",
            "KurtosisX": "KURTOSISX_VALUE", "KurtosisY": "KURTOSISY_VALUE",
            "Eccentricity": "ECCENTRICITY_VALUE", "Orientation": "ORIENTATION_VALUE"}


@dataclass
class Scan:
    """What one blocked pass over a 2-D image gives."""

    total: float = 0.0
    sum_sq: float = 0.0
    col: np.ndarray | None = None  # column sums of all values (length nx)
    row: np.ndarray | None = None  # row sums of all values (length ny)
    col_thr: np.ndarray | None = None  # column sums of the values >= threshold
    row_thr: np.ndarray | None = None  # row sums of the values >= threshold
    m11: float = 0.0  # sum of x * y * value over the values >= threshold


def scan(image: np.ndarray, sums: bool = True, threshold: float | None = None,
         profiles: bool = False) -> Scan:
    """Sum and sum of squares (`sums`), threshold moments (`threshold` not None) and the
    all-value profiles (`profiles`) of a 2-D array, in one pass over float64 row blocks.

    No BLAS: its worker threads fight the plugin threads for cores and made a busy 2-core
    machine ten times slower; numpy's own SIMD reductions do not."""
    ny, nx = image.shape
    rows = max(1, min(ny, BLOCK_ELEMENTS // max(nx, 1)))
    buf = np.empty((rows, nx))
    x = np.arange(nx, dtype=np.float64)
    out = Scan()
    if profiles:
        out.col, out.row = np.zeros(nx), np.empty(ny)
    if threshold is not None:
        keep = np.empty(buf.shape, dtype=bool)
        out.col_thr, out.row_thr = np.zeros(nx), np.empty(ny)
        row_x = np.empty(ny)
    for start in range(0, ny, rows):
        stop = min(start + rows, ny)
        block = buf[: stop - start]
        np.copyto(block, image[start:stop], casting="unsafe")
        if sums:
            flat = block.reshape(-1)
            out.total += float(flat.sum())
            out.sum_sq += float(np.einsum("i,i->", flat, flat))
        if profiles:
            out.col += block.sum(axis=0)
            out.row[start:stop] = block.sum(axis=1)
        if threshold is not None:
            kept = keep[: stop - start]
            np.greater_equal(block, threshold, out=kept)
            np.multiply(block, kept, out=block)
            columns = block.sum(axis=0)
            if image.dtype.kind == "f" and not np.isfinite(columns).all():
                # NaN or -inf times 0 is NaN: zero the rejected values instead (slower)
                np.copyto(block, image[start:stop], casting="unsafe")
                block[~kept] = 0.0
                columns = block.sum(axis=0)
            out.col_thr += columns
            out.row_thr[start:stop] = block.sum(axis=1)
            row_x[start:stop] = np.einsum("ij,j->i", block, x)
    if threshold is not None:
        out.m11 = float(np.einsum("i,i->", np.arange(ny, dtype=np.float64), row_x))
    return out


def _extreme(data: np.ndarray, smallest: bool) -> int:
    """Flat index of the first minimum/maximum; NaN is skipped unless the first element is NaN,
    as ADCore's running comparison does."""
    index = int(np.argmin(data) if smallest else np.argmax(data))
    if data.dtype.kind == "f" and math.isnan(data.flat[index]) and \
            not math.isnan(data.flat[0]):
        index = int(np.nanargmin(data) if smallest else np.nanargmax(data))
    return index


def background(data: np.ndarray, width: int) -> float:
    """Average of the `width`-wide slabs at both ends of every dimension (corners twice)."""
    counts, pixels = 0.0, 0
    for axis, size in enumerate(data.shape):
        first = min(width, size)
        offset = max(0, size - width)
        for start, length in ((0, first), (offset, min(width, size - offset))):
            slab = np.take(data, np.arange(start, start + length), axis=axis)
            counts += float(slab.sum(dtype=np.float64))
            pixels += slab.size
    return counts / max(pixels, 1)


def statistics(data: np.ndarray, sums: Scan, x_axis: int, y_axis: int | None,
               bgd_width: int) -> dict[str, float]:
    """The ten statistics results; `sums` is a scan of `data` with sums=True."""
    n = data.size
    results: dict[str, float] = {}
    for label, smallest in (("Min", True), ("Max", False)):
        index = _extreme(data, smallest)
        coords = np.unravel_index(index, data.shape)
        results[f"{label}Value"] = float(data.flat[index])
        results[f"{label}X"] = float(coords[x_axis])
        results[f"{label}Y"] = float(coords[y_axis]) if y_axis is not None else 0.0
    mean = sums.total / n
    results["MeanValue"] = mean
    results["SigmaValue"] = math.sqrt(max(sums.sum_sq / n - mean * mean, 0.0)) \
        if math.isfinite(sums.sum_sq) else math.nan
    results["Total"] = sums.total
    results["Net"] = sums.total - background(data, bgd_width) * n if bgd_width > 0 \
        else sums.total
    return results


def channel_statistics(data: np.ndarray, bgd_width: int) -> list[dict[str, float]]:
    """The ten statistics of each channel of a (C, H, W) frame, each plane as a 2-D image."""
    return [statistics(plane, scan(plane), 1, 0, bgd_width) for plane in data]


def _channel_pv(name: str) -> str:
    """The per-channel waveform of a statistics result (SigmaValue's PV is Sigma_RBV)."""
    return f"Channel{'Sigma' if name == 'SigmaValue' else name}_RBV"


def centroid(sums: Scan) -> dict[str, float]:
    """Centroid results from the threshold profiles and M11, as doComputeCentroidT does."""
    results = dict.fromkeys(CENTROID, 0.0)
    px, py = sums.col_thr, sums.row_thr
    x = np.arange(px.size, dtype=np.float64)
    y = np.arange(py.size, dtype=np.float64)
    m00 = float(px.sum())
    if not m00 > 0.0:
        return results
    m10, m20, m30, m40 = (float(px @ x ** k) for k in (1, 2, 3, 4))
    m01, m02, m03, m04 = (float(py @ y ** k) for k in (1, 2, 3, 4))
    m11 = sums.m11
    mu20 = m20 - m10 * m10 / m00
    mu02 = m02 - m01 * m01 / m00
    mu11 = m11 - m10 * m01 / m00
    mu30 = m30 - 3 * m10 * m20 / m00 + 2 * m10 ** 3 / m00 ** 2
    mu03 = m03 - 3 * m01 * m02 / m00 + 2 * m01 ** 3 / m00 ** 2
    mu40 = m40 - 4 * m30 * m10 / m00 + 6 * m20 * m10 ** 2 / m00 ** 2 - 3 * m10 ** 4 / m00 ** 3
    mu04 = m04 - 4 * m03 * m01 / m00 + 6 * m02 * m01 ** 2 / m00 ** 2 - 3 * m01 ** 4 / m00 ** 3
    var_x, var_y, var_xy = mu20 / m00, mu02 / m00, mu11 / m00
    sigma_x = math.sqrt(var_x) if var_x >= 0 else math.nan
    sigma_y = math.sqrt(var_y) if var_y >= 0 else math.nan
    results.update(CentroidTotal=m00, CentroidX=m10 / m00, CentroidY=m01 / m00,
                   SigmaX=sigma_x, SigmaY=sigma_y,
                   Orientation=math.degrees(0.5 * math.atan2(2.0 * var_xy, var_x - var_y)))
    if sigma_x != 0 and sigma_y != 0:
        results["SigmaXY"] = var_xy / (sigma_x * sigma_y)
    if var_x != 0:
        results["SkewX"] = mu30 / (m00 * var_x ** 1.5) if var_x > 0 else math.nan
        results["KurtosisX"] = mu40 / (m00 * var_x ** 2) - 3.0
    if var_y != 0:
        results["SkewY"] = mu03 / (m00 * var_y ** 1.5) if var_y > 0 else math.nan
        results["KurtosisY"] = mu04 / (m00 * var_y ** 2) - 3.0
    if mu20 + mu02 != 0:
        results["Eccentricity"] = ((mu20 - mu02) ** 2 - 4 * mu11 ** 2) / (mu20 + mu02) ** 2
    return results


def profiles(image: np.ndarray, sums: Scan, centroid_x: float, centroid_y: float,
             cursor_x: int, cursor_y: int) -> tuple[dict[str, np.ndarray], float]:
    """The eight profile waveforms (keyed e.g. "AverageX") and the value at the cursor."""
    ny, nx = image.shape

    def clamp(value: float, size: int) -> int:
        return int(min(max(value, 0), size - 1)) if math.isfinite(value) else 0

    cy, cx = clamp(centroid_y + 0.5, ny), clamp(centroid_x + 0.5, nx)
    ky, kx = clamp(cursor_y, ny), clamp(cursor_x, nx)
    out = {"AverageX": sums.col / ny, "AverageY": sums.row / nx,
           "ThresholdX": sums.col_thr / ny, "ThresholdY": sums.row_thr / nx,
           "CentroidX": image[cy].astype(np.float64), "CentroidY": image[:, cx].astype(np.float64),
           "CursorX": image[ky].astype(np.float64), "CursorY": image[:, kx].astype(np.float64)}
    return out, float(image[ky, kx])


def _bins(values: np.ndarray, size: int, low: float, high: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bin of each inside value, below, above, inside masks) as doComputeHistogramT bins."""
    scale = (size - 1) / (high - low)
    with np.errstate(invalid="ignore"):
        bins = np.trunc((values - low) * scale + 0.5)
        below = (bins < 0) | (values < low) | np.isnan(values)
        above = ~below & ((bins > size - 1) | (values > high))
    inside = ~(below | above)
    return bins[inside].astype(np.intp), below, above, inside


@functools.lru_cache(maxsize=8)
def _value_bins(dtype: str, size: int, low: float, high: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_bins` of every value an 8/16-bit type can hold, in the order of its unsigned view."""
    itemsize = np.dtype(dtype).itemsize
    values = np.arange(1 << (8 * itemsize), dtype=np.float64)
    if np.dtype(dtype).kind == "i":
        values[values.size // 2:] -= values.size
    return _bins(values, size, low, high)


def histogram(data: np.ndarray, size: int, low: float, high: float
              ) -> tuple[np.ndarray, int, int, float]:
    """(counts per bin, below, above, entropy) with doComputeHistogramT's binning."""
    if high <= low:
        high = low + 1.0
    flat = data.reshape(-1)
    if data.dtype.kind in "iub" and data.dtype.itemsize <= 2:
        # Count each possible value once, then bin the (at most 65536) values by a table that
        # only changes with the type and HistSize/Min/Max.
        unsigned = flat.view(f"u{data.dtype.itemsize}")
        per_value = np.bincount(unsigned, minlength=1 << (8 * data.dtype.itemsize))
        bins, below, above, inside = _value_bins(data.dtype.str, size, low, high)
        counts = np.bincount(bins, weights=per_value[inside], minlength=size)
        n_below, n_above = int(per_value[below].sum()), int(per_value[above].sum())
    else:
        bins, below, above, inside = _bins(flat.astype(np.float64), size, low, high)
        counts = np.bincount(bins, minlength=size).astype(np.float64)
        n_below, n_above = int(below.sum()), int(above.sum())
    positive = counts[counts > 0]
    entropy = -float(positive @ np.log(positive)) / max(flat.size, 1)
    return counts, n_below, n_above, entropy


def histogram_x(size: int, low: float, high: float) -> np.ndarray:
    """HistogramX_RBV as computeHistX gives it (from the unadjusted HistMax)."""
    size = max(size, 1)
    return low + np.arange(size) * ((high - low) / size)


def xy_axes(array: NDArray) -> tuple[int, int | None]:
    """numpy axes of x and y for MinX/MinY/MaxX/MaxY (y None for a 1-D array)."""
    nd = array.data.ndim
    if nd == 1:
        return 0, None
    x, y = xyz_dims(nd, array.color_mode)[:2]
    return nd - 1 - x, nd - 1 - y  # numpy axes run opposite to dims

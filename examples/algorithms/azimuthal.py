"""Azimuthal integration with pyFAI: the frame's 1-D profile I(q) and the position of its
strongest ring (powder diffraction, SAXS/WAXS). Needs pyFAI (`pip install ndflow[examples]`).

Geometry (Fit2D convention, no tilt): `Distance` from the sample to the detector along the beam
(mm), square pixels of `PixelSize` (um), the direct beam at (`BeamCenterX`, `BeamCenterY`) in
pixels, counted from the first pixel's outer corner (its centre is at 0.5, 0.5), and the X-ray
`Wavelength` (Angstrom). The frame is integrated into `Bins` bins of `Unit` (q in 1/nm or 1/A,
the scattering angle 2theta in degrees, or the radius on the detector in mm) with pixel
splitting (pyFAI's "bbox" CSR engine) and, with `SolidAngle`, the solid-angle correction.

Outputs, every frame: `Intensity` (the mean intensity of each bin; the table writer saves it per
frame), `Radial` (the bins' centres in `Unit`), `RingPosition` (where I is highest, refined by a
parabola through the three bins around the maximum, in `Unit`) and `RingRadius` (the same ring
as a radius on the detector, in pixels: r = Distance * tan(2theta) / PixelSize).

Masks (pixels left out of the integration), either or both:
- `MaskFile`: a .npy or .tif file of the frame's shape, non-zero where pixels are bad. It is
  read with ndflow.algorithm.read_file, so only from the IOC's configured folders (its data
  roots, its config file's folder, its algorithm folders); a relative name is taken from this
  file's folder. It is read when the name changes (write another name, or reload, to re-read).
- `MaskThreshold`: pixels at or above it (hot or saturated) are left out of that frame (0: none).

pyFAI is imported when the file loads (about 2-4 s: it loads scipy), inside the child's start-up
timeout (`start_timeout_s`, 30 s) rather than in the first process() call, which the frame
timeout (`timeout_s`) would cut short. The integrator, which precomputes each pixel's bins, is
built again only when the geometry, the unit, the bin count or the mask file changes.
"""

import io
import math

import numpy as np

try:
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator  # pyFAI >= 2024.1
except ImportError:  # older releases
    from pyFAI.azimuthalIntegrator import AzimuthalIntegrator

from ndflow.algorithm import Algorithm, Input, Output, Result, Status, read_file

MAX_BINS = 4096
UNITS = ("q_nm^-1", "q_A^-1", "2th_deg", "r_mm")
METHOD = ("bbox", "csr", "cython")  # pixel splitting, sparse matrix, on the CPU (no OpenCL)
DUMMY = -1.0e9  # value given to pixels masked by the threshold, which pyFAI then skips
GEOMETRY = ("Distance", "PixelSize", "BeamCenterX", "BeamCenterY", "Wavelength")  # PV names


def ring_radius_mm(position, unit, distance_mm, wavelength_a):
    """The radius on the detector (mm) of a ring at `position` in `unit`."""
    if unit == "r_mm":
        return position
    if unit == "2th_deg":
        two_theta = math.radians(position)
    else:
        wavelength = wavelength_a / 10.0 if unit == "q_nm^-1" else wavelength_a
        sine = position * wavelength / (4.0 * math.pi)
        if not -1.0 <= sine <= 1.0:
            return float("nan")
        two_theta = 2.0 * math.asin(sine)
    return distance_mm * math.tan(two_theta) if two_theta < math.pi / 2 else float("nan")


def peak_position(radial, intensity):
    """Where `intensity` is highest: the bin's centre, moved by the vertex of the parabola
    through it and its two neighbours (uniform bins). NaN if nothing is above zero."""
    values = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)
    if values.size == 0 or not values.max() > 0:
        return float("nan")
    i = int(np.argmax(values))
    if 0 < i < values.size - 1:
        left, mid, right = values[i - 1:i + 2]
        curvature = left - 2.0 * mid + right
        shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
        step = radial[i + 1] - radial[i]
        return float(radial[i] + np.clip(shift, -0.5, 0.5) * step)
    return float(radial[i])


def load_mask(name):
    """The mask file `name` as a bool array (True: left out), from the IOC's folders."""
    data = read_file(name)
    lower = name.lower()
    if lower.endswith(".npy"):
        mask = np.load(io.BytesIO(data), allow_pickle=False)
    elif lower.endswith((".tif", ".tiff")):
        import tifffile
        mask = tifffile.imread(io.BytesIO(data))
    else:
        raise ValueError(f"{name}: give a .npy or .tif file")
    if mask.ndim != 2:
        raise ValueError(f"{name}: a mask is 2-D, this one has shape {mask.shape}")
    return mask != 0


class AzimuthalIntegration(Algorithm):
    distance = Input(100.0, low=1e-3, units="mm", doc="sample to detector, along the beam")
    pixel_size = Input(75.0, low=1e-3, units="um", doc="pixel size (square pixels)")
    beam_center_x = Input(0.0, units="px", doc="direct beam x (first pixel's centre is 0.5)")
    beam_center_y = Input(0.0, units="px", doc="direct beam y (first pixel's centre is 0.5)")
    wavelength = Input(1.0, low=1e-4, units="A", doc="X-ray wavelength")
    bins = Input(500, low=2, high=MAX_BINS, doc="number of radial bins")
    unit = Input("q_nm^-1", choices=UNITS, doc="radial unit of the profile")
    solid_angle = Input(True, doc="correct for each pixel's solid angle")
    mask_file = Input("", length=255, doc=".npy or .tif mask in the IOC's folders (non-zero: "
                                          "bad pixel); empty: none")
    mask_threshold = Input(0.0, low=0.0, units="counts",
                           doc="pixels at or above are left out (0: none)")
    channel = Input(0, low=0, doc="channel integrated in a multi-channel frame")

    intensity = Output(float, length=MAX_BINS, doc="mean intensity per radial bin")
    radial = Output(float, length=MAX_BINS, doc="bin centres, in Unit")
    ring_position = Output(float, precision=5, doc="the strongest ring, in Unit")
    ring_radius = Output(float, units="px", precision=2, doc="that ring's radius on the detector")
    masked_pixels = Output(int, doc="pixels left out of this frame")

    def __init__(self):
        self.integrator = None
        self.key = None  # what self.integrator was built for
        self.mask_name = None
        self.mask = None  # bool array of the mask file, or None

    def _frame(self, image, params, metadata):
        """The 2-D frame to integrate (one channel of a multi-channel frame)."""
        if image.ndim == 3 and getattr(metadata, "channels", ()):
            index = int(params.channel)
            if index >= image.shape[0]:
                raise ValueError(f"Channel {index}: the frame has {image.shape[0]} channels")
            return image[index]
        if image.ndim != 2:
            raise ValueError(f"azimuthal integration needs a 2-D mono frame, not shape "
                             f"{image.shape} ({metadata.color_mode})")
        return image

    def _file_mask(self, name, shape):
        name = name.strip()
        if name != self.mask_name:
            self.mask_name, self.mask = name, None  # a failed read is not retried every frame
            self.mask = load_mask(name) if name else None
            self.key = None  # the integrator's engine holds the mask
        if self.mask is not None and self.mask.shape != shape:
            raise ValueError(f"{name} is {self.mask.shape[1]}x{self.mask.shape[0]}, the frame "
                             f"{shape[1]}x{shape[0]}")
        return self.mask

    def _integrator(self, params):
        key = (params.distance, params.pixel_size, params.beam_center_x, params.beam_center_y,
               params.wavelength)
        for name, value in zip(GEOMETRY, key):
            if not math.isfinite(value):
                raise ValueError(f"{name} is {value}: the geometry needs finite numbers")
        if key != self.key or self.integrator is None:
            integrator = AzimuthalIntegrator()
            integrator.setFit2D(params.distance, params.beam_center_x, params.beam_center_y,
                                pixelX=params.pixel_size, pixelY=params.pixel_size)
            integrator.wavelength = params.wavelength * 1e-10
            self.integrator, self.key = integrator, key
        return self.integrator

    def process(self, image, params, attributes, metadata):
        try:
            frame = self._frame(image, params, metadata)
            mask = self._file_mask(params.mask_file, frame.shape)
            integrator = self._integrator(params)
        except ValueError as exc:  # read_file's refusals are ValueErrors too
            return Result(status=Status.ERROR, message=str(exc))
        # pyFAI's compiled engine takes a float32 frame as it is, and needs it writable; the
        # frame is shared read-only, so floats are copied (other types pyFAI converts itself)
        data, dummy = (frame.astype(np.float32) if frame.dtype.kind == "f" else frame), None
        masked = np.zeros(frame.shape, bool) if mask is None else mask.copy()
        if params.mask_threshold > 0:
            hot = frame >= params.mask_threshold
            if hot.any():
                data = data if data is not frame else frame.astype(np.float32)
                data[hot] = DUMMY
                dummy = DUMMY
                masked |= hot
        if masked.all():
            return Result(status=Status.ERROR, message="every pixel is masked")
        result = integrator.integrate1d(
            data, int(params.bins), unit=params.unit, mask=mask, dummy=dummy, delta_dummy=0.5,
            correctSolidAngle=bool(params.solid_angle), method=METHOD)
        radial = np.asarray(result.radial, dtype=np.float64)
        intensity = np.asarray(result.intensity, dtype=np.float64)
        position = peak_position(radial, intensity)
        radius_mm = ring_radius_mm(position, params.unit, params.distance, params.wavelength)
        outputs = {"intensity": intensity, "radial": radial, "ring_position": position,
                   "ring_radius": radius_mm / (params.pixel_size / 1000.0),
                   "masked_pixels": int(masked.sum())}
        if math.isnan(position):
            return Result(outputs=outputs, status=Status.WARNING, message="no ring: I(q) <= 0")
        return outputs

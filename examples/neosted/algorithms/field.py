"""NEOSTED field-wide focus: the second stage after focus.py, which puts each frame's HFD, FWHM
and star count on the frame as attributes. Frames from all 16 cameras pass through here; this
stage keeps each camera's latest half-flux diameter (HFD, pixels) and reports

- HfdCam01_RBV .. HfdCam16_RBV: each camera's latest HFD, with alarm thresholds;
- FieldHfd_RBV: the median over the cameras that have reported, with alarm thresholds: the
  figure of merit an operator watches to decide whether a focus run is due;
- Temperature_RBV, Seeing_RBV: ambient temperature and seeing from the latest header, since
  both move the best focus during the night.

Edit the thresholds below while the IOC runs: the file reloads and the PVs' limits follow.
"""

import math

from ndflow.algorithm import Alarm, Algorithm, Input, Output, Result, Status

CAMERAS = 16
HFD_ALARM = Alarm(high=7.0, hihi=9.0)  # pixels: minor above 7, major above 9


class FieldFocus(Algorithm):
    min_cameras = Input(1, low=1, high=CAMERAS, doc="cameras needed for a field value")

    camera = Output(int, doc="camera of the last frame")
    cameras_reporting = Output(int, doc="cameras with a current HFD")
    field_hfd = Output(float, units="px", precision=2, alarm=HFD_ALARM,
                       doc="median HFD over the cameras")
    field_fwhm = Output(float, units="px", precision=2, doc="median FWHM over the cameras")
    temperature = Output(float, units="C", precision=1, doc="AMBTEMP of the last frame")
    seeing = Output(float, units="arcsec", precision=2, doc="SEEING of the last frame")
    for _n in range(1, CAMERAS + 1):  # one alarmed PV per camera: HfdCam01_RBV ...
        vars()[f"hfd_cam{_n:02d}"] = Output(float, units="px", precision=2, alarm=HFD_ALARM,
                                             doc=f"latest HFD of camera {_n}")
    del _n

    def start(self):
        self.hfd = {}  # camera -> latest HFD
        self.fwhm = {}

    def process(self, image, params, attributes, metadata):
        camera = int(number(attributes, "CAMERA", "CameraId") or 0)
        hfd, fwhm = number(attributes, "HFD"), number(attributes, "FWHM")
        outputs = {"camera": camera, "temperature": number(attributes, "AMBTEMP"),
                   "seeing": number(attributes, "SEEING")}
        if not 1 <= camera <= CAMERAS or math.isnan(hfd):
            return Result(outputs, status=Status.WARNING,
                          message=f"frame without a camera number or HFD (camera {camera})")
        self.hfd[camera], self.fwhm[camera] = hfd, fwhm
        for n in range(1, CAMERAS + 1):  # NaN until a camera reports
            outputs[f"hfd_cam{n:02d}"] = self.hfd.get(n, math.nan)
        outputs["cameras_reporting"] = len(self.hfd)
        if len(self.hfd) >= params.min_cameras:
            outputs["field_hfd"] = median(self.hfd.values())
            outputs["field_fwhm"] = median(self.fwhm.values())
        return outputs


def number(attributes, *names):
    """The first named attribute that is a finite number, else NaN."""
    for name in names:
        try:
            value = float(attributes.get(name))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            return value
    return float("nan")


def median(values):
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

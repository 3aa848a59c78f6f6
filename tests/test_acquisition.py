"""Acceptance 1 and 2: acquisition modes, put-completion, counters and the image a client sees."""

from __future__ import annotations

import time

import epics
import numpy as np
import pytest


def put(pv: str, value, wait: bool = True, timeout: float = 10.0) -> None:
    assert epics.caput(pv, value, wait=wait, timeout=timeout) == 1, f"put {pv}={value!r} failed"


def get(pv: str, **kw):
    """A read from the IOC. Not pyepics' monitor cache by default: PV.get() stores the reply of
    a PV's first read over a newer value its monitor delivered meanwhile, so a value that
    changes while the PV connects can stay stale in the cache for good (a client-side race:
    the IOC's monitors did deliver it). Tests that watch a value use Monitor."""
    kw.setdefault("use_monitor", False)
    value = epics.caget(pv, timeout=5, **kw)
    assert value is not None, f"cannot read {pv}"
    return value


class Monitor:
    """A value watched through a pyepics monitor, as ophyd watches it: `value` and `values` come
    only from the monitor's callbacks, never from a read."""

    _open: dict[str, "Monitor"] = {}

    def __init__(self, pv: str) -> None:
        self.values: list = []
        self.pv = epics.PV(pv, auto_monitor=True, callback=self._on_value)
        assert wait_for(lambda: bool(self.values), 5), f"no monitor update from {pv}"

    @classmethod
    def of(cls, pv: str) -> "Monitor":
        """One monitor per PV for the whole session (connected once, before it is needed)."""
        if pv not in cls._open:
            cls._open[pv] = cls(pv)
        return cls._open[pv]

    def _on_value(self, value=None, **_) -> None:
        self.values.append(value)

    @property
    def value(self):
        return self.values[-1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def image(prefix: str) -> np.ndarray:
    """image1:ArrayData reshaped by ArraySize0/1/2_RBV, as ophyd's ImagePlugin does."""
    dims = [get(prefix + f"image1:ArraySize{i}_RBV") for i in range(3)]
    ndims = get(prefix + "image1:NDimensions_RBV")
    shape = tuple(reversed([d for d in dims[:ndims]]))
    data = get(prefix + "image1:ArrayData", count=int(np.prod(shape)))
    return np.asarray(data).reshape(shape)


def ramp(nx: int, ny: int, gain_x: float = 1.0, gain_y: float = 1.0, inc: float = 1.0,
         frame: int = 1) -> np.ndarray:
    """ADSimDetector LinearRamp: inc*(GainX*x + GainY*y) on the first frame, +inc per frame."""
    x = np.arange(nx)[None, :]
    y = np.arange(ny)[:, None]
    values = np.trunc(inc * (gain_x * x + gain_y * y)) + inc * (frame - 1)
    return values


def wrap(values: np.ndarray, dtype: str) -> np.ndarray:
    return np.trunc(values).astype(np.int64).astype(dtype)


@pytest.fixture
def cam(default_ioc):
    """Prefix of a freshly reset, idle camera with WaitForPlugins=Yes."""
    p = default_ioc.prefix
    put(p + "cam1:Acquire", 0)
    assert wait_for(lambda: get(p + "cam1:DetectorState_RBV", as_string=True) in ("Idle", "Aborted"))
    for name, value in [("ImageMode", "Single"), ("ArrayCounter", 0), ("WaitForPlugins", "Yes"),
                        ("DataType", "UInt8"), ("ColorMode", "Mono"), ("BinX", 1), ("BinY", 1),
                        ("MinX", 0), ("MinY", 0), ("SizeX", 1024), ("SizeY", 1024),
                        ("ReverseX", 0), ("ReverseY", 0), ("GainX", 1.0), ("GainY", 1.0),
                        ("Gain", 1.0), ("AcquireTime", 0.001), ("AcquirePeriod", 0.0),
                        ("SimMode", "LinearRamp"), ("Reset", 1)]:
        put(p + "cam1:" + name, value)
    put(p + "image1:EnableCallbacks", "Enable")
    put(p + "image1:ArrayCounter", 0)
    return p


def test_single_put_completion_counter_and_ramp(cam):
    put(cam + "cam1:GainX", 2.0)
    put(cam + "cam1:GainY", 3.0)
    put(cam + "cam1:AcquireTime", 0.2)
    put(cam + "cam1:Gain", 0.005)  # inc = (uint8)(0.005 * 0.2 * 1000) = 1
    start = time.monotonic()
    put(cam + "cam1:Acquire", 1)  # put-callback: returns when the frame is done
    elapsed = time.monotonic() - start
    assert elapsed >= 0.2, "Acquire completed before the exposure ended"
    assert get(cam + "cam1:ArrayCounter_RBV") == 1
    assert get(cam + "cam1:NumImagesCounter_RBV") == 1
    assert get(cam + "cam1:Acquire_RBV", as_string=True) == "Done"
    assert get(cam + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    assert get(cam + "image1:UniqueId_RBV") == 1
    img = image(cam)
    assert img.shape == (1024, 1024)
    expected = wrap(ramp(1024, 1024, 2.0, 3.0, inc=1.0), "u1")
    # image1 is an Int8/UCHAR waveform: the bytes are the UInt8 frame's bytes
    np.testing.assert_array_equal(img.astype(np.uint8), expected)


def test_ramp_increments_each_frame(cam):
    put(cam + "cam1:ImageMode", "Multiple")
    put(cam + "cam1:NumImages", 3)
    put(cam + "cam1:Acquire", 1)
    assert get(cam + "cam1:ArrayCounter_RBV") == 3
    np.testing.assert_array_equal(image(cam).astype(np.uint8),
                                  wrap(ramp(1024, 1024, frame=3), "u1"))


def test_multiple_mode_takes_n_frames_then_idle(cam):
    put(cam + "cam1:ImageMode", "Multiple")
    put(cam + "cam1:NumImages", 7)
    put(cam + "cam1:AcquirePeriod", 0.01)
    put(cam + "cam1:Acquire", 1)
    assert get(cam + "cam1:ArrayCounter_RBV") == 7
    assert get(cam + "cam1:NumImagesCounter_RBV") == 7
    assert get(cam + "image1:ArrayCounter_RBV") == 7
    assert get(cam + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    assert get(cam + "cam1:Acquire", as_string=True) == "Done"


def test_continuous_runs_until_stopped(cam):
    put(cam + "cam1:ImageMode", "Continuous")
    put(cam + "cam1:AcquirePeriod", 0.02)
    put(cam + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(cam + "cam1:ArrayCounter_RBV") >= 10)
    assert get(cam + "cam1:Acquire_RBV", as_string=True) == "Acquiring"
    put(cam + "cam1:Acquire", 0)
    assert wait_for(lambda: get(cam + "cam1:Acquire_RBV", as_string=True) == "Done")
    # ADCore: a stopped Continuous acquisition ends Idle (Single/Multiple end Aborted)
    assert wait_for(lambda: get(cam + "cam1:DetectorState_RBV", as_string=True) == "Idle")
    count = get(cam + "cam1:ArrayCounter_RBV")
    time.sleep(0.3)
    assert get(cam + "cam1:ArrayCounter_RBV") == count


def test_stop_multiple_ends_aborted(cam):
    put(cam + "cam1:ImageMode", "Multiple")
    put(cam + "cam1:NumImages", 1000)
    put(cam + "cam1:AcquirePeriod", 0.05)
    put(cam + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(cam + "cam1:ArrayCounter_RBV") >= 2)
    put(cam + "cam1:Acquire", 0)
    assert wait_for(lambda: get(cam + "cam1:DetectorState_RBV", as_string=True) == "Aborted")
    assert get(cam + "cam1:NumImagesCounter_RBV") < 1000


def test_acquire_rbv_reaches_acquiring_even_for_short_frames(cam):
    """ophyd's SingleTrigger waits for Acquire_RBV 1 -> 0; both edges must be published."""
    seen: list[int] = []
    pv = epics.PV(cam + "cam1:Acquire_RBV", auto_monitor=True,
                  callback=lambda value=None, **kw: seen.append(int(value)))
    assert pv.wait_for_connection(5)
    time.sleep(0.2)
    seen.clear()
    put(cam + "cam1:Acquire", 1)
    assert wait_for(lambda: seen[-2:] == [1, 0], timeout=5), seen
    pv.clear_callbacks()
    pv.disconnect()


def test_values_written_while_acquiring_apply_to_the_next_acquisition(cam):
    put(cam + "cam1:ImageMode", "Continuous")
    put(cam + "cam1:AcquirePeriod", 0.02)
    put(cam + "cam1:SizeX", 512)
    put(cam + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(cam + "image1:ArraySize0_RBV") == 512)
    put(cam + "cam1:SizeX", 256)
    assert get(cam + "cam1:SizeX_RBV") == 256  # the user value is stored and read back at once
    counter = get(cam + "cam1:ArrayCounter_RBV")
    assert wait_for(lambda: get(cam + "cam1:ArrayCounter_RBV") > counter + 3)
    assert get(cam + "image1:ArraySize0_RBV") == 512  # the running acquisition is unchanged
    assert '"SizeX":512' in get(cam + "cam1:EffectiveParams_RBV", as_string=True)
    put(cam + "cam1:Acquire", 0)
    put(cam + "cam1:ImageMode", "Single")
    put(cam + "cam1:Acquire", 1)
    assert get(cam + "image1:ArraySize0_RBV") == 256
    assert '"SizeX":256' in get(cam + "cam1:EffectiveParams_RBV", as_string=True)


# --- acceptance 2: geometry and types change the next frame as ADSimDetector does ---------------

def test_region_and_binning_set_the_array_size(cam):
    for name, value in [("MinX", 10), ("MinY", 20), ("SizeX", 300), ("SizeY", 200),
                        ("BinX", 2), ("BinY", 4), ("ReverseX", 1), ("DataType", "UInt16")]:
        put(cam + "cam1:" + name, value)
    put(cam + "image1:EnableCallbacks", "Disable")
    put(cam + "cam1:Acquire", 1)
    assert get(cam + "cam1:ArraySizeX_RBV") == 150
    assert get(cam + "cam1:ArraySizeY_RBV") == 50
    assert get(cam + "cam1:DataType_RBV", as_string=True) == "UInt16"
    assert get(cam + "cam1:ArraySize_RBV") == 150 * 50 * 2


def test_data_type_and_color_mode_change_next_frame(start_ioc):
    from conftest import unique_prefix
    p = unique_prefix()
    start_ioc(WIDE_IMAGE_IOC, prefix=p)
    put(p + "cam1:ImageMode", "Single")
    put(p + "cam1:WaitForPlugins", "Yes")
    for name, value in [("MinX", 10), ("MinY", 20), ("SizeX", 300), ("SizeY", 200),
                        ("BinX", 2), ("BinY", 4), ("ReverseX", 1), ("DataType", "UInt16")]:
        put(p + "cam1:" + name, value)
    put(p + "cam1:Acquire", 1)
    assert get(p + "image1:DataType_RBV", as_string=True) == "UInt16"
    img = image(p).astype(np.uint16)
    raw = ramp(400, 300)
    expected = raw[20:220, 10:310].reshape(50, 4, 150, 2).sum(axis=(1, 3))[:, ::-1]
    np.testing.assert_array_equal(img, expected.astype(np.uint16))

    put(p + "cam1:DataType", "Float32")
    put(p + "cam1:ColorMode", "RGB1")
    put(p + "cam1:BinX", 1)
    put(p + "cam1:BinY", 1)
    put(p + "cam1:ReverseX", 0)
    put(p + "cam1:Acquire", 1)
    assert get(p + "image1:DataType_RBV", as_string=True) == "Float32"
    assert get(p + "image1:ColorMode_RBV", as_string=True) == "RGB1"
    assert get(p + "image1:NDimensions_RBV") == 3
    assert [get(p + f"image1:ArraySize{i}_RBV") for i in range(3)] == [3, 300, 200]
    assert (get(p + "image1:ArraySizeX_RBV"), get(p + "image1:ArraySizeY_RBV"),
            get(p + "image1:ArraySizeZ_RBV")) == (300, 200, 3)
    rgb = image(p)
    assert rgb.shape == (200, 300, 3)
    red = ramp(400, 300)[20:220, 10:310]
    np.testing.assert_allclose(rgb[..., 0], red)


WIDE_IMAGE_IOC = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 400, max_size_y: 300}}
plugins:
  - {type: stdarrays, port: Image1, prefix: "image1:", input: SIM1, blocking: true,
     options: {data_type: Float64, nelm: 400000}}
"""

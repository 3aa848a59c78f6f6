"""The sim's one-pass integer LinearRamp (ndflow.drivers.sim_ramp) gives the pixels of the
straightforward formula: the reset frame `(type)(inc * (GainX*x + GainY*y)) + (type)Offset`,
then `raw += inc` in the pixel type every frame, wrapping like C. Every DataType, increments
that wrap, gains that make the base image separable (col[y] + row[x], written without reading
an image) or not, regions that flip, bin, cut a module and add channels, and a mode switch
without a reset."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ndflow.adcore import DATA_TYPES, NUMPY_DTYPES
from ndflow.driver import FrameContext
from ndflow.drivers.sim import SimDetector, SimOptions
from ndflow.drivers.sim_region import bin_sum
from ndflow.dtypes import c_cast, c_cast_scalar
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition

NX, NY = 40, 24
ACQUIRE_TIME = 1e-6  # the sim waits this long per frame
FRAMES = 6
INTEGER_TYPES = [name for name in DATA_TYPES if NUMPY_DTYPES[DATA_TYPES.index(name)].kind in "iu"]
REGIONS = {
    "whole": {},
    "reversed": {"ReverseX": 1, "ReverseY": 1, "MinX": 3, "SizeX": 30},
    "binned": {"BinX": 2, "BinY": 3, "MinY": 3, "SizeY": 18},
    "two_channels": {"NumChannels": 2},
    "module_reversed": {"ReverseY": 1},  # module 3 of 2x2: crop after the flip
}
#: (GainX, GainY): integers give a separable base (unless 64-bit products overflow), the others
#: truncate pixel by pixel
GAINS_XY = [(3.0, -2.0), (0.37, 1.9)]


def make_sim(data_type: str, module: int | None = None, **values: object
             ) -> tuple[SimDetector, dict]:
    sim = SimDetector("SIM1", "cam1:", PortGraph(),
                      options=SimOptions(max_size_x=NX, max_size_y=NY, data_type=data_type,
                                         modules=(2, 2)))
    sim.module = module
    sim.values.update(AcquireTime=ACQUIRE_TIME, GainX=3.0, GainY=-2.0, Reset=1)
    sim.values.update(values)
    params = dict(sim.values)
    sim.prepare(params)
    return sim, params


def frames(sim: SimDetector, params: dict, count: int) -> list[np.ndarray]:
    acquisition = Acquisition.start(params)
    out = []
    for i in range(count):
        frame = sim.produce_frame(FrameContext(acquisition, i, threading.Event()))
        out.append(frame.data.copy())
    return out


def reference_raw(dtype: np.dtype, gain: float, offset: float, count: int,
                  gains_xy: tuple[float, float] = GAINS_XY[0]) -> list[np.ndarray]:
    """The old formula, frame by frame: the reset image, then += inc in the pixel type."""
    inc = c_cast_scalar(gain * ACQUIRE_TIME * 1000.0, dtype)
    ramp = gains_xy[0] * np.arange(NX)[None, :] + gains_xy[1] * np.arange(NY)[:, None]
    raw = c_cast(float(inc) * ramp, dtype)
    raw += c_cast(np.full(raw.shape, offset), dtype)
    out = [raw.copy()]
    for _ in range(count - 1):
        raw += inc
        out.append(raw.copy())
    return out


def gains(dtype: np.dtype) -> list[float]:
    """Gains giving a small increment, one that wraps within 2-3 frames, and a negative one."""
    half = 2.0 ** (dtype.itemsize * 8 - 1)
    per_inc = 1.0 / (ACQUIRE_TIME * 1000.0)
    return [3 * per_inc, 0.703 * half * per_inc, -0.41 * half * per_inc]


@pytest.mark.parametrize("gains_xy", GAINS_XY)
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("data_type", INTEGER_TYPES)
def test_ramp_matches_the_frame_by_frame_formula(data_type: str, region: str,
                                                 gains_xy: tuple[float, float]) -> None:
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    module = 3 if region == "module_reversed" else None
    for gain in gains(dtype):
        sim, params = make_sim(data_type, module, Gain=gain, Offset=5.7, GainX=gains_xy[0],
                               GainY=gains_xy[1], **REGIONS[region])
        got = frames(sim, params, FRAMES)
        expected = reference_raw(dtype, gain, 5.7, FRAMES, gains_xy)
        for k, (image, raw) in enumerate(zip(got, expected)):
            if region == "reversed":
                want = raw[:, 3:33][::-1, ::-1]
            elif region == "binned":
                want = bin_sum(raw[3:21], 1, 0, 2, 3, dtype)
            elif region == "module_reversed":
                want = raw[::-1, :][12:24, 20:40]
            else:
                want = raw
            image = image[0] if region == "two_channels" else image
            assert image.dtype == dtype
            np.testing.assert_array_equal(image, want, err_msg=f"{data_type} gain {gain} "
                                                                f"frame {k}")


@pytest.mark.parametrize("data_type", ["UInt8", "Int16"])
def test_a_plain_ramp_is_written_from_its_row_and_column(data_type: str) -> None:
    """The fast case is the common one: integer gains and an Offset give a separable base
    (frames written from a column and a row); Noise does not (the base image is read)."""
    gain = gains(NUMPY_DTYPES[DATA_TYPES.index(data_type)])[1]
    sim, params = make_sim(data_type, Gain=gain, Offset=3.0)
    frames(sim, params, 2)
    assert sim._pending.separable
    noisy, params = make_sim(data_type, Gain=gain, Noise=9.0)
    frames(noisy, params, 2)
    assert not noisy._pending.separable


@pytest.mark.parametrize("data_type", ["Int8", "UInt16", "Int64", "UInt64"])
def test_noisy_ramp_adds_exactly_inc_per_frame(data_type: str) -> None:
    """With Noise the reset image is random; each later frame is it plus k * inc, wrapped."""
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    gain = gains(dtype)[1]
    sim, params = make_sim(data_type, Gain=gain, Noise=50.0)
    got = frames(sim, params, FRAMES)
    inc = c_cast_scalar(gain * ACQUIRE_TIME * 1000.0, dtype)
    expected = got[0].copy()
    for k in range(1, FRAMES):
        expected += inc
        np.testing.assert_array_equal(got[k], expected, err_msg=f"frame {k}")


@pytest.mark.parametrize("data_type", ["Int16", "UInt32"])
def test_mode_switch_without_reset_continues_from_what_was_shown(data_type: str) -> None:
    """Peaks then LinearRamp with no Reset between: the ramp adds inc to the Peaks image, as
    simDetector does; a ramp's increments must not leak into, or out of, another mode."""
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    gain = gains(dtype)[1]
    sim, params = make_sim(data_type, Gain=gain, PeakVariation=0.0, PeakNumX=2, PeakStepX=15,
                           PeakStartX=5, PeakStartY=9)
    inc = c_cast_scalar(gain * ACQUIRE_TIME * 1000.0, dtype)
    ramp = frames(sim, params, 3)  # increments pending in the one-pass path
    peaks = frames(sim, {**params, "SimMode": 1}, 2)
    fresh, fresh_params = make_sim(data_type, Gain=gain, PeakVariation=0.0, PeakNumX=2,
                                   PeakStepX=15, PeakStartX=5, PeakStartY=9, SimMode=1)
    alone = frames(fresh, fresh_params, 1)[0]
    np.testing.assert_array_equal(peaks[0], alone)  # no ramp left in it
    np.testing.assert_array_equal(peaks[1], alone)
    assert not np.array_equal(peaks[0], ramp[-1] + inc)
    again = frames(sim, params, 3)
    expected = peaks[-1].copy()
    for k, image in enumerate(again):
        expected += inc
        np.testing.assert_array_equal(image, expected, err_msg=f"ramp frame {k} after Peaks")


@pytest.mark.parametrize("data_type", ["UInt8", "Int32"])
def test_reset_starts_the_ramp_again(data_type: str) -> None:
    dtype = NUMPY_DTYPES[DATA_TYPES.index(data_type)]
    gain = gains(dtype)[1]
    sim, params = make_sim(data_type, Gain=gain)
    frames(sim, params, 3)
    sim.values["Reset"] = 1  # as a put of any simulation parameter does
    again = frames(sim, params, 2)
    expected = reference_raw(dtype, gain, 0.0, 2)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])


def test_float_ramp_is_unchanged() -> None:
    sim, params = make_sim("Float32", Gain=0.37, Offset=1.5)
    got = frames(sim, params, FRAMES)
    expected = reference_raw(np.dtype(np.float32), 0.37, 1.5, FRAMES)
    for image, raw in zip(got, expected):
        np.testing.assert_array_equal(image, raw)

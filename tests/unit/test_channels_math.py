"""Multi-channel frames in-process: cutting a channel out (a view, no copy), what NDArrayAddress
J delivers through the port graph, refusals by plugins that handle one channel, the per-channel
statistics against numpy, and the sim's channel formula. Real Plugin objects; no IOC, no CA."""

from __future__ import annotations

import numpy as np
import pytest

from ndflow.channels import (CHANNEL_ATTRIBUTE, address_problem, channel_count, channel_view,
                             check_names, default_names, multi_channel)
from ndflow.drivers.sim import fill_channels
from ndflow.graph import PortGraph
from ndflow.ndarray import Codec, MissingCause, NDArray, region_transform
from ndflow.plugin import Plugin
from ndflow.plugins.stats import STATISTICS, Stats, channel_statistics

NAMES = ("threshold_1", "threshold_2")


def two_channel(uid: int = 7, dtype=np.uint16) -> NDArray:
    rng = np.random.default_rng(uid)
    data = rng.integers(0, 1000, size=(2, 6, 8)).astype(dtype)
    array = multi_channel(data, NAMES, transform=region_transform(2, 3, 1, 1, 8, 6, False, False))
    array.unique_id = uid
    return array


class Recorder(Plugin):
    plugin_type = "Recorder"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen: list[NDArray] = []

    def process(self, array):
        self.seen.append(array)
        return array


class AwareRecorder(Recorder):
    channels_aware = True


def wired(address: int, kind=Recorder) -> tuple[Recorder, Recorder, list[NDArray]]:
    """UP -> P (at `address`, blocking) -> SINK; returns (upstream, plugin, what SINK got)."""
    graph = PortGraph()
    upstream = Recorder("UP", "UP:", graph)
    plugin = kind("P", "P:", graph, input_port="UP", input_address=address, enabled=True,
                  blocking=True)
    sink = Recorder("SINK", "SINK:", graph, input_port="P", enabled=True, blocking=True)
    for component in (upstream, plugin, sink):
        graph.add(component)
    plugin.start()
    sink.start()
    got: list[NDArray] = []
    sink.receive = got.append
    return upstream, plugin, got


# --- the representation -----------------------------------------------------------------------


def test_multi_channel_frame_layout():
    array = two_channel()
    assert array.data.shape == (2, 6, 8) and array.channels == NAMES
    assert [d.size for d in array.dims] == [8, 6, 2]  # dims[0] fastest: W, H, C
    assert array.xyz_sizes() == (8, 6, 2) and array.color_mode == 0
    assert channel_count(array) == 2
    assert channel_count(NDArray.from_numpy(np.zeros((4, 4)))) == 1
    assert array.derive(array.data).channels == NAMES  # outputs keep the names
    with pytest.raises(ValueError, match="does not hold 3 channels"):
        multi_channel(np.zeros((2, 4, 4)), ("a", "b", "c"))


def test_channel_view_is_a_view_with_the_channel_named():
    array = two_channel()
    for j in (1, 2):
        view = channel_view(array, j)
        assert view.data.shape == (6, 8) and view.channels == ()
        assert np.shares_memory(view.data, array.data)  # no copy
        np.testing.assert_array_equal(view.data, array.data[j - 1])
        assert [d.size for d in view.dims] == [8, 6]
        assert view.transform is array.transform and view.unique_id == array.unique_id
        assert view.attributes[CHANNEL_ATTRIBUTE].value == NAMES[j - 1]
        assert CHANNEL_ATTRIBUTE not in array.attributes  # the input is never changed
    assert channel_view(array, 0) is array
    mono = NDArray.from_numpy(np.zeros((4, 4)))
    assert channel_view(mono, 1) is mono
    with pytest.raises(IndexError):
        channel_view(array, 3)


def test_address_problems():
    array = two_channel()
    mono = NDArray.from_numpy(np.zeros((4, 4), np.uint8))
    assert address_problem(mono, 0, False) is None
    assert address_problem(mono, 1, False) is None  # a frame is channel 1 of itself
    assert "has 1 channel;" in address_problem(mono, 2, False)
    assert address_problem(array, 0, True) is None
    assert address_problem(array, 2, False) is None
    text = address_problem(array, 0, False)
    assert "2 channels (threshold_1, threshold_2)" in text and "NDArrayAddress to 1..2" in text
    assert "use 0 (all) or 1..2" in address_problem(array, 3, True)
    packed = array.derive(np.zeros(10, np.uint8), codec=Codec("zlib", dtype="uint16"))
    assert "compressed" in address_problem(packed, 1, True)


def test_channel_names_checked():
    assert default_names(2) == NAMES
    assert check_names(["low", "high"]) == ("low", "high")
    for bad in (["a b"], ["x", "x"], ["1st"], ["a" * 41], [str(i) for i in range(17)]):
        with pytest.raises(ValueError):
            check_names(bad)


# --- through the graph --------------------------------------------------------------------------


@pytest.mark.parametrize("address", [1, 2])
def test_address_j_gets_channel_j(address):
    upstream, plugin, got = wired(address)
    array = two_channel()
    upstream.emit(array)
    assert len(plugin.seen) == 1
    seen = plugin.seen[0]
    np.testing.assert_array_equal(seen.data, array.data[address - 1])
    assert np.shares_memory(seen.data, array.data)
    assert got[0].valid and got[0].attributes["Channel"].value == NAMES[address - 1]
    plugin.before_publish()  # NDArrayBase readbacks describe what process() got
    assert plugin.values["NDimensions"] == 2 and plugin.values["ArraySize1_RBV"] == 6


def test_address_0_gives_all_channels_to_an_aware_plugin():
    upstream, plugin, got = wired(0, AwareRecorder)
    array = two_channel()
    upstream.emit(array)
    assert plugin.seen == [array] and got[0].channels == NAMES


def test_a_plugin_for_one_channel_refuses_all_channels_and_says_so():
    upstream, plugin, got = wired(0)
    upstream.emit(two_channel(uid=3))
    assert plugin.seen == []  # process() never saw the (C, H, W) frame as an image
    assert len(got) == 1 and got[0].status.missing is MissingCause.PROCESSING_ERROR
    assert got[0].unique_id == 3
    assert "set NDArrayAddress to 1..2" in plugin.values["StatusMessage_RBV"]
    assert plugin.values["ArrayCounter"] == 1  # accounted: received = processed + refused


def test_an_address_beyond_the_channels_is_refused():
    upstream, plugin, got = wired(3, AwareRecorder)
    upstream.emit(two_channel())
    assert plugin.seen == [] and got[0].status.missing is MissingCause.PROCESSING_ERROR
    assert "NDArrayAddress 3" in plugin.values["StatusMessage_RBV"]


def test_single_channel_frames_unchanged():
    upstream, plugin, got = wired(0)
    mono = NDArray.from_numpy(np.arange(12, dtype=np.uint8).reshape(3, 4))
    upstream.emit(mono)
    assert plugin.seen == [mono] and got == [mono]


def test_the_address_changed_after_queueing_makes_a_placeholder():
    upstream, plugin, got = wired(2, AwareRecorder)
    array = two_channel()
    plugin.values["NDArrayAddress"] = 5  # as if a put landed between receive and process
    plugin._handle(array)
    assert plugin.seen == [] and got[0].status.missing is MissingCause.PROCESSING_ERROR


# --- Stats per channel --------------------------------------------------------------------------


def numpy_statistics(plane: np.ndarray, width: int = 1) -> dict[str, float]:
    data = plane.astype(np.float64)
    ny, nx = data.shape
    border = np.concatenate([data[:width].ravel(), data[-width:].ravel(),
                             data[:, :width].ravel(), data[:, -width:].ravel()])
    lo, hi = np.unravel_index(np.argmin(data), data.shape), \
        np.unravel_index(np.argmax(data), data.shape)
    return {"MinValue": data.min(), "MinX": lo[1], "MinY": lo[0], "MaxValue": data.max(),
            "MaxX": hi[1], "MaxY": hi[0], "MeanValue": data.mean(), "SigmaValue": data.std(),
            "Total": data.sum(), "Net": data.sum() - border.mean() * data.size}


def test_channel_statistics_against_numpy():
    array = two_channel(dtype=np.float32)
    for plane, got in zip(array.data, channel_statistics(array.data, 1)):
        want = numpy_statistics(plane)
        for name in STATISTICS:
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), name


def stats_plugin() -> Stats:
    stats = Stats("STATS1", "Stats1:", PortGraph())
    stats.values.update(ComputeStatistics=1, ComputeCentroid=1, BgdWidth=1)
    stats.freeze()
    return stats


def test_stats_on_all_channels():
    stats = stats_plugin()
    array = two_channel()
    out = stats.process(array)
    assert out.data is array.data and out.channels == NAMES
    first = numpy_statistics(array.data[0])
    # the PVs and unsuffixed attributes are channel 1's, exactly as for channel 1 alone
    alone = stats_plugin().process(channel_view(array, 1))
    for name in STATISTICS:
        assert stats.values[name] == pytest.approx(first[name]), name
        assert out.attributes[name].value == alone.attributes[name].value
    assert stats.values["CentroidX"] == alone.attributes["CentroidX"].value
    assert stats.values["NumChannels_RBV"] == 2
    for j, label in enumerate(NAMES):
        want = numpy_statistics(array.data[j])
        assert stats.values["ChannelTotal_RBV"][j] == pytest.approx(want["Total"])
        assert stats.values["ChannelSigma_RBV"][j] == pytest.approx(want["SigmaValue"])
        assert stats.values["ChannelMaxX_RBV"][j] == want["MaxX"]
        for name in STATISTICS:
            assert out.attributes[f"{name}_{label}"].value == pytest.approx(want[name]), name
    assert stats.values["ChannelTotal_RBV"][1] != stats.values["ChannelTotal_RBV"][0]
    # a single-channel frame afterwards: the per-channel waveforms no longer pretend
    stats.process(NDArray.from_numpy(np.ones((4, 4), np.uint8)))
    assert stats.values["NumChannels_RBV"] == 1 and stats.values["ChannelTotal_RBV"].size == 0


def test_stats_single_channel_path_unchanged():
    stats = stats_plugin()
    mono = NDArray.from_numpy(np.arange(48, dtype=np.uint16).reshape(6, 8))
    out = stats.process(mono)
    assert stats.values["Total"] == sum(range(48)) and "Total_threshold_1" not in out.attributes
    assert stats.values["NumChannels_RBV"] == 1


# --- the sim's formula --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.float64])
def test_sim_channel_formula(dtype):
    rng = np.random.default_rng(1)
    frame = np.zeros((3, 5, 7), dtype)
    frame[0] = rng.integers(0, 250, size=(5, 7)).astype(dtype)
    gain, offset = 0.5, 3.25
    fill_channels(frame, gain, offset)
    first = frame[0].astype(np.float64)
    for j in (1, 2):
        want = first * gain ** j + j * offset
        if np.dtype(dtype).kind != "f":
            want = np.trunc(want).astype(np.int64).astype(dtype)
        np.testing.assert_array_equal(frame[j], want.astype(dtype))
    wrap = np.zeros((2, 1, 2), np.uint8)
    wrap[0] = [[200, 100]]
    fill_channels(wrap, 2.0, 0.0)  # 400 wraps to 144 like a C cast; 200 stays
    assert wrap[1].tolist() == [[144, 200]]


def test_address_0_set_after_queueing_is_still_refused_by_a_one_channel_plugin():
    upstream, plugin, got = wired(1)
    plugin.values["NDArrayAddress"] = 0  # after receive() let the frame in at address 1
    plugin._handle(two_channel())
    assert plugin.seen == [] and got[0].status.missing is MissingCause.PROCESSING_ERROR


def test_stats_with_statistics_off_still_counts_channels():
    stats = stats_plugin()
    stats.values.update(ComputeStatistics=0)
    stats.freeze()
    out = stats.process(two_channel())
    assert stats.values["NumChannels_RBV"] == 2 and stats.values["ChannelTotal_RBV"].size == 0
    assert "Total_threshold_2" not in out.attributes and "CentroidX" in out.attributes

"""NDPluginScatter, NDPluginGather, NDPluginBadPixel and NDPosPlugin in-process: the round-robin
choice, gather's inputs and order, bad pixels against an independent pixel-by-pixel reference
written from ADCore's algorithm, reading files only from the configured folders, and the
position state machine. Real Plugin objects and threads; no IOC, no CA."""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, AttrSource, NDArray, NDAttribute, NDDimension
from ndflow.plugin import Plugin
from ndflow.plugins.badpixel import (MAX_MEDIAN_HALF_WIDTH, Axis, BadPixelPlugin, FileRefused,
                                     apply_plan, make_plan, parse_bad_pixels, read_pv_file)
from ndflow.plugins.gather import Gather, GatherOptions
from ndflow.plugins.pos import (PositionList, PosPlugin, Positions, parse_positions,
                                position_text)
from ndflow.plugins.scatter import Scatter, choose, would_accept


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def frame(uid: int, data: np.ndarray | None = None, acquisition: Acquisition | None = None):
    array = NDArray.from_numpy(np.full((3, 4), uid, np.uint16) if data is None else data)
    array.unique_id = uid
    array.acquisition = acquisition
    return array


class Recorder(Plugin):
    """Collects the unique ids of what it processes (valid frames and placeholders)."""

    def __init__(self, *args, delay: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.delay = delay
        self.ids: list[int] = []
        self.lost: list[int] = []

    def process(self, array):
        time.sleep(self.delay)
        self.ids.append(array.unique_id)
        return array

    def process_missing(self, array):
        self.lost.append(array.unique_id)
        return array


# --- Scatter: the choice --------------------------------------------------------------------------

def test_round_robin_takes_turns_and_skips_a_full_client():
    clients = ["a", "b", "c"]
    full: set[str] = set()
    nxt, order = 0, []
    for _ in range(6):
        index, nxt = choose(clients, nxt, lambda c: c not in full)
        order.append(clients[index])
    assert order == ["a", "b", "c", "a", "b", "c"]
    full.add("b")  # b's queue is full: its turn passes to c, and the turn goes on after c
    index, nxt = choose(clients, 1, lambda c: c not in full)
    assert clients[index] == "c" and nxt == 0


def test_when_every_client_is_full_the_last_one_tried_takes_it():
    clients = ["a", "b", "c"]
    # starting at b, the last one tried is a (it drops the array and counts it)
    assert choose(clients, 1, lambda c: False) == (0, 1)
    assert choose(clients, 0, lambda c: False) == (2, 0)  # the drops rotate with the turn


def test_would_accept_reads_enable_blocking_throttle_and_queue():
    graph = PortGraph()
    p = Recorder("P", "P:", graph, enabled=True, queue_size=2)
    assert would_accept(p)
    p.values["EnableCallbacks"] = 0
    assert not would_accept(p)
    p.values["EnableCallbacks"] = 1
    p._inbox.offer(frame(1), 2)
    p._inbox.offer(frame(2), 2)
    assert not would_accept(p)  # queue full
    p.values["BlockingCallbacks"] = 1
    assert would_accept(p)  # a blocking client always takes it
    p.values["BlockingCallbacks"] = 0
    p._inbox.get(0)
    p.values["MinCallbackTime"] = 10.0
    p._last_callback = time.monotonic()
    assert not would_accept(p)  # throttled: ADCore passes to the next client


def scatter_gather(n_clients: int = 3, queue: int = 200, sort: bool = True, delays=None):
    """SRC -> Scatter -> n Recorders -> Gather (inputs 1..n) -> SINK, all started."""
    graph = PortGraph()
    src = Recorder("SRC", "s:", graph)
    scatter = Scatter("SC", "Scatter1:", graph, input_port="SRC", enabled=True,
                      queue_size=queue)
    clients = [Recorder(f"C{i}", f"C{i}:", graph, input_port="SC", enabled=True,
                        queue_size=queue, delay=(delays or [0.0] * n_clients)[i])
               for i in range(n_clients)]
    gather = Gather("GA", "Gather1:", graph, enabled=True, queue_size=queue,
                    options=GatherOptions(inputs=[c.port for c in clients]))
    sink = Recorder("SINK", "k:", graph, input_port="GA", enabled=True, queue_size=queue)
    for c in (src, scatter, *clients, gather, sink):
        graph.add(c)
    gather.values.update(SortMode=int(sort), SortTime=2.0, SortSize=queue)
    for c in (scatter, *clients, gather, sink):
        c.start()
    return graph, src, scatter, clients, gather, sink


def test_scatter_gather_every_id_exactly_once_and_sorted_by_unique_id():
    graph, src, scatter, clients, gather, sink = scatter_gather(delays=[0.004, 0.0, 0.002])
    try:
        acquisition = Acquisition.start({})
        acquisition.first_id = 1
        for uid in range(1, 91):
            src.emit(frame(uid, acquisition=acquisition))
        assert _wait(lambda: len(sink.ids) + len(sink.lost) == 90)
        assert [len(c.ids) for c in clients] == [30, 30, 30]  # one each in turn
        assert sorted(sum((c.ids for c in clients), [])) == list(range(1, 91))
        assert sink.ids == list(range(1, 91)) and not sink.lost  # Sorted: uniqueId order
        assert clients[0].ids[:3] == [1, 4, 7]
    finally:
        for c in (scatter, *clients, gather, sink):
            c.shutdown()


def test_unsorted_gather_passes_arrival_order_but_loses_nothing():
    graph, src, scatter, clients, gather, sink = scatter_gather(sort=False,
                                                                delays=[0.02, 0.0, 0.0])
    try:
        for uid in range(1, 31):
            src.emit(frame(uid))
        assert _wait(lambda: len(sink.ids) == 30)
        assert sorted(sink.ids) == list(range(1, 31))
        assert sink.ids != list(range(1, 31))  # the slow client's frames arrive late
    finally:
        for c in (scatter, *clients, gather, sink):
            c.shutdown()


def test_a_full_client_is_skipped_and_the_last_one_tried_drops_when_all_are_full():
    graph = PortGraph()
    src = Recorder("SRC", "s:", graph)
    scatter = Scatter("SC", "Scatter1:", graph, input_port="SRC", enabled=True,
                      blocking=True)
    clients = [Recorder(f"C{i}", f"C{i}:", graph, input_port="SC", enabled=True,
                        queue_size=1) for i in range(2)]
    for c in (src, scatter, *clients):
        graph.add(c)
    scatter.start()
    for c in clients:  # never started: their queues fill and stay full
        graph.connect(c, "SC")
    for uid in range(1, 7):
        src.emit(frame(uid))
    # 1 -> C0, 2 -> C1 (both now full); 3..6: C0 is tried first and skipped, C1 is the last
    # one tried and drops each (as NDPluginScatter's code does: the round starts where it did)
    assert [c._inbox.frames for c in clients] == [1, 1]
    assert [c.values["DroppedArrays"] for c in clients] == [0, 4]
    clients[0]._inbox.get(0)  # C0 has room again: the next array goes there
    src.emit(frame(7))
    assert [c._inbox.frames for c in clients] == [1, 1]
    assert [c.values["DroppedArrays"] for c in clients] == [0, 4]


def test_disabled_clients_are_not_in_the_turn():
    graph = PortGraph()
    src = Recorder("SRC", "s:", graph)
    scatter = Scatter("SC", "Scatter1:", graph, input_port="SRC", enabled=True, blocking=True)
    on = Recorder("ON", "on:", graph, input_port="SC", enabled=True, blocking=True)
    off = Recorder("OFF", "off:", graph, input_port="SC", enabled=False, blocking=True)
    for c in (src, scatter, on, off):
        graph.add(c)
    for c in (scatter, on, off):
        c.start()
    for uid in range(1, 5):
        src.emit(frame(uid))
    assert on.ids == [1, 2, 3, 4] and off.ids == []


# --- Gather: inputs -------------------------------------------------------------------------------

def test_gather_input_1_is_ndarrayport_and_bad_inputs_are_refused():
    graph = PortGraph()
    a, b = Recorder("A", "a:", graph), Recorder("B", "b:", graph)
    gather = Gather("GA", "Gather1:", graph, enabled=True, blocking=True,
                    options=GatherOptions(inputs=["A", {"port": "B", "address": 0}]))
    sink = Recorder("SINK", "k:", graph, input_port="GA", enabled=True, blocking=True)
    for c in (a, b, gather, sink):
        graph.add(c)
    gather.start()
    sink.start()
    assert gather.values["NDArrayPort"] == gather.values["NDArrayPort_1"] == "A"
    assert gather.values["NDArrayPort_2"] == "B" and gather.values["NDArrayPort_8"] == ""
    assert len(gather.params.pv_suffixes()) > 0 and "NDArrayAddress_8_RBV" in \
        gather.params.pv_suffixes()
    a.emit(frame(1))
    b.emit(frame(2))
    assert sink.ids == [1, 2]
    # input 2 rewired to nothing; unknown ports and loops refused, the old port kept
    assert gather.put_hooks["NDArrayPort_2"]("") == ""
    b.emit(frame(3))
    assert sink.ids == [1, 2]
    assert gather.put_hooks["NDArrayPort_3"]("NOPE") == ""
    assert gather.put_hooks["NDArrayPort_3"]("SINK") == ""  # would feed Gather its own output
    assert "loop" in gather.values["StatusMessage_RBV"]
    # writing NDArrayPort_1 moves NDArrayPort too
    assert gather.put_hooks["NDArrayPort_1"]("B") == "B"
    assert gather.values["NDArrayPort"] == "B"
    b.emit(frame(4))
    assert sink.ids == [1, 2, 4]
    gather.shutdown()
    a.emit(frame(5))
    assert graph.subscribers("A") == ()  # no input left behind


def test_gather_inputs_naming_no_port_are_left_unconnected_at_start():
    graph = PortGraph()
    gather = Gather("GA", "Gather1:", graph, options=GatherOptions(inputs=["NOPE", "NADA"]))
    graph.add(gather)
    gather.start()
    try:
        assert gather.values["NDArrayPort_1"] == gather.values["NDArrayPort"] == ""
        assert gather.values["NDArrayPort_2"] == ""
        assert "NADA" in gather.values["StatusMessage_RBV"]
        assert gather.threads()  # serving all the same
    finally:
        gather.shutdown()


def test_gather_options_disagreeing_with_input_are_a_config_error():
    with pytest.raises(ValueError, match="disagree"):
        Gather("GA", "Gather1:", PortGraph(), input_port="X",
               options=GatherOptions(inputs=["Y"]))


# --- BadPixel: the file ---------------------------------------------------------------------------

ADCORE_EXAMPLE = """{ "Bad pixels" :
    [
      {"Pixel" : [200,100], "Set" : 0},
      {"Pixel" : [300,100], "Set" : 1000},
      {"Pixel" : [200,200], "Replace" : [1,0]},
      {"Pixel" : [400,200], "Replace" : [1,1]},
      {"Pixel" : [200,300], "Median" : [1,1]},
      {"Pixel" : [400,300], "Median" : [3,3]}
    ]
  }"""


def test_parses_adcore_example_in_adcores_order():
    pixels = parse_bad_pixels(ADCORE_EXAMPLE)
    assert [(p.x, p.y, p.mode) for p in pixels] == [
        (200, 100, "Set"), (300, 100, "Set"), (200, 200, "Replace"), (400, 200, "Replace"),
        (200, 300, "Median"), (400, 300, "Median")]
    assert pixels[1].value == 1000 and (pixels[3].dx, pixels[3].dy) == (1, 1)


def test_first_entry_of_a_pixel_wins_and_replace_beats_set_beats_median():
    pixels = parse_bad_pixels(json.dumps({"Bad pixels": [
        {"Pixel": [1, 1], "Set": 5}, {"Pixel": [1, 1], "Set": 9},
        {"Pixel": [2, 1], "Median": [1, 1], "Set": 3, "Replace": [1, 0]},
        {"Pixel": [3, 1], "Median": [1, 1], "Set": 3}]}))
    assert [(p.x, p.mode, p.value) for p in pixels] == [(1, "Set", 5.0), (2, "Replace", 0.0),
                                                          (3, "Set", 3.0)]


@pytest.mark.parametrize("text, why", [
    ("", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ('{"bad": []}', '"Bad pixels"'),
    ('{"Bad pixels": {}}', "must be a list"),
    ('{"Bad pixels": [{"Set": 1}]}', 'no "Pixel"'),
    ('{"Bad pixels": [{"Pixel": [1], "Set": 1}]}', "two integers"),
    ('{"Bad pixels": [{"Pixel": [1.5, 2], "Set": 1}]}', "integer"),
    ('{"Bad pixels": [{"Pixel": [true, 2], "Set": 1}]}', "integer"),
    ('{"Bad pixels": [{"Pixel": [1, 2]}]}', 'one of "Set"'),
    ('{"Bad pixels": [{"Pixel": [1, 2], "Set": NaN}]}', "NaN"),
    ('{"Bad pixels": [{"Pixel": [1, 2], "Set": "x"}]}', "finite number"),
    ('{"Bad pixels": [{"Pixel": [1, 2], "Median": [-1, 1]}]}', "outside 0.."),
    (f'{{"Bad pixels": [{{"Pixel": [1, 2], "Median": [{MAX_MEDIAN_HALF_WIDTH + 1}, 1]}}]}}',
     "outside 0.."),
    ('{"Bad pixels": [{"Pixel": [99999999999, 2], "Set": 1}]}', "outside"),
    ("[" * 100000 + "]" * 100000, "JSON"),
])
def test_garbage_files_are_refused_with_a_reason(text, why):
    with pytest.raises(FileRefused, match=why.replace("(", r"\(").replace("[", r"\[")):
        parse_bad_pixels(text)


# --- BadPixel: the correction against an independent reference ------------------------------------

def reference(data: np.ndarray, entries: list[dict], ax: Axis, ay: Axis,
              array_rule: bool = False) -> np.ndarray:
    """NDPluginBadPixel::fixBadPixelsT written out pixel by pixel, in place, in ADCore's set
    order (y, then x; first entry of a pixel kept), with Python's statistics.median. A source
    is bad when its detector coordinates are a bad pixel (ADCore); with `array_rule`, when its
    array pixel holds one (ndflow's rule, the same without binning)."""
    out = data.copy()
    seen: dict[tuple[int, int], dict] = {}
    for e in entries:
        seen.setdefault(tuple(e["Pixel"]), e)
    bad = set(seen)

    def index(cx: int, cy: int):
        ix, iy = (cx - ax.offset) // ax.binning, (cy - ay.offset) // ay.binning
        if ax.reverse:
            ix = ax.size - 1 - ix
        if ay.reverse:
            iy = ay.size - 1 - iy
        return (iy, ix) if 0 <= ix < ax.size and 0 <= iy < ay.size else None

    bad_cells = {index(*c) for c in bad} - {None}

    def is_bad(c: tuple[int, int]) -> bool:
        return index(*c) in bad_cells if array_rule else c in bad

    def cast(value: float):
        if out.dtype.kind in "iu":
            return np.array(math.trunc(value)).astype(out.dtype)
        return out.dtype.type(value)

    for (x, y) in sorted(seen, key=lambda c: (c[1], c[0])):
        e, target = seen[(x, y)], index(x, y)
        if target is None:
            continue
        if "Replace" in e:
            src = (x + e["Replace"][0] * ax.binning, y + e["Replace"][1] * ay.binning)
            where = index(*src)
            if not is_bad(src) and where is not None:
                out[target] = out[where]
        elif "Set" in e:
            out[target] = cast(e["Set"])
        else:
            mx, my = e["Median"]
            values = []
            for i in range(-my, my + 1):
                for j in range(-mx, mx + 1):
                    c = (x + j * ax.binning, y + i * ay.binning)
                    if (i, j) == (0, 0) or is_bad(c) or index(*c) is None:
                        continue
                    values.append(float(out[index(*c)]))
            if values:
                out[target] = cast(statistics.median(values))
    return out


def random_entries(rng: np.random.Generator, nx: int, ny: int, count: int, margin: int = 3):
    coords = set()
    while len(coords) < count:
        coords.add((int(rng.integers(-margin, nx + margin)), int(rng.integers(-margin,
                                                                             ny + margin))))
    entries = []
    for x, y in coords:
        kind = rng.integers(3)
        if kind == 0:
            entries.append({"Pixel": [x, y], "Set": float(rng.integers(0, 60000))})
        elif kind == 1:
            entries.append({"Pixel": [x, y], "Replace": [int(rng.integers(-2, 3)),
                                                         int(rng.integers(-2, 3))]})
        else:
            entries.append({"Pixel": [x, y], "Median": [int(rng.integers(0, 3)),
                                                        int(rng.integers(0, 3))]})
    return entries


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_mono_frame_equals_the_reference(dtype):
    rng = np.random.default_rng(7)
    ny, nx = 40, 50
    data = rng.integers(0, 250, (ny, nx)).astype(dtype)
    if data.dtype.kind == "f":
        data += rng.random((ny, nx)).astype(dtype)
    entries = random_entries(rng, nx, ny, 120)
    ax, ay = Axis(nx), Axis(ny)
    plan = make_plan(parse_bad_pixels(json.dumps({"Bad pixels": entries})), ax, ay)
    got = apply_plan(plan, data, 1, 0)
    np.testing.assert_array_equal(got, reference(data, entries, ax, ay))
    assert plan.outside == sum(not (0 <= e["Pixel"][0] < nx and 0 <= e["Pixel"][1] < ny)
                               for e in entries)
    assert not np.shares_memory(got, data)


@pytest.mark.parametrize("ax, ay", [
    (Axis(20, offset=10, binning=2), Axis(15, offset=4, binning=3)),   # region + binning
    (Axis(30, offset=5, reverse=True), Axis(25, offset=0, reverse=True)),  # reversed readout
])
def test_region_binning_and_reversal_map_detector_pixels(ax, ay):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, (ay.size, ax.size)).astype(np.uint16)
    entries = random_entries(rng, ax.offset + ax.size * ax.binning,
                             ay.offset + ay.size * ay.binning, 120)
    plan = make_plan(parse_bad_pixels(json.dumps({"Bad pixels": entries})), ax, ay)
    binned = ax.binning > 1 or ay.binning > 1
    np.testing.assert_array_equal(apply_plan(plan, data, 1, 0),
                                  reference(data, entries, ax, ay, array_rule=binned))


def test_a_known_frame_by_hand():
    data = np.arange(80, dtype=np.uint16).reshape(8, 10) * 3 % 17
    pixels = parse_bad_pixels(json.dumps({"Bad pixels": [
        {"Pixel": [2, 1], "Set": 7}, {"Pixel": [5, 3], "Replace": [1, 0]},
        {"Pixel": [6, 3], "Set": 1000}, {"Pixel": [4, 4], "Median": [1, 1]},
        {"Pixel": [0, 0], "Median": [2, 1]}, {"Pixel": [99, 99], "Set": 1}]}))
    out = apply_plan(make_plan(pixels, Axis(10), Axis(8)), data, 1, 0)
    expected = data.copy()
    expected[1, 2] = 7
    expected[3, 6] = 1000
    # (5,3) would take (6,3), itself bad: left alone. (4,4): 3x3 without the bad (5,3).
    expected[4, 4] = np.median([data[3, 3], data[3, 4], data[4, 3], data[4, 5], data[5, 3],
                                data[5, 4], data[5, 5]])
    # (0,0): 5x3 clipped to the frame, without itself and the bad (2,1); (6+13)/2 truncated
    expected[0, 0] = int(np.median([data[0, 1], data[0, 2], data[1, 0], data[1, 1]]))
    np.testing.assert_array_equal(out, expected)


def test_one_dimensional_and_rgb_arrays():
    pixels = parse_bad_pixels('{"Bad pixels": [{"Pixel": [3, 0], "Median": [1, 0]},'
                              '{"Pixel": [5, 1], "Set": 0}, {"Pixel": [1, 1], "Set": 9}]}')
    line = np.array([1, 2, 3, 100, 5, 6], np.int32)
    out = apply_plan(make_plan(pixels, Axis(6), Axis(1)), line, 0, None)
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 6])  # y=1 pixels are off a 1-D array
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # RGB1: numpy (y, x, colour)
    out = apply_plan(make_plan(pixels, Axis(6), Axis(4)), rgb, 1, 0)
    assert (out[1, 5] == 0).all() and (out[1, 1] == 9).all()
    np.testing.assert_array_equal(out[0, 3], (rgb[0, 2].astype(float) + rgb[0, 4]) // 2)


def test_plugin_output_uses_the_frames_dims_and_leaves_the_input_alone():
    plugin = BadPixelPlugin("BP", "BadPix1:", PortGraph())
    plugin._install(tuple(parse_bad_pixels('{"Bad pixels": [{"Pixel": [12, 7], "Set": 1}]}')),
                    "test", True)
    data = np.full((5, 8), 50, np.uint16)
    array = frame(1, data)
    array.dims = [NDDimension(8, offset=10, binning=1), NDDimension(5, offset=6, binning=1)]
    out = plugin.process(array)
    assert out.data[1, 2] == 1 and (data == 50).all()
    assert plugin.values["PixelsOutside_RBV"] == 0
    array.dims = [NDDimension(8), NDDimension(5)]  # the same pixel is now outside
    assert (plugin.process(array).data == 50).all()
    assert plugin.values["PixelsOutside_RBV"] == 1
    assert "outside" in plugin.values["StatusMessage_RBV"]


# --- files only from the configured folders -------------------------------------------------------

@pytest.fixture
def site(tmp_path: Path) -> Site:
    (tmp_path / "conf").mkdir()
    (tmp_path / "data").mkdir()
    return Site(tmp_path / "conf", data_roots=(tmp_path / "data",))


def test_reads_under_the_config_folder_and_data_roots(site, tmp_path):
    (tmp_path / "conf" / "bp.json").write_text("{}")
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "bp.json").write_text("[]")
    assert read_pv_file("bp.json", site, "bad-pixel file", 100) == b"{}"
    assert read_pv_file(str(tmp_path / "data/sub/bp.json"), site, "x", 100) == b"[]"


def test_bad_names_are_refused_with_a_reason(site, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (tmp_path / "data" / "link.json").symlink_to(outside)
    (tmp_path / "data" / "big.json").write_bytes(b" " * 101)
    os.mkfifo(tmp_path / "data" / "fifo")
    cases = {
        str(outside): "read only from",
        "../elsewhere.json": "'..'",
        str(tmp_path / "data" / "link.json"): "symbolic link",
        str(tmp_path / "data" / "big.json"): "larger than",
        str(tmp_path / "data" / "missing.json"): "no such file",
        str(tmp_path / "data"): "folder|regular",
        str(tmp_path / "data" / "fifo"): "not a regular file",
        "": "no file name",
    }
    for name, why in cases.items():
        with pytest.raises(FileRefused, match=why):
            read_pv_file(name, site, "bad-pixel file", 100)


def test_a_refused_file_keeps_the_previous_list(site, tmp_path):
    plugin = BadPixelPlugin("BP", "BadPix1:", PortGraph())
    plugin.site = site
    good = tmp_path / "data" / "good.json"
    good.write_text('{"Bad pixels": [{"Pixel": [1, 1], "Set": 0}]}')
    (tmp_path / "data" / "bad.json").write_text('{"Bad pixels": [{"Pixel": [1]}]}')
    asyncio.run(plugin.put_FileName(str(good)))
    assert plugin.values["NumBadPixels_RBV"] == 1 and plugin.values["FileValid_RBV"] == 1
    asyncio.run(plugin.put_FileName(str(tmp_path / "data" / "bad.json")))
    assert plugin.values["FileValid_RBV"] == 0 and len(plugin._list[1]) == 1
    assert "bad pixel 1" in plugin.values["StatusMessage_RBV"]
    assert "previous 1 bad pixels stay" in plugin.values["StatusMessage_RBV"]
    asyncio.run(plugin.put_FileName(""))
    assert plugin.values["NumBadPixels_RBV"] == 0


# --- NDPosPlugin ----------------------------------------------------------------------------------

DEMO_XML = """<pos_layout>
  <dimensions><dimension name="x"></dimension><dimension name="y"></dimension></dimensions>
  <positions>
    <position x="39" y="0"></position><position x="39" y="1"></position>
    <position x="39.5" y="2"></position><position x="40" y="1e-07"></position>
  </positions>
</pos_layout>"""


def test_parses_adcore_xml_and_json():
    xml = parse_positions(DEMO_XML)
    assert xml.names == ("x", "y")
    np.testing.assert_array_equal(xml.table, [[39, 0], [39, 1], [39.5, 2], [40, 1e-7]])
    js = parse_positions('{"dimensions": ["x", "y"], "positions": [[39, 0], {"y": 1, "x": 39}]}')
    np.testing.assert_array_equal(js.table, [[39, 0], [39, 1]])
    assert position_text(("y", "x"), np.array([1e-7, 39.25])) == "[x=39.25,y=1e-07]"


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("hello", "neither XML"),
    ("<pos_layout><dimensions>", "not valid XML"),
    ("<other/>", "not <pos_layout>"),
    ('<!DOCTYPE p [<!ENTITY a "aaaa">]><pos_layout/>', "DOCTYPE"),
    ("<!DOCTYPE pos_layout><pos_layout/>", "DOCTYPE"),
    ('<pos_layout><positions><position x="1"/></positions></pos_layout>', "before any"),
    ('<pos_layout><dimensions><dimension name="x"/></dimensions><positions>'
     '<position y="1"/></positions></pos_layout>', "missing"),
    ('<pos_layout><dimensions><dimension name="x"/></dimensions><positions>'
     '<position x="1.5abc"/></positions></pos_layout>', "not a number"),
    ('<pos_layout><dimensions><dimension name="x"/></dimensions><positions>'
     '<position x="inf"/></positions></pos_layout>', "finite"),
    ('{"dimensions": ["x"], "positions": [[1, 2]]}', "2 values for 1"),
    ('{"dimensions": [], "positions": []}', "list of names"),
    ('{"positions": []}', '"dimensions"'),
])
def test_garbage_positions_are_refused_with_a_reason(text, why):
    with pytest.raises(FileRefused, match=why):
        parse_positions(text)


def test_position_list_drops_from_the_front_across_blocks():
    plist = PositionList()
    plist.append(Positions(("a",), np.array([[1.0], [2.0]])))
    plist.append(Positions(("b",), np.array([[3.0], [4.0], [5.0]])))
    assert plist.size == 5 and plist.get(2) == (("b",), 3.0)
    plist.drop_front(3)
    assert plist.size == 2 and plist.get(0)[1] == 4.0
    plist.drop_front(10)
    assert plist.size == 0


def pos_plugin(mode: int = 0, **values) -> PosPlugin:
    plugin = PosPlugin("POS", "Pos1:", PortGraph())
    plugin._positions.append(parse_positions(DEMO_XML))
    plugin.values.update({"Mode": mode, "Qty_RBV": 4, "Running": 1, "ExpectedID_RBV": 1,
                          **values})
    return plugin


def positions_of(outputs) -> list:
    return [None if o is None else (o.attributes["x"].value, o.attributes["y"].value)
            for o in outputs]


def test_discard_mode_attaches_in_order_and_stops_at_the_end():
    plugin = pos_plugin()
    outs = [plugin.process(frame(uid)) for uid in range(1, 6)]
    assert positions_of(outs) == [(39, 0), (39, 1), (39.5, 2), (40, 1e-7), None]
    attr = outs[0].attributes["x"]
    assert (attr.description, attr.source_type, attr.source) == ("Position of NDArray",
                                                                 AttrSource.DRIVER, "NDPosPlugin")
    assert plugin.values["Running"] == 0 and plugin.values["Qty_RBV"] == 0
    assert plugin.values["Position_RBV"] == "[x=40,y=1e-07]"


def test_missing_frames_skip_their_positions_and_duplicates_are_dropped():
    for mode in (0, 1):
        plugin = pos_plugin(mode)
        outs = [plugin.process(frame(uid)) for uid in (1, 3, 3, 4)]
        assert positions_of(outs) == [(39, 0), (39.5, 2), None, (40, 1e-7)], mode
        assert plugin.values["Missing"] == 1 and plugin.values["Duplicate"] == 1
        assert plugin.values["Running"] == 0  # ran out with the last position (both modes)
        assert plugin.values["Qty_RBV"] == (4 if mode else 0)  # Keep keeps the list
    plugin = pos_plugin(1)
    assert positions_of([plugin.process(frame(9))]) == [None]  # beyond the last position
    assert plugin.values["Running"] == 0 and plugin.values["Missing"] == 4


def test_keep_mode_keeps_the_list_and_reset_rewinds():
    plugin = pos_plugin(1)
    [plugin.process(frame(uid)) for uid in (1, 2)]
    assert plugin.values["Index_RBV"] == 2 and plugin.values["Qty_RBV"] == 4
    plugin.put_Reset(1)
    plugin.values["ExpectedID_RBV"] = 7
    assert positions_of([plugin.process(frame(7))]) == [(39, 0)]


def test_id_from_an_attribute_and_a_frame_without_it_stops():
    plugin = pos_plugin(0, IDName="Tick", IDStart=10, ExpectedID_RBV=10, IDDifference=2)
    a, b = frame(1), frame(2)
    a.attributes["Tick"] = NDAttribute("Tick", 10)
    b.attributes["Tick"] = NDAttribute("Tick", 14)  # 12 was lost
    assert positions_of([plugin.process(a), plugin.process(b)]) == [(39, 0), (39.5, 2)]
    assert plugin.values["ExpectedID_RBV"] == 16 and plugin.values["Missing"] == 1
    assert plugin.process(frame(3)) is None and plugin.values["Running"] == 0
    assert "Tick" in plugin.values["StatusMessage_RBV"]


def test_not_running_passes_nothing():
    plugin = pos_plugin(Running=0)
    assert plugin.process(frame(1)) is None
    assert plugin.process_missing(NDArray.missing(None)) is None  # type: ignore[arg-type]
    assert plugin.values["Qty_RBV"] == 4


def test_filename_appends_and_refuses_without_changing_the_list(site, tmp_path):
    plugin = PosPlugin("POS", "Pos1:", PortGraph())
    plugin.site = site
    asyncio.run(plugin.put_Filename(DEMO_XML))
    (tmp_path / "data" / "p.json").write_text('{"dimensions": ["z"], "positions": [[1], [2]]}')
    asyncio.run(plugin.put_Filename(str(tmp_path / "data" / "p.json")))
    assert plugin.values["Qty_RBV"] == 6 and plugin.values["FileValid_RBV"] == 1
    (tmp_path / "data" / "bad.xml").write_text('<pos_layout><dimensions><dimension name="s3cret"'
                                              '/></dimensions><positions><position/>'
                                              '</positions></pos_layout>')
    asyncio.run(plugin.put_Filename(str(tmp_path / "data" / "bad.xml")))
    message = plugin.values["StatusMessage_RBV"]
    assert plugin.values["FileValid_RBV"] == 0 and plugin.values["Qty_RBV"] == 6
    assert "position 1" in message and "s3cret" not in message  # a file is never quoted
    asyncio.run(plugin.put_Filename("/etc/passwd"))
    assert "read only from" in plugin.values["StatusMessage_RBV"]
    plugin.put_Delete(1)
    assert plugin.values["Qty_RBV"] == 0 and plugin._positions.size == 0

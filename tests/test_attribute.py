"""NDPluginAttribute behind a Stats plugin: array ids and time stamps, a Stats result, driver
attributes from cam1:NDAttributesFile, sums, the time series, a missing name and Reset."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import running_ioc
from test_acquisition import get, put, wait_for

CONFIG = """
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 32, max_size_y: 16}}
plugins:
  - {type: stats, port: STATS1, prefix: "Stats1:", input: SIM1,
     options: {xsize: 32, ysize: 16, hist_size: 16, nchans: 16}}
  - {type: attribute, port: ATTR1, prefix: "Attr1:", input: STATS1,
     options: {nchannels: 7, nchans: 8}}
"""
ATTRIBUTES = ('<Attributes>'
              '<Attribute name="Gain" type="PARAM" source="Gain" datatype="DOUBLE"/>'
              '<Attribute name="C" type="CONST" source="3.5" datatype="DOUBLE"/>'
              '<Attribute name="Label" type="CONST" source="text" datatype="STRING"/>'
              '</Attributes>')
CHANNELS = {1: "NDArrayUniqueId", 2: "NDArrayTimeStamp", 3: "Total", 4: "NDArrayEpicsTSSec",
            5: "Gain", 6: "C", 7: "NoSuchAttr"}


@pytest.fixture(scope="module")
def p(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("attr")) as ioc:
        p = ioc.prefix
        for name, value in [("ImageMode", "Single"), ("WaitForPlugins", "Yes"),
                            ("AcquireTime", 0.001), ("NDAttributesFile", ATTRIBUTES)]:
            put(p + "cam1:" + name, value)
        assert get(p + "cam1:NDAttributesStatus", as_string=True) == "Attributes file OK"
        for n, name in CHANNELS.items():
            put(p + f"Attr1:{n}:AttrName", name)
        yield p


def values(p: str, kind: str) -> dict[int, float]:
    return {n: get(p + f"Attr1:{n}:{kind}_RBV") for n in CHANNELS}


def test_values_sums_and_time_series_over_frames(p):
    assert get(p + "Attr1:PluginType_RBV") == "NDPluginAttribute"
    assert get(p + "Attr1:3:AttrName_RBV", as_string=True) == "Total"
    put(p + "Attr1:Reset", 1)
    put(p + "Attr1:TS:TSNumPoints", 3)
    put(p + "Attr1:TS:TSAcquire", 1, wait=False)
    assert wait_for(lambda: get(p + "Attr1:TS:TSAcquiring", as_string=True) == "Acquiring")
    frames = []
    for gain in (1.0, 2.0, 4.0):
        put(p + "cam1:Gain", gain)
        put(p + "cam1:Acquire", 1)
        frame = {1: get(p + "Stats1:UniqueId_RBV"), 2: get(p + "Stats1:TimeStamp_RBV"),
                 3: get(p + "Stats1:Total_RBV"), 4: get(p + "Stats1:EpicsTSSec_RBV"),
                 5: gain, 6: 3.5, 7: 0.0}
        got = values(p, "Value")
        for n, expected in frame.items():
            assert got[n] == pytest.approx(expected, rel=1e-12), CHANNELS[n]
        frames.append(frame)
    assert len({f[3] for f in frames}) == 3  # Total really changed from frame to frame
    sums = values(p, "ValueSum")
    for n in CHANNELS:
        assert sums[n] == pytest.approx(sum(f[n] for f in frames), rel=1e-12), CHANNELS[n]
    # Fixed length, 3 points: the series stopped and published itself
    assert wait_for(lambda: get(p + "Attr1:TS:TSAcquiring", as_string=True) == "Done")
    for n in (1, 3, 5):
        series = np.asarray(get(p + f"Attr1:{n}:TSArrayValue", count=3))
        np.testing.assert_allclose(series, [f[n] for f in frames], err_msg=CHANNELS[n])
    assert "NoSuchAttr" in get(p + "Attr1:StatusMessage_RBV", as_string=True)


def test_reset_zeroes_values_and_sums(p):
    put(p + "cam1:Acquire", 1)
    assert get(p + "Attr1:1:ValueSum_RBV") > 0
    put(p + "Attr1:Reset", 1)
    assert get(p + "Attr1:Reset", as_string=True) == "Done Reset"
    assert all(v == 0.0 for v in values(p, "Value").values())
    assert all(v == 0.0 for v in values(p, "ValueSum").values())
    put(p + "cam1:Acquire", 1)  # sums start again from this frame
    assert get(p + "Attr1:1:ValueSum_RBV") == get(p + "Stats1:UniqueId_RBV")


def test_string_attribute_is_not_a_number(p):
    put(p + "Attr1:6:AttrName", "Label")
    put(p + "cam1:Acquire", 1)
    assert "not a number" in get(p + "Attr1:StatusMessage_RBV", as_string=True)
    put(p + "Attr1:6:AttrName", "C")
    put(p + "cam1:Acquire", 1)
    assert get(p + "Attr1:6:Value_RBV") == 3.5

"""The time series of a Stats plugin (`Stats1:TS:`): extreme TSTimePerPoint and TSAveragingTime
puts. TSNumAverage = round(TSAveragingTime / TSTimePerPoint) is a 32-bit PV: 1e-300 s per point
made it 1e299, which no client could read any more (caproto failed every read and monitor of it
with an OverflowError). It is capped, the averaging time read back is the one that count makes,
and the series still records afterwards."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import running_ioc
from test_acquisition import get, put, wait_for

CONFIG = """
transports: [ca]
drivers:
  - {type: sim, port: SIM1, prefix: "cam1:", options: {max_size_x: 32, max_size_y: 24}}
plugins:
  - {type: stats, port: STATS1, prefix: "Stats1:", input: SIM1, enabled: true,
     blocking: true, options: {nchans: 16}}
"""
INT32_MAX = 2 ** 31 - 1


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(CONFIG, tmp_path_factory.mktemp("timeseries")) as ioc:
        yield ioc


def test_extreme_time_per_point_is_bounded_and_the_series_still_records(ioc):
    p = ioc.prefix
    ts = p + "Stats1:TS:"
    put(ts + "TSAveragingTime", 0.1)
    # (TSTimePerPoint put, its readback, TSNumAverage, TSAveragingTime_RBV)
    cases = [(1e-300, 1e-300, INT32_MAX, 1e-300 * INT32_MAX),
             (5e-324, 5e-324, INT32_MAX, 5e-324 * INT32_MAX),  # 0.1 / 5e-324 is inf
             (1e300, 86400.0, 1, 86400.0),  # clamped to a day: one array per point
             (-5.0, 0.0, 1, 0.1),  # clamped to 0: one point per array
             (0.0, 0.0, 1, 0.1),
             (0.01, 0.01, 10, 0.1)]
    for put_value, per_point, count, averaging in cases:
        put(ts + "TSTimePerPoint", put_value)
        assert get(ts + "TSTimePerPoint_RBV") == per_point, put_value
        assert get(ts + "TSNumAverage") == count, put_value
        assert get(ts + "TSAveragingTime_RBV") == pytest.approx(averaging, rel=1e-9), put_value
        if count == INT32_MAX:
            assert "capped" in get(p + "Stats1:StatusMessage_RBV", as_string=True)
    put(ts + "TSTimePerPoint", 1e-300)
    put(ts + "TSAveragingTime", 86400.0)  # the largest averaging time over the smallest step
    assert get(ts + "TSNumAverage") == INT32_MAX
    axis = get(ts + "TSTimeAxis")
    assert np.isfinite(axis).all()

    # back to one point per array: a series of 3 frames completes
    put(ts + "TSTimePerPoint", 0.0)
    put(ts + "TSAveragingTime", 0.1)
    put(ts + "TSAcquireMode", "Fixed length")
    put(ts + "TSNumPoints", 3)
    started = threading.Thread(target=put, args=(ts + "TSAcquire", 1), kwargs={"timeout": 20})
    started.start()
    assert wait_for(lambda: get(ts + "TSAcquiring", as_string=True) == "Acquiring")
    put(p + "cam1:AcquireTime", 0.001)
    put(p + "cam1:ImageMode", "Multiple")
    put(p + "cam1:NumImages", 3)
    put(p + "cam1:Acquire", 1)
    started.join(20)
    assert not started.is_alive(), "the series did not fill"
    assert get(ts + "TSCurrentPoint") == 3
    log = ioc.log()
    assert "OverflowError" not in log and "failed to process" not in log, log

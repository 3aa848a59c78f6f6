"""The Veto plugin's decision without an IOC: which frames a calc on attributes vetoes, what
a vetoed frame becomes (a placeholder with cause VETOED, counted, recorded as lost by its
acquisition), and that missing attributes, bad calcs and placeholders never veto."""

from __future__ import annotations

import asyncio
import math

import numpy as np

from ndflow.graph import PortGraph
from ndflow.ndarray import Acquisition, MissingCause, NDArray, NDAttribute
from ndflow.plugins.veto import Veto, veto_env, vetoes


def frame(uid: int, **attributes: float) -> NDArray:
    array = NDArray.from_numpy(np.zeros((4, 4), dtype=np.uint8), unique_id=uid)
    for name, value in attributes.items():
        array.attributes[name] = NDAttribute(name, value)
    return array


def veto_plugin(calc: str, **names: str) -> Veto:
    plugin = Veto("VETO1", "Veto1:", PortGraph(), enabled=True)
    plugin.values.update(names)
    asyncio.run(plugin.handle_put(plugin.params["VetoCalc"], calc))
    plugin.freeze()
    return plugin


def outcome(plugin: Veto, array: NDArray) -> NDArray:
    out = []
    plugin._deliver = out.extend  # what would go downstream
    plugin._handle(array)
    (result,) = out
    return result


def test_env_reads_the_named_attributes_and_nan_for_the_rest():
    env = veto_env(frame(1, MinValue=3.0, Total=10).attributes,
                   {"VetoA": "MinValue", "VetoB": "Total", "VetoC": "", "VetoD": "Nope"}, 7)
    assert env["A"] == 3.0 and env["B"] == 10.0 and env["E"] == 7.0
    assert math.isnan(env["C"]) and math.isnan(env["D"])


def test_only_a_finite_non_zero_result_vetoes():
    assert vetoes(lambda env: 1.0, {}) == (True, 1.0)
    assert vetoes(lambda env: -2.0, {})[0]
    assert not vetoes(lambda env: 0.0, {})[0]
    assert not vetoes(lambda env: math.nan, {})[0]
    assert not vetoes(lambda env: math.inf, {})[0]
    assert not vetoes(None, {})[0]


def test_vetoed_frames_become_counted_placeholders_the_rest_pass_untouched():
    plugin = veto_plugin("A>=10 && A<15", VetoA="MinValue")
    run = Acquisition.start({})
    results = []
    for uid in range(1, 21):
        array = frame(uid, MinValue=uid - 1.0)
        array.acquisition = run
        results.append((array, outcome(plugin, array)))
    vetoed = [a.unique_id for a, out in results if not out.valid]
    assert vetoed == [11, 12, 13, 14, 15]
    for array, out in results:
        if out.valid:
            assert out is array  # passed by reference, nothing copied
        else:
            assert out.status.missing is MissingCause.VETOED and out.data is None
            assert out.unique_id == array.unique_id and "A>=10 && A<15" in out.status.message
    assert plugin.values["FramesVetoed_RBV"] == 5 and plugin.values["FramesPassed_RBV"] == 15
    assert sorted(run.lost) == vetoed and not run.processing_errors  # lost, not failed


def test_a_frame_without_the_attribute_passes():
    plugin = veto_plugin("A<100", VetoA="MinValue")
    assert outcome(plugin, frame(1)).valid
    assert not outcome(plugin, frame(2, MinValue=5.0)).valid


def test_a_bad_calc_is_kept_shown_and_vetoes_nothing():
    plugin = veto_plugin("A>", VetoA="MinValue")
    assert plugin.values["VetoCalc"] == "A>"
    assert plugin.values["VetoStatus_RBV"] == "unexpected end of expression at character 3"
    assert outcome(plugin, frame(1, MinValue=1.0)).valid
    asyncio.run(plugin.handle_put(plugin.params["VetoCalc"], "1"))
    assert plugin.values["VetoStatus_RBV"] == "OK"
    assert not outcome(plugin, frame(2, MinValue=1.0)).valid


def test_placeholders_pass_on_unchanged_and_uncounted():
    plugin = veto_plugin("1")
    lost = NDArray.missing(MissingCause.DROPPED, unique_id=3)
    assert outcome(plugin, lost) is lost
    assert plugin.values["FramesVetoed_RBV"] == 0

"""Issue 16, acceptance 1: an ophyd 1.x SimDetector with a component for every plugin of ADCore's
commonPlugins that ophyd has a class for, on the default IOC, connects, stages with every plugin enabled, triggers and unstages, with both of ophyd's control
layers (pyepics and caproto); `validate_asyn_ports()` passes and `get_asyn_digraph()` shows
ADCore's wiring.

Each control layer runs in a child interpreter of its own: ophyd picks its layer once per process
(`ophyd.set_cl`), and pyepics' caget/caput in this process leave PV objects in a cache that ophyd
would reuse. The classes are looked up by the PluginType each plugin reports, through ophyd's own
registry of plugin classes, so a class whose expected type ADCore does not report is seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import CA_ENV, running_ioc

#: ophyd's expected PluginType differs from the one ADCore reports (NDFileNexus.cpp,
#: NDPluginBadPixel.cpp, NDPosPlugin.cpp): ophyd refuses to stage them against ADCore too, so the
#: device uses subclasses that expect ADCore's strings, as a beamline profile must
OPHYD_TYPE_BUGS = {"NDFileNexus": "NDPluginNexus", "NDPluginBadPixel": "NDBadPixel",
                   "NDPositionPlugin": "NDPosPlugin"}

SESSION = textwrap.dedent('''
    import sys
    import ophyd
    ophyd.set_cl(sys.argv[2])
    from ophyd import Component as Cpt
    from ophyd.areadetector import SimDetector, SingleTrigger
    from ophyd.areadetector import plugins
    from ophyd.areadetector.plugins import PluginBase

    P = sys.argv[1]
    # commonPlugins' instances (ADCore 3.x) and the PluginType each reports
    INSTANCES = {
        "image1:": "NDPluginStdArrays", "image2:": "NDPluginStdArrays", "Pva1:": "NDPluginPva",
        **{f"ROI{i}:": "NDPluginROI" for i in range(1, 5)},
        "ROIStat1:": "NDPluginROIStat",
        **{f"Stats{i}:": "NDPluginStats" for i in range(1, 6)},
        "Proc1:": "NDPluginProcess", "Trans1:": "NDPluginTransform",
        "HDF1:": "NDFileHDF5", "TIFF1:": "NDFileTIFF", "JPEG1:": "NDFileJPEG",
        "netCDF1:": "NDFileNetCDF", "Nexus1:": "NDFileNexus",
        "Codec1:": "NDPluginCodec", "Codec2:": "NDPluginCodec", "CB1:": "NDPluginCircularBuff",
        "Attr1:": "NDPluginAttribute", "FFT1:": "NDPluginFFT", "Over1:": "NDPluginOverlay",
        "CC1:": "NDPluginColorConvert", "CC2:": "NDPluginColorConvert",
        "Scatter1:": "NDPluginScatter", "Gather1:": "NDPluginGather",
        "BadPix1:": "NDPluginBadPixel", "Pos1:": "NDPositionPlugin",
    }
    BUGS = %(bugs)r

    def newest(base):
        """ophyd's newest versioned class of a plugin (PvaPlugin_V34, ...): the plain ones are
        mixins, some without PluginBase's own PVs."""
        import inspect, re
        found = [c for c in vars(plugins).values() if inspect.isclass(c)
                 and issubclass(c, base) and issubclass(c, PluginBase)
                 and "enable" in c.component_names]
        version = lambda c: int((re.search(r"_V(\d+)$", c.__name__) or [0, 0])[1])
        return max(found, key=version)

    def plugin_class(adcore_type):
        if adcore_type in BUGS:
            base = newest(plugins._plugin_class[BUGS[adcore_type]])
            return type(base.__name__ + "_ADCore", (base,), {"_plugin_type": adcore_type})
        return newest(plugins._plugin_class[adcore_type])

    def attr(prefix):
        return prefix.rstrip(":").lower()

    Detector = type("Detector", (SingleTrigger, SimDetector), {
        attr(prefix): Cpt(plugin_class(kind), prefix) for prefix, kind in INSTANCES.items()})
    det = Detector(P, name="det")
    det.wait_for_connection(timeout=60)
    members = [getattr(det, attr(prefix)) for prefix in INSTANCES]
    # "connects" as ophyd means it: every non-lazy signal (wait_for_connection above). The lazy
    # ones of these plain classes include PVs ADCore 3.x no longer has either (ROI's SetXHOPR,
    # Process's *_seq, FileNumber_Sync, ...); the plugins' own PVs are checked against their
    # versioned classes in their test files.
    print(sum(1 for _ in det.walk_signals()), "signals connected")
    # ophyd's own check (PluginBase._plugin_type_connected): the reported type starts with the
    # class's expected one
    wrong = [(p.name, p.plugin_type.get()) for p in members if type(p)._plugin_type
             and not p.plugin_type.get().startswith(type(p)._plugin_type)]
    assert not wrong, wrong
    det.validate_asyn_ports()
    graph, _ = det.get_asyn_digraph()
    edges = set(graph.edges)
    expected = {("SIM1", "STATS1"), ("ROI1", "STATS2"), ("ROI4", "STATS5"), ("SIM1", "FileHDF1"),
                ("SIM1", "PVA1"), ("FFT1", "Image2"), ("SIM1", "GATHER1")}
    assert expected <= edges, expected - edges

    for plugin in members:
        plugin.stage_sigs["enable"] = 1
    # 0.2 s: SingleTrigger.trigger() returns self._status after starting the acquisition, and
    # its Acquire monitor sets that to None when the acquisition ends: a frame faster than
    # that return makes trigger() return None (an ophyd race, against ADCore too)
    det.cam.stage_sigs.update({"image_mode": "Multiple", "num_images": 1,
                               "acquire_time": 0.2, "acquire_period": 0.0})
    # ophyd refuses to stage a file plugin that has never seen a frame (UnprimedPlugin), as
    # against ADCore: its warmup() acquires one, as a beamline's startup does
    for plugin in members:
        if hasattr(plugin, "warmup"):
            plugin.warmup()
    before = {p.name: p.array_counter.get() for p in members}
    enabled_before = [p.name for p in members if p.enable.get(use_monitor=False) in (1, "Enable")]
    det.stage()
    try:
        import time
        deadline = time.monotonic() + 10  # EnableCallbacks_RBV follows its monitor
        while time.monotonic() < deadline:
            disabled = [p.name for p in members
                        if p.enable.get(use_monitor=False) not in (1, "Enable")]
            if not disabled:
                break
            time.sleep(0.1)
        assert not disabled, disabled
        for _ in range(2):
            det.trigger().wait(timeout=60)
    finally:
        det.unstage()
    # the frames reached the plugins reading the driver (ROI-fed Stats see ROI's output)
    for name in ("det_stats1", "det_roi1", "det_hdf1", "det_pva1", "det_image1", "det_over1"):
        plugin = getattr(det, name[4:])
        assert plugin.array_counter.get() >= before[name] + 2, (name, before[name],
                                                                  plugin.array_counter.get())
    time.sleep(1)  # unstaged: each back to its own setting
    enabled = [p.name for p in members if p.enable.get(use_monitor=False) in (1, "Enable")]
    assert enabled == enabled_before, (enabled, enabled_before)
    assert "det_image1" in enabled and "det_stats1" not in enabled
    print("ok", sys.argv[2], len(members), "plugins")
''') % {"bugs": OPHYD_TYPE_BUGS}


@pytest.fixture(scope="module")
def ioc(tmp_path_factory):
    with running_ioc(None, tmp_path_factory.mktemp("ophyd_common")) as process:
        yield process


@pytest.mark.timeout(600)
@pytest.mark.parametrize("layer", ["pyepics", "caproto"])
def test_every_common_plugin_class_connects_stages_and_triggers(ioc, layer):
    env = {**os.environ, **CA_ENV, "EPICS_CA_SERVER_PORT": str(ioc.port)}
    done = subprocess.run([sys.executable, "-c", SESSION, ioc.prefix, layer], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"ok {layer} 32 plugins"), done.stdout[-500:]

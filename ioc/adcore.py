"""ADCore's base parameter sets (NDArrayBase, ADBase, NDPluginBase) declared once.

Names, record kinds, enum strings, defaults and _RBV pairing follow ADCore's templates
(`shared/reference/adcore-records.md`). Only records that exist to implement EPICS-database
plumbing (subArray links, calcout helpers, the asyn record) are left out; where ophyd declares them
they are served as plain values so a client that reads one still connects.
"""

from __future__ import annotations

import numpy as np

from .params import (R, RW, W, Param, bool_param, enum_param, float_param, int_param, string_param,
                     text_param, array_param)

ADCORE_VERSION = "3.14.0"  # the ADCore interface these PVs follow

DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float32",
              "Float64")
NUMPY_DTYPES = tuple(np.dtype(t) for t in ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"))
COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
#: ProcessingState_RBV's enum strings, in ndflow.state.RunState order
RUN_STATE_NAMES = ("Running", "Acquisition done", "Processing done", "Acquisition failed",
                   "Processing failed")

DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error", "Waiting",
                   "Initializing", "Disconnected", "Aborted")


# --- limits (DRVL/DRVH): a put outside is clamped, with a note on StatusMessage_RBV ---------------
#: Longest time a time setting may ask for (AcquireTime, AcquirePeriod, shutter delays,
#: MinCallbackTime, SortTime). A day is longer than any exposure, period or delay a detector we
#: drive needs (astronomy's longest single exposures are hours), and every wait on such a value
#: (threading.Event.wait, Condition.wait) stays far below threading.TIMEOUT_MAX (~292 years),
#: where 2**40 s raised OverflowError and ended the next acquisition in Error.
MAX_SECONDS = 86400.0
#: |Gain| of a detector. Real gains are 1..~1000; the simulator multiplies pixel values by it
#: (LinearRamp's increment is Gain * AcquireTime * 1000), and 1e6 keeps that product below 2**63
#: even with AcquireTime at MAX_SECONDS, so its C-cast emulation never meets inf or NaN.
MAX_GAIN = 1e6
#: Frames one queue may hold (QueueSize, SortSize, NumPreAllocBuffers). ADCore sizes a queue of
#: this many slots up front; 10000 frames is 10 s at 1 kHz, beyond which a plugin that cannot
#: keep up should drop or block (LossPolicy), not grow its memory by up to 2**31 frames.
MAX_QUEUE = 10000


def data_type_index(dtype: np.dtype) -> int:
    return NUMPY_DTYPES.index(np.dtype(dtype).newbyteorder("="))


#: ADCore's `AsynIO` asyn record (NDArrayBase: every driver and plugin), with the fields clients
#: and ADCore's screens read (`AsynIO.CNCT` on every .bob), declared as PVs of their own so they
#: come from this declaration on every transport. ndflow has no asyn layer: a port is always
#: connected and enabled, so CNCT/PCNCT/ENBL/AUCT are read-only (a Disconnect is refused with no
#: write access, as a record with ASL1 refuses it); PORT and ADDR say which port this is; the
#: trace and I/O settings are stored as a record stores them, and no I/O is done with them (the
#: record's VAL is unused, as in asyn).
ASYN_RECORD: tuple[Param, ...] = (
    int_param("AsynIO", 0, W, group="Asyn", doc="the asyn record (VAL unused, as in asyn)"),
    string_param("AsynIO.PORT", "", R, group="Asyn", doc="asyn port (the component's port)"),
    int_param("AsynIO.ADDR", 0, R, group="Asyn"),
    enum_param("AsynIO.PCNCT", ("Disconnect", "Connect"), 1, R, group="Asyn"),
    enum_param("AsynIO.CNCT", ("Disconnect", "Connect"), 1, R, group="Asyn"),
    enum_param("AsynIO.ENBL", ("Disable", "Enable"), 1, R, group="Asyn"),
    enum_param("AsynIO.AUCT", ("noAutoConnect", "autoConnect"), 1, R, group="Asyn"),
    enum_param("AsynIO.TMOD", ("Write/Read", "Write", "Read", "Flush", "NoI/O"), 0, W,
               group="Asyn", doc="transfer mode (stored; the record does no I/O here)"),
    float_param("AsynIO.TMOT", 1.0, W, low=0.0, high=MAX_SECONDS, units="s",
                group="Asyn"),
    int_param("AsynIO.TMSK", 1, W, group="Asyn", doc="trace mask (stored)"),
    text_param("AsynIO.ERRS", 100, "", R, group="Asyn", doc="the last error (none: no I/O)"),
)

NDARRAY_BASE: tuple[Param, ...] = (
    string_param("ADCoreVersion_RBV", ADCORE_VERSION, R, group="Info"),
    string_param("DriverVersion_RBV", "Unknown", R, group="Info"),
    string_param("PortName_RBV", "Unknown", R, group="Info"),
    string_param("Manufacturer_RBV", "Unknown", R, group="Info"),
    string_param("Model_RBV", "Unknown", R, group="Info"),
    string_param("SerialNumber_RBV", "Unknown", R, group="Info"),
    string_param("SDKVersion_RBV", "Unknown", R, group="Info"),
    string_param("FirmwareVersion_RBV", "Unknown", R, group="Info"),
    enum_param("Acquire", ("Done", "Acquire"), 0, RW, rbv_choices=("Done", "Acquiring"),
               coalesce=False, also_setpoint=True, group="Collect",
               doc="Start (1) or stop (0); a put-callback of 1 completes when the acquisition ends"),
    bool_param("WaitForPlugins", access=W, group="Collect",
               doc="Acquire completes only after the plugins have processed every frame"),
    int_param("NDimensions", 0, RW, also_setpoint=True, group="Array"),
    array_param("Dimensions", "i4", 10, RW, also_setpoint=True, group="Array"),
    *(int_param(f"ArraySize{i}_RBV", 0, R, aliases=(f"ArraySize{i}", f"Dim{i}SA", f"Dim{i}SA_RBV"),
                group="Array") for i in range(10)),
    enum_param("BayerPattern_RBV", ("RGGB", "GBRG", "GRBG", "BGGR"), 0, R, group="Array"),
    int_param("ArraySizeX_RBV", 0, R, group="Array"),
    int_param("ArraySizeY_RBV", 0, R, group="Array"),
    int_param("ArraySizeZ_RBV", 0, R, group="Array"),
    int_param("ArraySize_RBV", 0, R, units="bytes", group="Array"),
    string_param("Codec_RBV", "", R, group="Array"),
    int_param("CompressedSize_RBV", 0, R, group="Array"),
    enum_param("DataType", DATA_TYPES, 1, RW, group="Readout"),
    enum_param("ColorMode", COLOR_MODES, 0, RW, group="Readout"),
    int_param("UniqueId_RBV", 0, R, group="Array"),
    float_param("TimeStamp_RBV", 0.0, R, precision=3, group="Array"),
    int_param("EpicsTSSec_RBV", 0, R, group="Array"),
    int_param("EpicsTSNsec_RBV", 0, R, group="Array"),
    int_param("ArrayCounter", 0, RW, also_setpoint=True, group="Collect"),
    float_param("ArrayRate_RBV", 0.0, R, precision=2, units="Hz", group="Collect"),
    bool_param("ArrayCallbacks", "Disable", "Enable", 1, RW, group="Collect"),
    text_param("NDAttributesMacros", 256, "", W, group="Attributes"),
    # NELM is ADCore's $(XMLSIZE=256); ours is as if XMLSIZE=4096, so an XML string fits.
    text_param("NDAttributesFile", 4096, "", W, group="Attributes",
               doc="attribute XML, or a file under the config folder or a data root"),
    enum_param("NDAttributesStatus", ("Attributes file OK", "File not found", "XML syntax error",
                                      "Macro substitution error"), 0, R, group="Attributes"),
    float_param("PoolMaxMem", 0.0, R, precision=1, units="MB", group="Buffers"),
    bool_param("PoolPollStats", "0", "1", 1, W, group="Buffers"),
    float_param("PoolUsedMem", 0.0, R, precision=1, units="MB", group="Buffers"),
    int_param("PoolAllocBuffers", 0, R, group="Buffers"),
    int_param("PoolFreeBuffers", 0, R, group="Buffers"),
    int_param("PoolUsedBuffers", 0, R, group="Buffers"),
    bool_param("EmptyFreeList", "0", "1", 0, W, group="Buffers",
               doc="Release every buffer on the free list"),
    bool_param("PreAllocBuffers", "Done", "Allocate", 0, W, group="Buffers"),
    int_param("NumPreAllocBuffers", 100, RW, low=0, high=MAX_QUEUE, group="Buffers"),
    int_param("NumQueuedArrays", 0, R, group="Buffers"),
    *ASYN_RECORD,
)

AD_BASE: tuple[Param, ...] = (
    int_param("MaxSizeX_RBV", 0, R, group="Setup"),
    int_param("MaxSizeY_RBV", 0, R, group="Setup"),
    int_param("BinX", 1, RW, low=1, group="Readout"),
    int_param("BinY", 1, RW, low=1, group="Readout"),
    int_param("MinX", 0, RW, low=0, group="Readout"),
    int_param("MinY", 0, RW, low=0, group="Readout"),
    int_param("SizeX", 1, RW, low=1, group="Readout"),
    int_param("SizeY", 1, RW, low=1, group="Readout"),
    bool_param("ReverseX", group="Readout"),
    bool_param("ReverseY", group="Readout"),
    float_param("AcquireTime", 1.0, RW, low=0.0, high=MAX_SECONDS, units="s", group="Collect"),
    float_param("AcquirePeriod", 0.0, RW, low=0.0, high=MAX_SECONDS, units="s", group="Collect"),
    float_param("TimeRemaining_RBV", 0.0, R, units="s", group="Collect"),
    float_param("Gain", 1.0, RW, low=-MAX_GAIN, high=MAX_GAIN, group="Readout"),
    enum_param("FrameType", ("Normal", "Background", "FlatField", "DblCorrelation"), 0, RW,
               group="Collect"),
    enum_param("ImageMode", ("Single", "Multiple", "Continuous"), 2, RW, group="Collect"),
    enum_param("TriggerMode", ("Internal", "External"), 0, RW, group="Collect"),
    int_param("NumExposures", 1, RW, low=1, group="Collect"),
    int_param("NumExposuresCounter_RBV", 0, R, group="Collect"),
    int_param("NumImages", 1, RW, low=1, group="Collect"),
    int_param("NumImagesCounter_RBV", 0, R, group="Collect"),
    enum_param("DetectorState_RBV", DETECTOR_STATES, 0, R, group="Status"),
    text_param("StatusMessage_RBV", 256, "", R, group="Status"),
    text_param("StringToServer_RBV", 256, "", R, group="Status"),
    text_param("StringFromServer_RBV", 256, "", R, group="Status"),
    bool_param("ReadStatus", "0", "1", 1, W, group="Status"),
    enum_param("ShutterMode", ("None", "EPICS PV", "Detector output"), 0, RW,
               rbv_choices=("None", "EPICS PV", "Camera output"), group="Shutter"),
    bool_param("ShutterControl", "Close", "Open", 0, RW, group="Shutter"),
    bool_param("ShutterStatus_RBV", "Closed", "Open", 0, R, group="Shutter"),
    float_param("ShutterOpenDelay", 0.0, RW, low=0.0, high=MAX_SECONDS, units="s",
                group="Shutter"),
    float_param("ShutterCloseDelay", 0.0, RW, low=0.0, high=MAX_SECONDS, units="s",
                group="Shutter"),
    bool_param("ShutterControlEPICS", "Closed", "Open", 0, R, group="Shutter"),
    float_param("ShutterOpenEPICS", 1.0, W, group="Shutter"),
    float_param("ShutterCloseEPICS", 0.0, W, group="Shutter"),
    int_param("ShutterFanout", 0, W, group="Shutter"),
    enum_param("ShutterStatusEPICS_RBV", ("Closed", "Open"), 0, R, group="Shutter"),
    float_param("Temperature", 25.0, RW, precision=1, units="C", group="Setup"),
    float_param("TemperatureActual", 25.0, R, precision=1, units="C", group="Setup"),
    # ndflow: the parameter set frozen for the running (or last) acquisition, as JSON.
    int_param("AcquisitionId_RBV", 0, R, group="Collect",
              doc="Increments at each acquisition start; every NDArray carries it"),
    text_param("EffectiveParams_RBV", 8192, "{}", R, group="Collect",
               doc="JSON of the parameters the running acquisition uses (writes change the next one)"),
    # ADCore's busy record behind Acquire's put-callback (SetAcquireBusy/ClearAcquireBusy).
    bool_param("AcquireBusy", "Done", "Acquiring", 0, W, coalesce=False, also_setpoint=True,
               group="Collect", doc="1 from Acquire=1 until the acquisition is over and, with "
                                    "WaitForPlugins=Yes, its frames are processed"),
    bool_param("AcquireBusyCB", "Done", "Acquiring", 0, R, coalesce=False, group="Collect"),
    # ndflow (Lima2): acquisition and processing end separately.
    enum_param("ProcessingState_RBV", RUN_STATE_NAMES, 2, R, group="Collect", coalesce=False,
               doc="the latest acquisition's processing state (every transition is published)"),
    int_param("ProcessingPending_RBV", 0, R, group="Collect",
              doc="acquisitions that have ended whose frames are still in the plugins"),
    enum_param("DeferredProcessing", ("Off", "Until done", "Until released"), 0, RW,
               group="Collect", doc="hold the frames in memory (bounded by the pool) until the "
                                    "acquisition ends, or until ReleaseFrames=1"),
    bool_param("ReleaseFrames", "Done", "Release", 0, W, group="Collect",
               doc="send the held frames of every deferred acquisition into the plugins"),
    int_param("DeferredFrames_RBV", 0, R, group="Collect", doc="frames held for processing"),
    int_param("FramesLost_RBV", 0, R, group="Collect",
              doc="frames of the latest acquisition that became missing anywhere (detector, "
                  "a full plugin queue, a processing error): what a scan checks"),
)

PLUGIN_BASE: tuple[Param, ...] = (
    string_param("PluginType_RBV", "Unknown", R, group="Plugin"),
    string_param("NDArrayPort", "", RW, group="Plugin", doc="Upstream port; writing it rewires"),
    int_param("NDArrayAddress", 0, RW, low=0, group="Plugin"),
    bool_param("EnableCallbacks", "Disable", "Enable", 0, RW, group="Plugin"),
    float_param("MinCallbackTime", 0.0, RW, low=0.0, high=MAX_SECONDS, units="s", group="Plugin"),
    float_param("MaxArrayRate", 0.0, RW, low=0.0, units="Hz", group="Plugin"),
    float_param("MaxByteRate", 0.0, RW, low=0.0, group="Plugin"),
    float_param("ExecutionTime_RBV", 0.0, R, units="ms", group="Plugin"),
    bool_param("ProcessPlugin", "0", "1", 0, W, group="Plugin",
               doc="Process the last array again"),
    bool_param("BlockingCallbacks", "No", "Yes", 0, RW, group="Plugin"),
    int_param("DroppedArrays", 0, RW, also_setpoint=True, group="Plugin"),
    int_param("QueueSize", 20, RW, low=1, high=MAX_QUEUE, group="Plugin"),
    int_param("QueueFree", 20, R, group="Plugin"),
    int_param("QueueUse", 0, R, group="Plugin"),
    float_param("QueueFreeLow", 5.0, R, group="Plugin"),
    float_param("QueueUseHIGH", 15.0, R, group="Plugin"),
    float_param("QueueUseHIHI", 20.0, R, group="Plugin"),
    int_param("NumThreads", 1, RW, low=1, group="Plugin"),
    int_param("MaxThreads_RBV", 1, R, group="Plugin"),
    enum_param("SortMode", ("Unsorted", "Sorted"), 0, RW, group="Plugin"),
    float_param("SortTime", 0.1, RW, low=0.0, high=MAX_SECONDS, units="s", group="Plugin"),
    int_param("SortSize", 20, RW, low=1, high=MAX_QUEUE, group="Plugin"),
    int_param("SortFree", 20, R, group="Plugin"),
    int_param("DroppedOutputArrays", 0, RW, also_setpoint=True, group="Plugin"),
    int_param("DisorderedArrays", 0, RW, also_setpoint=True, group="Plugin"),
    # ndflow: where a refused rewiring or a processing error is explained.
    text_param("StatusMessage_RBV", 256, "", R, group="Status"),
    # ndflow: the frozen parameter set the latest frame was processed with.
    text_param("EffectiveParams_RBV", 8192, "{}", R, group="Status",
               doc="JSON: acquisition, first frame (unique id) and the parameter values this "
                   "plugin processes with; a write applies from the next frame"),
)

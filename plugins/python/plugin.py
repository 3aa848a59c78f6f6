"""PythonPlugin: runs a user's algorithm file in child processes and serves its parameters as PVs.

The IOC process never imports the user's file. A child loads it and reports the declared inputs
and outputs; this plugin turns them into parameters (hence PVs and screens), sends input changes
to the children before their next frame, and turns replies back into output PVs and NDArrays. The
file is watched: a changed file is reloaded in the children, and a changed parameter list adds and
withdraws PVs while the IOC runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ndflow import shm
from ndflow.algorithm.param import from_description
from ndflow.config import Site
from ndflow.graph import PortGraph
from ndflow.ndarray import FrameStatus, MissingCause, NDArray, NDAttribute, NDDimension
from ndflow.params import (Param, ParamTable, R, W, bool_param, enum_param, float_param,
                           initial_values, int_param, string_param, text_param)
from ndflow.plugin import DEFERRED, Outputs, Plugin

from .lane import LANE_STATES, ChildSpec, Lane, LaneState, default_python
from .watch import FileWatch, stamp

PYTHON_STATUS = (
    text_param("AlgorithmFile_RBV", 256, access=R, doc="algorithm file", group="Algorithm"),
    string_param("AlgorithmClass_RBV", access=R, doc="algorithm class", group="Algorithm"),
    text_param("Python_RBV", 256, access=R, doc="interpreter of the child", group="Algorithm"),
    enum_param("ChildState_RBV", LANE_STATES, access=R, doc="child process state",
               group="Algorithm"),
    int_param("Restarts_RBV", access=R, doc="child restarts", group="Algorithm"),
    int_param("Loads_RBV", access=R, doc="successful loads of the file", group="Algorithm"),
    text_param("LastError_RBV", 256, access=R, doc="last error", group="Algorithm"),
    text_param("Traceback_RBV", 4096, access=R, doc="last traceback", group="Algorithm"),
    int_param("FramesOK_RBV", access=R, doc="frames processed", group="Algorithm"),
    int_param("FramesFailed_RBV", access=R, doc="frames failed", group="Algorithm"),
    int_param("FramesTimedOut_RBV", access=R, doc="frames timed out", group="Algorithm"),
    int_param("FramesVetoed_RBV", access=R, doc="frames the algorithm vetoed (Veto)",
              group="Algorithm"),
    float_param("FrameTime_RBV", access=R, units="ms", doc="time in process()",
                group="Algorithm"),
    bool_param("Reload", "0", "1", access=W, doc="reload the algorithm file", group="Algorithm"),
)


class PythonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    file: str = Field(description="algorithm file, inside one of the IOC's algorithm_folders")
    class_name: str = Field("", alias="class",
                            description="Algorithm class; may be left out if the file has one")
    python: str = Field("", description="interpreter for the child (default: the IOC's own)")
    workers: int = Field(1, ge=1, le=16, description="child processes working in parallel")
    timeout_s: float = Field(5.0, gt=0, description="longest process() call before the "
                             "child is killed and restarted")
    memory_mb: float = Field(2048.0, ge=0, description="resident memory a child (with the "
                             "processes it starts) may use beyond its footprint after loading; "
                             "past it the child is killed and restarted (0: no limit)")
    on_failure: Literal["missing", "drop"] = Field(
        "missing", description="a failed frame goes on marked missing, or is dropped")
    pipeline_depth: int = Field(4, ge=1, le=16, description="frames in flight per child "
                                "(overlaps hand-over with processing)")
    start_timeout_s: float = Field(30.0, gt=0)
    watch: bool = Field(True, description="reload when the file changes")
    values: dict[str, Any] = Field(
        default_factory=dict, description="initial values of the algorithm's inputs, by PV name "
        "(e.g. {CaptureFrames: 3}), as a client would write them; they replace the file's "
        "defaults whenever an input is (re)declared")

    @field_validator("python")
    @classmethod
    def _executable(cls, value: str) -> str:
        if value and not os.access(value, os.X_OK):
            raise ValueError(f"{value} is not an executable interpreter")
        return value


class PythonPlugin(Plugin):
    PARAMS = Plugin.PARAMS + (PYTHON_STATUS,)
    plugin_type = "NDPluginPython"
    channels_aware = True  # algorithms get the channel axis and names (FrameInfo.channels)
    Options = PythonOptions

    def __init__(self, port: str, prefix: str, graph: PortGraph, *,
                 options: PythonOptions, site: Site, max_threads: int = 1, **kw: Any) -> None:
        workers = options.workers
        # Output images go to a shared-memory pool, so a Python plugin downstream gets them
        # with zero copies.
        super().__init__(port, prefix, graph, max_threads=max(max_threads, workers),
                         new_block=shm.block, **kw)
        self.options = options
        self.site = site
        self.file = site.algorithm_file(options.file)
        # Sorted by default, waiting up to the frame timeout: every input id produces an
        # output (failed ones as placeholders), so the wait ends when the slowest worker replies.
        self.values.update({"NumThreads": workers, "SortMode": 1, "SortTime": options.timeout_s,
                            "AlgorithmFile_RBV": str(self.file),
                            "Python_RBV": options.python or default_python()})
        self._decls: dict[str, dict[str, Any]] = {}  # parameter name -> child's declaration
        self._attr_of: dict[str, str] = {}  # input parameter name -> attribute name
        self._out_param: dict[str, str] = {}  # output attribute name -> parameter name
        self._decl_lock = threading.RLock()
        self.inputs_version = 0  # bumped on every input change; lanes resend when it moves
        self._lane_counter = itertools.count()
        #: the frame problem StatusMessage_RBV shows (None: it shows something else, which no
        #: frame outcome replaces), and the frame it began with; see _frame_status()
        self._problem: str | None = None
        self._problem_since = 0
        self._status_lock = threading.Lock()
        self._values_error: str | None = None  # options.values refused by a declared input
        spec = ChildSpec(port, options.python or default_python(), self.file,
                         options.class_name, options.memory_mb, options.timeout_s,
                         options.start_timeout_s,
                         tuple(map(str, dict.fromkeys((*site.read_folders,
                                                        *site.algorithm_folders)))))
        self.lanes = [Lane(spec, i, self, options.pipeline_depth) for i in range(workers)]
        loaded = stamp(self.file)  # before any child reads it: a save after it is a change
        # The first child's declarations become PVs before the IOC serves: wait for it.
        self.lanes[0].start(wait=True)
        for lane in self.lanes[1:]:
            lane.start(wait=False)
        with self._decl_lock:  # declared: a config value naming no input is a config mistake
            unknown = [n for n in options.values if n not in self._attr_of]
            mistake = self._values_error or (
                f"values: {unknown[0]!r} is not an input of {self.file.name} (inputs: "
                f"{', '.join(self._attr_of) or 'none'})" if self._decls and unknown else None)
        if mistake:
            for lane in self.lanes:
                lane.close()
            raise ValueError(mistake)
        self._watch = FileWatch(self.file, self.reload, f"{port}-watch", loaded) \
            if options.watch else None

    # --- the frame path -------------------------------------------------------------------------
    def process(self, array: NDArray) -> Outputs:
        # The least busy running child; frames alternate between equally busy ones.
        turn = next(self._lane_counter)
        count = len(self.lanes)
        lane = min((self.lanes[(turn + i) % count] for i in range(count)),
                   key=lambda ln: (ln.state is not LaneState.RUNNING, ln.in_flight))
        refused = lane.submit(array)
        if refused is None:
            return DEFERRED
        self.increment("FramesFailed_RBV")
        return self._failed(array, MissingCause.PROCESSING_ERROR, refused)

    def _failed(self, array: NDArray, cause: MissingCause, message: str) -> Outputs:
        if self.options.on_failure == "drop":
            return None
        return array.derive(None, status=FrameStatus(cause, message))

    # --- what lanes report (lane threads) --------------------------------------------------------
    def lane_result(self, lane: Lane, array: NDArray, reply: dict[str, Any],
                    image: np.ndarray | None, seconds: float) -> None:
        status = reply.get("status")
        outputs: Outputs
        if status in ("ok", "warning"):
            # outputs first: a client that sees the count go up reads this frame's outputs
            problems = self._publish_outputs(reply.get("outputs") or {})
            self.increment("FramesOK_RBV")
            if status == "warning":
                problems.insert(0, reply.get("message") or "process() reported a warning")
            outputs = self._output_array(array, reply, image)
            self._frame_status(array.unique_id, "; ".join(problems) or None)
        elif status == "veto":  # discarded on purpose: a missing frame "vetoed", not a failure
            self.increment("FramesVetoed_RBV")
            problems = self._publish_outputs(reply.get("outputs") or {})
            self._frame_status(array.unique_id, "; ".join(problems) or None)
            self._mark_lost(array, failed=False)
            outputs = array.derive(None, status=FrameStatus(
                MissingCause.VETOED, reply.get("message") or f"{self.port}: vetoed"))
        else:
            message = reply.get("message") or "process() reported an error"
            self._last_error(f"frame {array.unique_id}: {message}", reply.get("traceback", ""))
            self.increment("FramesFailed_RBV")
            outputs = self._failed(array, MissingCause.PROCESSING_ERROR, message)
            self._frame_status(array.unique_id, message)
        self.set("FrameTime_RBV", float(reply.get("t", 0.0)) * 1e3)
        self.complete(array, outputs, seconds)  # ExecutionTime_RBV: hand-over to result

    def lane_lost(self, lane: Lane, array: NDArray, cause: MissingCause, message: str,
                  timed_out: bool) -> None:
        self.increment("FramesTimedOut_RBV" if timed_out else "FramesFailed_RBV")
        self._frame_status(array.unique_id, message)
        self.complete(array, self._failed(array, cause, message))

    def lane_died(self, lane: Lane, message: str, output: str) -> None:
        self.increment("Restarts_RBV")
        tail = [line for line in output.splitlines() if line.strip()][-40:]
        text = f"worker {lane.index}: {message}; restarting"
        self._last_error(text, "\n".join(tail))
        with self._status_lock:  # over once a frame is processed again (or the child loads)
            self._problem, self._problem_since = text, 0
            self.message(text[:255], logging.WARNING)

    def lane_load_error(self, lane: Lane, reply: dict[str, Any]) -> None:
        kept = " (previous version still running)" if reply.get("running") else ""
        self._error(f"{self.file.name}: {reply.get('message', 'load failed')}{kept}",
                    reply.get("traceback", ""))

    def lane_declared(self, lane: Lane, reply: dict[str, Any]) -> None:
        with self._decl_lock:
            try:
                self._apply_declarations(reply.get("declarations", []))
            except ValueError as exc:
                if not (self._values_error and not self._running):  # else: a config error
                    self._error(f"{self.file.name}: {exc}", "")
                return
            self.set("AlgorithmClass_RBV", str(reply.get("class", ""))[:39])
            self.set("Loads_RBV", max(self.values["Loads_RBV"], int(reply.get("loads", 0))))
        if lane.index == 0:
            self._say(f"loaded {reply.get('class')} from {self.file.name} "
                      f"(pid {reply.get('pid')})")

    def lane_state(self, lane: Lane) -> None:
        states = [ln.state for ln in self.lanes]
        worst = next((s for s in states if s is not LaneState.RUNNING), LaneState.RUNNING)
        self.set("ChildState_RBV", int(worst))

    def input_values(self) -> tuple[int, dict[str, Any]]:
        """The inputs' values in stored form, by attribute name (the child shows them to
        process() as declared: an enum by its text, a bool as a bool)."""
        with self._decl_lock:
            values = {attr: self.values[name] for name, attr in self._attr_of.items()}
            return self.inputs_version, values

    def result_params(self) -> list[str]:
        """The algorithm's outputs: a replay's table has a column for each."""
        with self._decl_lock:
            return list(self._out_param.values())

    # --- declarations -> parameters -------------------------------------------------------------
    def _apply_declarations(self, declarations: list[dict[str, Any]]) -> None:
        """Make the parameters match the child's declarations; PVs follow while serving. A new
        or changed input starts at the config's value (options.values), else its default."""
        if not isinstance(declarations, list):
            raise ValueError("the child reported a malformed declaration list")
        wanted: dict[str, tuple[Param, dict[str, Any]]] = {}
        taken = {s for p in self.params if p.name not in self._decls for s in p.pv_suffixes}
        for d in declarations:
            param = _declared(d)
            clash = [s for s in param.pv_suffixes if s in taken]
            if clash:
                raise ValueError(f"parameter {d['attr']!r} would be PV {clash[0]}, which the "
                                 f"plugin already has; choose another name (name=...)")
            wanted[param.name] = (param, d)
        stale = [n for n, d in self._decls.items()
                 if n not in wanted or wanted[n][1] != d]
        fresh = [(p, d) for n, (p, d) in wanted.items()
                 if n not in self._decls or self._decls[n] != d]
        if stale or fresh:  # a restart or another worker declaring the same: no change
            with self.changing_declarations():  # one screen update for the whole change
                self._replace_params(stale, fresh)
        self._attr_of = {n: d["attr"] for n, d in self._decls.items() if d["direction"] == "in"}
        self._out_param = {d["attr"]: n for n, d in self._decls.items()
                           if d["direction"] == "out"}
        self.inputs_version += 1
        if stale or fresh:
            self.log.info("%s: parameters now %s", self.port, ", ".join(self._decls) or "none")

    def _replace_params(self, stale: list[str], fresh: list[tuple[Param, dict[str, Any]]]
                        ) -> None:
        if stale:
            self.remove_params(stale)
            for name in stale:
                self._decls.pop(name)
        if fresh:
            params = [p for p, _ in fresh]
            configured = {n: v for n, v in self.options.values.items()
                          if any(p.name == n and p.writable for p in params)}
            table = {p.name: p for p in params}
            values = {p.name: p.default for p in params}
            try:
                values.update(initial_values(ParamTable(table), configured))
            except ValueError as exc:
                self._values_error = str(exc)
                raise
            self.add_params(params, values)
            for p, d in fresh:
                self._decls[p.name] = d

    def after_put(self, param: Param, value: Any) -> None:
        if param.name in self._attr_of:
            self.inputs_version += 1  # every child gets the new values before its next frame

    def put_Reload(self, value: int) -> int:
        if value:
            self.reload()
        return 0

    def reload(self) -> None:
        self._say(f"reloading {self.file.name}")
        for lane in self.lanes:
            lane.reload()

    def _publish_outputs(self, outputs: dict[str, Any]) -> list[str]:
        """Publish the outputs; returns what was wrong with any of them."""
        values, problems = {}, []
        with self._decl_lock:
            for attr, value in outputs.items():
                name = self._out_param.get(attr)
                if name is None:
                    continue
                try:
                    values[name], _ = self.params[name].coerce(value, result=True)
                except (TypeError, ValueError) as exc:
                    problems.append(f"output {attr}: {exc}")
                    self._last_error(problems[-1], "")
            self.set_if_changed(values)  # as an ai record: monitors only when it changes
        return problems

    def _output_array(self, array: NDArray, reply: dict[str, Any],
                      image: np.ndarray | None) -> Outputs:
        results = reply.get("outputs") or {}
        if image is None and not reply.get("remove") and not reply.get("attrs") and not results:
            return array  # unchanged: plugins never modify an array they received
        data = None if image is None else self.pool.alloc(image.shape, image.dtype)
        out = array.derive(array.data if image is None else data)  # its own attribute dict
        attributes = out.attributes
        for name in reply.get("remove") or ():
            attributes.pop(name, None)
        for name, value in results.items():  # outputs travel with the frame (Table1 saves them)
            attributes[name] = NDAttribute(name, value, f"output of {self.port}",
                                           source=f"{self.port}")
        for name, value in (reply.get("attrs") or {}).items():
            old = attributes.get(name)
            attributes[name] = NDAttribute(name, value, old.description if old else "",
                                           source=f"{self.port}")
        if image is None:
            return out
        if data is None:
            out.status = FrameStatus(MissingCause.NO_MEMORY, f"{self.port} pool limit reached")
            return out
        np.copyto(data, image)
        if list(reversed(image.shape)) != [d.size for d in array.dims]:
            out.dims = [NDDimension(n) for n in reversed(image.shape)]
            if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] != 3):
                out.color_mode = 0
            if out.channels and (image.ndim != 3 or image.shape[0] != len(out.channels)):
                out.channels = ()  # the algorithm's image no longer has those channels
        return out

    def _error(self, text: str, traceback: str) -> None:
        """A problem that lasts until the file loads again (no frame outcome replaces it)."""
        self._last_error(text, traceback)
        self._say(text, logging.WARNING)

    def _last_error(self, text: str, traceback: str) -> None:
        self.set("LastError_RBV", text[:255])
        if traceback:
            self.set("Traceback_RBV", traceback[-4095:])

    def _say(self, text: str, level: int = logging.INFO) -> None:
        """A status that is not about one frame: shown until the next one."""
        with self._status_lock:
            self._problem = None
            self.message(text[:255], level)

    def _frame_status(self, unique_id: int, problem: str | None) -> None:
        """StatusMessage_RBV describes the latest frame: while frames have a problem, the latest
        one's number, the problem and the frame it began with; the first frame without one
        says so ("frame 9: OK"), and that stays until something else happens. The log gets a
        line when the problem begins, changes or ends, not one per frame."""
        with self._status_lock:
            before = self._problem
            if problem is None:
                if before is None:
                    return
                self._problem = None
                self.message(f"frame {unique_id}: OK", log=False)
                self.log.info("frame %d: OK again (after: %s)", unique_id, before)
                return
            if problem != before:
                self._problem, self._problem_since = problem, unique_id
                self.log.warning("frame %d: %s", unique_id, problem)
            since = self._problem_since
            text = f"frame {unique_id}: {problem}"
            if since and since != unique_id:
                text += f" (since frame {since})"
            self.message(text[:255], log=False)

    # --- screen ------------------------------------------------------------------------------------
    @property
    def screen_name(self) -> str:
        """Each instance declares its own parameters, so each has its own screen, `<port>.bob`."""
        return self.port

    @property
    def screen_title(self) -> str:
        return f"{self.port} ({self.file.name})"

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        if self._watch is not None:
            self._watch.start()

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:  # the watch and the children go whatever the base class met
            if self._watch is not None:
                self._watch.stop()
            for lane in self.lanes:
                lane.close()


def _declared(d: Any) -> Param:
    """The parameter of one declaration the child reported, checked: the child runs user code,
    so a malformed reply is a one-line ValueError, never an exception in the lane's thread."""
    if not isinstance(d, dict) or not isinstance(d.get("attr"), str) or \
            d.get("direction") not in ("in", "out"):
        raise ValueError("the child reported a malformed declaration")
    param = from_description(d.get("param"))
    if param.writable != (d["direction"] == "in"):
        raise ValueError(f"{param.name}: an {d['direction']}put declared "
                         f"{'read-only' if not param.writable else 'writable'}")
    return param

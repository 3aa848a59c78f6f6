"""ArrayPort: what drivers and plugins share as NDArray producers (ADCore's asynNDArrayDriver).

It owns the port's ArrayPool, publishes the NDArrayBase description of arrays, computes
ArrayRate_RBV and the Pool* figures once a second, and hands arrays to the plugins listening on
its port.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import numpy as np

from . import attributes
from .adcore import NDARRAY_BASE
from .component import Component, PutRefused
from .graph import PortGraph
from .ndarray import FrameStatus, MissingCause, NDArray
from .pool import ArrayPool, Block, NoMemory, heap_block
from .refusals import REFUSALS
from .transport import HANDLED

MB = 1024 * 1024


class ArrayPort(Component):
    PARAMS = (NDARRAY_BASE,)

    def __init__(self, port: str, prefix: str, graph: PortGraph, pool_bytes: int = 0,
                 new_block: Callable[[int], Block] = heap_block) -> None:
        super().__init__(port, prefix)
        self.graph = graph
        self.pool = ArrayPool(pool_bytes, new_block, name=port)
        self.values["PoolMaxMem"] = pool_bytes / MB
        self._rate_counter = 0
        self._described: tuple | None = None  # the layout describe() last published
        self._to_describe: tuple[NDArray, bool] | None = None  # the latest array, not yet shown
        #: ArraySizeX/Y/Z_RBV of the output, for plugins that show it instead of the input's
        #: (ROI, Transform); applied over the input's description at every publish
        self.output_sizes: dict[str, int] = {}
        self.attribute_specs: list[attributes.AttributeSpec] = []  # from NDAttributesFile

    # --- array description ------------------------------------------------------------------------
    def describe(self, array: NDArray, with_type: bool) -> None:
        """Show what ADCore's NDArrayBase records show about `array`. Per frame this only keeps
        a reference: the values are computed for the latest array when the publisher collects
        (before_publish), at most once per publish interval."""
        if array.data is not None:
            self._to_describe = (array, with_type)

    def before_publish(self) -> None:
        pending, self._to_describe = self._to_describe, None
        if pending is not None:
            self._describe_now(*pending)
        if self.output_sizes:
            self.set_if_changed(self.output_sizes)
        self.set_if_changed({"NumQueuedArrays": self.queued_arrays()})

    def queued_arrays(self) -> int:
        """NumQueuedArrays: arrays this port passed on that plugins hold queued, not processed
        yet. ADCore counts the arrays of a port's pool in plugin queues; a driver counts what
        WaitForPlugins waits for (Driver.queued_arrays)."""
        graph = self.graph
        return sum(p.queued for p in graph.subscribers(self.port, 0) + graph.addressed(self.port))

    def _describe_now(self, array: NDArray, with_type: bool) -> None:
        self.set_if_changed({
            "UniqueId_RBV": array.unique_id, "TimeStamp_RBV": array.timestamp,
            "EpicsTSSec_RBV": array.epics_ts[0], "EpicsTSNsec_RBV": array.epics_ts[1],
            "CompressedSize_RBV": array.compressed_size})
        key = (tuple(d.size for d in array.dims), array.dtype, array.color_mode,
               array.codec.name, with_type)
        if key == self._described:
            return
        self._described = key
        sizes = key[0]
        dims = np.zeros(10, dtype=np.int32)
        dims[: len(sizes)] = sizes
        x, y, z = array.xyz_sizes()
        values: dict[str, Any] = {
            "NDimensions": array.ndims, "Dimensions": dims,
            "ArraySizeX_RBV": x, "ArraySizeY_RBV": y, "ArraySizeZ_RBV": z,
            "ArraySize_RBV": array.nbytes, "Codec_RBV": array.codec.name,
        }
        for i in range(10):
            values[f"ArraySize{i}_RBV"] = sizes[i] if i < len(sizes) else 0
        if with_type:
            values["DataType"] = array.data_type
            values["ColorMode"] = array.color_mode
        self.set_if_changed(values)

    def set_if_changed(self, values: dict[str, Any]) -> None:
        """set() only what differs: for values recomputed on every frame."""
        for name, value in values.items():
            if self._changed(name, value):
                self.set(name, value)

    def _changed(self, name: str, value: Any) -> bool:
        old = self.values.get(name)
        if isinstance(value, np.ndarray):
            return not isinstance(old, np.ndarray) or not np.array_equal(old, value)
        return old != value

    # --- NDAttributesFile ---------------------------------------------------------------------------
    def put_NDAttributesFile(self, value: str) -> str:
        self._load_attributes(value, self.values["NDAttributesMacros"])
        return value

    def put_NDAttributesMacros(self, value: str) -> str:
        if self.values["NDAttributesFile"]:
            self._load_attributes(self.values["NDAttributesFile"], value)
        return value

    def _load_attributes(self, source: str, macros: str) -> None:
        if not source.strip():
            self.attribute_specs = []
            self.set("NDAttributesStatus", attributes.OK)
            return
        site = self.site
        # files only from the configured folders, opened without following links; messages
        # about a file never quote it (ndflow.attributes)
        folders = site.read_folders if site is not None else ()
        try:
            specs = attributes.load(source, macros, folders, site.base_dir if site else None,
                                    lambda name: name in self.params)
        except attributes.AttributesError as exc:
            self.set("NDAttributesStatus", exc.status)
            self.message(f"NDAttributesFile: {exc}", logging.WARNING)
            return  # the previous list stays in force
        self.attribute_specs = specs
        self.set("NDAttributesStatus", attributes.OK)
        self.message(f"NDAttributesFile: {len(specs)} attributes")

    def attach_attributes(self, array: NDArray) -> None:
        """Add this port's NDAttributesFile attributes to an array it produced."""
        if self.attribute_specs:
            attributes.attach(self.attribute_specs, self.values, array.attributes)

    # --- PreAllocBuffers --------------------------------------------------------------------------
    async def put_PreAllocBuffers(self, value: int) -> Any:
        """As asynNDArrayDriver: NumPreAllocBuffers buffers the size of the latest array
        (ArraySize_RBV) go into the pool's free list, so the next frames of that size reuse
        them; here their pages are touched too, so those frames pay no page faults. A busy
        record: the put completes when they are made (in an executor, not the event loop).
        The pool's limit and the IOC's memory budget stop it early, and say so."""
        if not value:
            return 0
        nbytes, count = int(self.values["ArraySize_RBV"]), int(self.values["NumPreAllocBuffers"])
        if nbytes <= 0:
            text = "PreAllocBuffers: no array yet; its size (ArraySize_RBV) is what is allocated"
            self.message(text, logging.WARNING)
            raise PutRefused(text)
        self.set("PreAllocBuffers", 1)
        try:
            made, refusal = await asyncio.get_running_loop().run_in_executor(
                None, self._pre_allocate, nbytes, count)
        finally:
            self.set("PreAllocBuffers", 0)
        text = f"PreAllocBuffers: {made} buffers of {nbytes} bytes in the free list"
        if refusal:
            self.message(f"{text}, {count - made} refused: {refusal}", logging.WARNING)
        else:
            self.message(text)
        if self.publisher is not None:  # the put completes after its readback and message show
            await self.publisher.drain()
        return HANDLED

    def _pre_allocate(self, nbytes: int, count: int) -> tuple[int, str]:
        held = []
        for _ in range(count):
            buffer = self.pool.alloc((nbytes,), np.uint8)
            if buffer is None:
                return len(held), self.pool.last_refusal
            buffer.fill(0)  # the pages now, not at the first frames
            held.append(buffer)
        return len(held), ""  # dropped here: each goes back to the free list

    # --- output buffers ------------------------------------------------------------------------------
    def output_buffer(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """A buffer for an output array from this port's pool. When the pool or the IOC's
        memory budget refuses, NoMemory is raised: the driver and plugin bases put a NO_MEMORY
        placeholder in the frame's place (`no_memory`), so no driver or plugin writes that."""
        return self.pool.take(shape, dtype)

    def no_memory(self, exc: NoMemory, array: NDArray) -> NDArray:
        """The placeholder for `array`'s output, whose buffer was refused: shown on the status
        at once, logged at most once per few seconds (it happens at every frame while memory
        is short). A driver's refused frame is said by the driver base with the other missing
        frames (Driver._publish_frame)."""
        text = f"array {array.unique_id}: {exc}"
        self.message(text, logging.WARNING, log=False)
        REFUSALS.line(self.log, f"{self.port}:memory", f"{self.port}: {text}")
        return array.derive(None, status=FrameStatus(MissingCause.NO_MEMORY,
                                                     f"{self.port}: {exc}"))

    # --- distribution -----------------------------------------------------------------------------
    def emit(self, array: NDArray) -> None:
        graph = self.graph
        for plugin in graph.subscribers(self.port, 0):
            plugin.receive(array)
        for plugin in graph.addressed(self.port):  # each cuts out its channel (ndflow.channels)
            plugin.receive(array)

    # --- housekeeping -----------------------------------------------------------------------------
    def periodic(self, elapsed: float) -> None:
        counter = self.values["ArrayCounter"]
        rate = max(0, counter - self._rate_counter) / elapsed if elapsed > 0 else 0.0
        self._rate_counter = counter
        if self._changed("ArrayRate_RBV", rate):
            self.set("ArrayRate_RBV", rate)
        stats = self.pool.stats()
        self.set_many({
            "PoolMaxMem": stats.max_bytes / MB, "PoolUsedMem": stats.used_bytes / MB,
            "PoolAllocBuffers": stats.alloc_buffers, "PoolFreeBuffers": stats.free_buffers,
            "PoolUsedBuffers": stats.alloc_buffers - stats.free_buffers,
        })

    def put_EmptyFreeList(self, value: int) -> int:
        if value:
            self.pool.empty_free_list()
        return 0

    def put_ArrayCounter(self, value: int) -> int:
        self._rate_counter = value
        return value

"""ArrayPort: what drivers and plugins share as NDArray producers (ADCore's asynNDArrayDriver).

It owns the port's ArrayPool, publishes the NDArrayBase description of arrays, computes
ArrayRate_RBV and the Pool* figures once a second, and hands arrays to the plugins listening on
its port.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from . import attributes
from .adcore import NDARRAY_BASE
from .component import Component
from .graph import PortGraph
from .ndarray import NDArray
from .pool import ArrayPool, Block, heap_block

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

"""Multi-channel frames: one NDArray holding C images of the same pixels (EIGER2's two energy
thresholds, Pilatus4's channels), as Lima2's `nb_channels()` and its `(N, C, H, W)` files do.

Representation (the smallest change to ADCore's NDArray): `NDArray.channels` names the
channels and numpy axis 0 holds them, so `data` is (C, H, W) and `dims` are [W, H, C] (dims[0]
is the fastest axis, as ever). ColorMode stays Mono: a channel is a separate measurement, not a
colour plane, and RGB frames keep ColorMode RGB1/2/3 and no channel names. A frame without
names is one channel, so every single-channel path is unchanged.

Addressing, as proposed for ADEiger (areaDetector/ADEiger#79): a plugin's `NDArrayAddress` 0
takes the whole frame, J (1-based) takes channel J. The plugin base cuts the channel out before
`process()` as a view (no copy); a frame without channels is channel 1 of itself. A plugin that
does not declare `channels_aware` and is given a multi-channel frame at address 0 refuses it on
its status PV (the frame becomes a processing-error placeholder) instead of treating the
channel axis as image rows.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import numpy as np

from .ndarray import AttrSource, NDArray, NDAttribute, NDDimension

#: most channels a frame may have: EIGER2 has 2 (4 in its "difference" modes), Pilatus4 up to
#: 4; the bound keeps per-channel PV arrays small
MAX_CHANNELS = 16
#: the NDAttribute a channel cut out by NDArrayAddress carries: which channel it is
CHANNEL_ATTRIBUTE = "Channel"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")


def channel_count(array: NDArray) -> int:
    """How many channels `array` holds (1 for a frame without channel names)."""
    return len(array.channels) or 1


def default_names(count: int, stem: str = "threshold") -> tuple[str, ...]:
    """`threshold_1`, `threshold_2`, ...: EIGER2's names for its counters."""
    return tuple(f"{stem}_{j}" for j in range(1, count + 1))


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """Channel names as given by a user (config): identifiers (they become attribute and HDF5
    names), unique, at most MAX_CHANNELS. Raises ValueError naming the bad one."""
    out = tuple(names)
    if len(out) > MAX_CHANNELS:
        raise ValueError(f"{len(out)} channel names; at most {MAX_CHANNELS}")
    for name in out:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"channel name {name!r} is not an identifier of at most 40 "
                             "characters (letters, digits, _)")
    if len(set(out)) != len(out):
        raise ValueError(f"channel names {list(out)} are not unique")
    return out


def address_problem(array: NDArray, address: int, channels_aware: bool) -> str | None:
    """Why a plugin at `address` cannot take `array` (a valid frame), or None if it can.
    `channels_aware`: the plugin handles a whole multi-channel frame at address 0."""
    count = channel_count(array)
    if address > count:
        names = f" ({', '.join(array.channels)})" if array.channels else ""
        return (f"NDArrayAddress {address}: array {array.unique_id} has {count} "
                f"channel{'s' if count > 1 else ''}{names}; use 0 (all) or 1..{count}")
    if count == 1:
        return None
    if address == 0:
        if channels_aware:
            return None
        return (f"array {array.unique_id} has {count} channels ({', '.join(array.channels)}); "
                f"this plugin handles one channel: set NDArrayAddress to 1..{count}")
    if array.codec.compressed or getattr(array, "sparse", None) is not None:
        return (f"array {array.unique_id} is {'compressed' if array.codec.compressed else 'sparse'}"
                f": channel {address} cannot be cut out of it (decompress/densify upstream)")
    return None


def channel_view(array: NDArray, address: int) -> NDArray:
    """Channel `address` (1-based) of a multi-channel frame as a frame of its own: a view of
    the pixels (no copy) with the other dims, the transform and the attributes, plus a
    `Channel` attribute naming it. Address 0, or a frame without channels, gives `array`."""
    if address == 0 or not array.channels or array.data is None:
        return array
    if not 1 <= address <= len(array.channels):
        raise IndexError(f"channel {address} of a {len(array.channels)}-channel frame")
    name = array.channels[address - 1]
    dims = [NDDimension(d.size, d.offset, d.binning, d.reverse) for d in array.dims[:-1]]
    out = array.derive(array.data[address - 1], dims=dims, channels=())
    out.attributes[CHANNEL_ATTRIBUTE] = NDAttribute(
        CHANNEL_ATTRIBUTE, name, "channel selected by NDArrayAddress", AttrSource.DRIVER,
        str(address))
    return out


def planes(array: NDArray) -> Iterator[tuple[str, np.ndarray]]:
    """(name, 2-D view) of each channel; a frame without channels is one plane named ""."""
    if not array.channels:
        yield "", array.data
        return
    for name, plane in zip(array.channels, array.data):
        yield name, plane


def multi_channel(data: np.ndarray, names: Iterable[str], **kw) -> NDArray:
    """An NDArray of a (C, H, W) array whose channels are `names` (C of them)."""
    names = tuple(names)
    if data.ndim < 2 or data.shape[0] != len(names):
        raise ValueError(f"data of shape {data.shape} does not hold {len(names)} channels "
                         "on axis 0")
    return NDArray.from_numpy(data, channels=names, **kw)

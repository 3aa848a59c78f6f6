"""Frames over pvAccess: a Kind.NDARRAY parameter served as NTNDArray (NDPluginPva's Image)."""

from __future__ import annotations

from typing import Any

from ..transport import PVSpec


class FrameEndpoint:
    """Placeholder until the NTNDArray conversion lands."""

    def __init__(self, spec: PVSpec, transport: Any) -> None:
        raise NotImplementedError("NTNDArray endpoints are not built yet")

"""pvAccess transport (p4p): every component's PVs as normative types, frames as NTNDArray."""

from .server import PVATransport

__all__ = ["PVATransport"]

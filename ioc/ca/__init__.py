"""Channel Access transport (caproto): every component's PVs, with the record fields clients use."""

from .server import CATransport

__all__ = ["CATransport"]

"""FTP ingest gateway: cameras upload here; each file is queued durably, forwarded to an
upstream archive over FTP, and handed to a local consumer (the FITS driver).

Modules: `model` (configuration, state, counters), `spool` (the durable forward queue),
`ingest` (the cameras' FTP server), `forwarder` (the archive side), `service` (the gateway
that runs them together).
"""

from .model import GatewayCounters, Upstream, UpstreamState
from .service import IngestGateway
from .spool import Spool, SpoolEntry, count_queued_on_disk

__all__ = ["GatewayCounters", "IngestGateway", "Spool", "SpoolEntry", "Upstream",
           "UpstreamState", "count_queued_on_disk"]

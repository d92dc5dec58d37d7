"""The gRPC side of Interlock: servicers, conversion, metrics and the server process."""

from interlock.server.app import InterlockServer, serve
from interlock.server.metrics import Metrics
from interlock.server.service import GuardService

__all__ = ["GuardService", "InterlockServer", "Metrics", "serve"]

"""The peering transport: one stream interface (``base``), an in-memory network (``memory``) and
real gRPC bridged to trio (``grpc_bridge``, imported on demand so memory-only users need no grpc).

May import: the ``base`` and ``memory`` submodules of this package.
"""

from .base import (
    AbortStream,
    AddressInUseError,
    BidiStream,
    Channel,
    ClientTLS,
    ClosedForSending,
    EndOfStream,
    Handler,
    ListenError,
    Outcome,
    Server,
    ServerTLS,
    Side,
    StatusCode,
    StreamCancelled,
    StreamFailed,
    StreamMethod,
    Transport,
    TransportError,
    UnaryMethod,
    identity,
)
from .memory import (
    Direction,
    MemoryCall,
    MemoryChannel,
    MemoryNetwork,
    MemoryServer,
    MemoryStream,
)

__all__ = [
    "AbortStream",
    "AddressInUseError",
    "BidiStream",
    "Channel",
    "ClientTLS",
    "ClosedForSending",
    "Direction",
    "EndOfStream",
    "Handler",
    "ListenError",
    "MemoryCall",
    "MemoryChannel",
    "MemoryNetwork",
    "MemoryServer",
    "MemoryStream",
    "Outcome",
    "Server",
    "ServerTLS",
    "Side",
    "StatusCode",
    "StreamCancelled",
    "StreamFailed",
    "StreamMethod",
    "Transport",
    "TransportError",
    "UnaryMethod",
    "identity",
]

"""Resource type URLs of the peer stream (see the comments at the top of peerstream.proto).

A ``ReplicationMessage.Response`` names what it carries in ``ResourceURL``, and a subscription
or ACK/NACK ``Request`` echoes the same URL. Each URL is exactly what
``google.protobuf.Any.Pack`` writes as the type URL of the payload message, so
``Response.Resource.type_url == Response.ResourceURL`` for every UPSERT.

This module is plain data (standard library only), so the model can import it without
protobuf.
"""

from __future__ import annotations

#: Prefix of every Any type URL written by protobuf's ``Any.Pack``.
TYPE_URL_PREFIX = "type.googleapis.com/"

#: Services exported to the peer. ResourceID is the service name. The payload is a
#: ``hashicorp.consul.internal.peerstream.ExportedService`` (OPERATION_UPSERT), with no Nodes
#: when the service has no exported instances any more (Consul 1.14 and later: specs/wire.md).
TYPE_URL_EXPORTED_SERVICE = (
    "type.googleapis.com/hashicorp.consul.internal.peerstream.ExportedService"
)

#: The names of every service exported to the peer, sent when a stream starts (UPSERT with a
#: ``hashicorp.consul.internal.peerstream.ExportedServiceList`` payload) so that the importer can
#: drop services it still holds from an earlier stream (specs/findings.md, F4).
TYPE_URL_EXPORTED_SERVICE_LIST = (
    "type.googleapis.com/hashicorp.consul.internal.peerstream.ExportedServiceList"
)

#: ResourceID of the exported-service list: there is one list per stream direction. The value is
#: upstream's (``subExportedServiceList`` in
#: agent/grpc-external/services/peerstream/subscription_manager.go); importers do not read it.
EXPORTED_SERVICE_LIST_RESOURCE_ID = "exported-service-list"

#: The exporter's CA roots. The payload is a
#: ``hashicorp.consul.internal.peering.PeeringTrustBundle`` carrying TrustDomain and RootPEMs;
#: the importer fills in its own PeerName and Partition.
TYPE_URL_PEERING_TRUST_BUNDLE = (
    "type.googleapis.com/hashicorp.consul.internal.peering.PeeringTrustBundle"
)

#: ResourceID of the trust-bundle resource: there is one bundle per exporter. peerkit keeps the
#: seed's ID for its CA-roots resource (peering-protocol.md §5.4).
TRUST_BUNDLE_RESOURCE_ID = "roots"

#: The servers a peer can be dialed at (Consul 1.15 and later; peerkit neither sends nor reads
#: it). Only a dialer subscribes to it, so an acceptor may receive its subscription request.
TYPE_URL_PEERING_SERVER_ADDRESSES = (
    "type.googleapis.com/hashicorp.consul.internal.peering.PeeringServerAddresses"
)

#: Every resource type a peerkit stream subscribes to, in subscription order: upstream's three
#: (``realHandleStream``, agent/grpc-external/services/peerstream/stream_resources.go), the
#: list included, because the peer's ACK of the list names its URL and an ACK for a type the
#: sender never subscribed to is refused. peerkit's dialer leaves out the server addresses,
#: which it does not read.
RESOURCE_TYPE_URLS = (TYPE_URL_EXPORTED_SERVICE, TYPE_URL_EXPORTED_SERVICE_LIST,
                      TYPE_URL_PEERING_TRUST_BUNDLE)

#: The resource types a received Request may name (upstream's ``KnownTypeURL``,
#: proto/pbpeerstream/types.go); any other ends the stream.
KNOWN_TYPE_URLS = frozenset((*RESOURCE_TYPE_URLS, TYPE_URL_PEERING_SERVER_ADDRESSES))

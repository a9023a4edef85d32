"""peerkit's wire format: the .proto sources and the Python code generated from them.

Installed as ``peerkit.proto`` (the folder is ``proto/`` in the repository). The sources:

``peering.proto``     package ``hashicorp.consul.internal.peering``: ``PeeringService``
                      (GenerateToken, Establish, PeeringRead/List/Delete/Write, trust
                      bundles), ``Peering``, ``PeeringState``, ``PeeringTrustBundle``,
                      ``RemoteInfo`` and the messages applied through the replicated log.
``peerstream.proto``  package ``hashicorp.consul.internal.peerstream``:
                      ``PeerStreamService`` (StreamResources, ExchangeSecret),
                      ``ReplicationMessage``, ``Operation``, ``ExportedService``.
``service.proto``     package ``hashicorp.consul.internal.service``: the subset of Consul's
                      pbservice (``CheckServiceNode``, ``Node``, ``NodeService``,
                      ``HealthCheck``) that carries exported services to a peer.
``status.proto``      package ``hashicorp.consul.internal.status``: ``Status``, the NACK error
                      (google.rpc.Status numbering).
``catalog.proto``     package ``peerkit.catalog``: peerkit's own small catalog messages, for
                      the control service only (``Node``, ``Service``, ``HealthCheck``,
                      ``CheckServiceNode``).
``admin.proto``       package ``peerkit.admin``: ``AdminService``, peerkit's own API for
                      registering and exporting services and reading a server's state.

Field numbers follow Consul's released layout where upstream has the message, and are
peerkit's own elsewhere; ``proto/README.md`` lists which is which. Everything that crosses the
peer stream is pinned to upstream's own .proto text (``proto/upstream/``, not installed).

For each ``X.proto`` the generated modules are ``peerkit.proto.X_pb2`` (messages) and
``peerkit.proto.X_pb2_grpc`` (stubs and servicers), each with a ``.pyi`` stub from
mypy-protobuf. They are committed; after editing a .proto, regenerate them from the
repository root with::

    python proto/generate.py

and check that the committed code is current with ``python proto/generate.py --check``.
``peerkit.proto.resources`` holds the stream's resource type URLs as constants.
"""

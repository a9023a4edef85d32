"""A typed client for a peerkit server's unary RPCs, over any transport channel.

One job: wrap ``Channel.unary`` with one method per RPC of ``PeeringService``,
``PeerStreamService.ExchangeSecret`` and ``AdminService``, so tests, the demo and the CLI call
``await client.peering_read("dc2")`` instead of spelling method names and (de)serializers. Errors
surface as the transport's ``StreamFailed`` (status code + message).

Use: ``async with PeerkitClient.connect(transport, address) as client: ...`` (``tls=ClientTLS``
for a server that listens with TLS) or wrap an open channel with ``PeerkitClient(channel)``.

May import: the standard library, protobuf, ``peerkit.proto`` and the sibling modules
``.codec`` and ``.transport``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

from google.protobuf.message import Message

from peerkit.proto import admin_pb2, peering_pb2, peerstream_pb2

from .codec import ADMIN_METHODS, METHOD_EXCHANGE_SECRET, PEERING_METHODS, TEST_HOOK_METHODS
from .transport import Channel, ClientTLS, Transport

__all__ = ["PeerkitClient"]

Resp = TypeVar("Resp", bound=Message)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class PeerkitClient:
    """Calls the unary RPCs of one server. ``timeout`` (seconds) applies to every call."""

    def __init__(self, channel: Channel, *, timeout: float | None = 30.0) -> None:
        self.channel = channel
        self.timeout = timeout

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, transport: Transport, address: str, *, timeout: float | None = 30.0,
        tls: ClientTLS | None = None,
    ) -> AsyncIterator[PeerkitClient]:
        async with transport.connect(address, tls=tls) as channel:
            yield cls(channel, timeout=timeout)

    async def call(self, method: str, request: Message, response_type: type[Resp]) -> Resp:
        response: Resp = await self.channel.unary(
            method, request, _serialize, response_type.FromString, timeout=self.timeout
        )
        return response

    # ---- PeeringService --------------------------------------------------------------------

    async def generate_token(
        self,
        peer_name: str,
        *,
        partition: str = "",
        meta: Mapping[str, str] | None = None,
        server_external_addresses: Iterable[str] = (),
    ) -> str:
        resp = await self.call(
            PEERING_METHODS["GenerateToken"],
            peering_pb2.GenerateTokenRequest(
                PeerName=peer_name,
                Partition=partition,
                Meta=dict(meta or {}),
                ServerExternalAddresses=list(server_external_addresses),
            ),
            peering_pb2.GenerateTokenResponse,
        )
        return resp.PeeringToken

    async def establish(
        self,
        peer_name: str,
        token: str,
        *,
        partition: str = "",
        meta: Mapping[str, str] | None = None,
    ) -> None:
        await self.call(
            PEERING_METHODS["Establish"],
            peering_pb2.EstablishRequest(
                PeerName=peer_name, PeeringToken=token, Partition=partition, Meta=dict(meta or {})
            ),
            peering_pb2.EstablishResponse,
        )

    async def peering_read(self, name: str, *, partition: str = "") -> peering_pb2.Peering | None:
        """The peering, or None when there is none with that name."""
        resp = await self.call(
            PEERING_METHODS["PeeringRead"],
            peering_pb2.PeeringReadRequest(Name=name, Partition=partition),
            peering_pb2.PeeringReadResponse,
        )
        return resp.Peering if resp.HasField("Peering") else None

    async def peering_list(self, *, partition: str = "") -> list[peering_pb2.Peering]:
        resp = await self.call(
            PEERING_METHODS["PeeringList"],
            peering_pb2.PeeringListRequest(Partition=partition),
            peering_pb2.PeeringListResponse,
        )
        return list(resp.Peerings)

    async def peering_delete(self, name: str, *, partition: str = "") -> None:
        await self.call(
            PEERING_METHODS["PeeringDelete"],
            peering_pb2.PeeringDeleteRequest(Name=name, Partition=partition),
            peering_pb2.PeeringDeleteResponse,
        )

    async def trust_bundle_read(
        self, name: str, *, partition: str = ""
    ) -> peering_pb2.PeeringTrustBundle | None:
        resp = await self.call(
            PEERING_METHODS["TrustBundleRead"],
            peering_pb2.TrustBundleReadRequest(Name=name, Partition=partition),
            peering_pb2.TrustBundleReadResponse,
        )
        return resp.Bundle if resp.HasField("Bundle") else None

    async def trust_bundle_list_by_service(
        self, service: str, *, partition: str = ""
    ) -> list[peering_pb2.PeeringTrustBundle]:
        resp = await self.call(
            PEERING_METHODS["TrustBundleListByService"],
            peering_pb2.TrustBundleListByServiceRequest(ServiceName=service, Partition=partition),
            peering_pb2.TrustBundleListByServiceResponse,
        )
        return list(resp.Bundles)

    # ---- PeerStreamService -----------------------------------------------------------------

    async def exchange_secret(self, peer_id: str, establishment_secret: str) -> str:
        resp = await self.call(
            METHOD_EXCHANGE_SECRET,
            peerstream_pb2.ExchangeSecretRequest(
                PeerID=peer_id, EstablishmentSecret=establishment_secret
            ),
            peerstream_pb2.ExchangeSecretResponse,
        )
        return resp.StreamSecret

    # ---- AdminService ----------------------------------------------------------------------

    async def register_service(
        self,
        node: str,
        service: str,
        *,
        service_id: str = "",
        port: int = 0,
        tags: Iterable[str] = (),
    ) -> str:
        resp = await self.call(
            ADMIN_METHODS["RegisterService"],
            admin_pb2.RegisterServiceRequest(
                NodeName=node, ServiceName=service, ServiceID=service_id, Port=port,
                Tags=list(tags),
            ),
            admin_pb2.RegisterServiceResponse,
        )
        return resp.ServiceID

    async def deregister_service(self, *, service_id: str = "", service: str = "") -> int:
        resp = await self.call(
            ADMIN_METHODS["DeregisterService"],
            admin_pb2.DeregisterServiceRequest(ServiceID=service_id, ServiceName=service),
            admin_pb2.DeregisterServiceResponse,
        )
        return resp.Removed

    async def export_service(self, service: str, peer_name: str) -> None:
        await self.call(
            ADMIN_METHODS["ExportService"],
            admin_pb2.ExportServiceRequest(ServiceName=service, PeerName=peer_name),
            admin_pb2.ExportServiceResponse,
        )

    async def unexport_service(self, service: str, peer_name: str) -> None:
        await self.call(
            ADMIN_METHODS["UnexportService"],
            admin_pb2.UnexportServiceRequest(ServiceName=service, PeerName=peer_name),
            admin_pb2.UnexportServiceResponse,
        )

    async def read_catalog(self) -> admin_pb2.ReadCatalogResponse:
        return await self.call(
            ADMIN_METHODS["ReadCatalog"], admin_pb2.ReadCatalogRequest(),
            admin_pb2.ReadCatalogResponse,
        )

    async def status(self) -> admin_pb2.StatusResponse:
        return await self.call(
            ADMIN_METHODS["Status"], admin_pb2.StatusRequest(), admin_pb2.StatusResponse
        )

    async def reset_stream(self, peer_name: str) -> int:
        """TestHookService.ResetStream: how many live streams of the peering were reset."""
        resp = await self.call(
            TEST_HOOK_METHODS["ResetStream"], admin_pb2.ResetStreamRequest(PeerName=peer_name),
            admin_pb2.ResetStreamResponse,
        )
        return resp.Reset

    async def failover(self) -> int:
        """TestHookService.Failover: the number of the leadership term that started."""
        resp = await self.call(
            TEST_HOOK_METHODS["Failover"], admin_pb2.FailoverRequest(), admin_pb2.FailoverResponse
        )
        return resp.Term

    async def hold_deletion(self, hold: bool) -> None:
        """TestHookService.HoldDeletion: hold (True) or release (False) the deletion routines."""
        await self.call(
            TEST_HOOK_METHODS["HoldDeletion"], admin_pb2.HoldDeletionRequest(Hold=hold),
            admin_pb2.HoldDeletionResponse,
        )

    async def hold_receive(self, peer_name: str, hold: bool) -> None:
        """TestHookService.HoldReceive: hold (True) or release (False) the receiving of the
        named peering's stream handlers."""
        await self.call(
            TEST_HOOK_METHODS["HoldReceive"],
            admin_pb2.HoldReceiveRequest(PeerName=peer_name, Hold=hold),
            admin_pb2.HoldReceiveResponse,
        )

    async def deletion_routines(self) -> list[admin_pb2.DeletionRoutine]:
        """TestHookService.DeletionRoutines: the deletion routines started, by term."""
        resp = await self.call(
            TEST_HOOK_METHODS["DeletionRoutines"], admin_pb2.DeletionRoutinesRequest(),
            admin_pb2.DeletionRoutinesResponse,
        )
        return list(resp.Routines)

    async def imported_services(self, peer_name: str) -> list[str]:
        """Names of the services imported from ``peer_name`` (from ReadCatalog), sorted."""
        catalog = await self.read_catalog()
        for entry in catalog.Imports:
            if entry.PeerName == peer_name:
                return sorted({n.Service.Name for n in entry.Nodes})
        return []

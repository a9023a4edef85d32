"""The wire format in proto/: generated code is current, layout matches the reference.

Field numbers and enum values are read from the generated descriptors and compared with
peering-protocol.md §6 (released layout, decision (b)); peerkit's own numbers (catalog.proto,
admin.proto) are pinned too, because changing any of them breaks the control service. What
crosses the peer stream is also compared with upstream's own .proto text in
tests/test_wire_pin.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, timestamp_pb2

# mypy cannot follow the editable install's mapping of peerkit.proto onto proto/, so it does
# not see these modules (the generated .pyi stubs themselves type-check once it does).
from peerkit.proto import (  # type: ignore[import-not-found,unused-ignore]
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    generate,
    peering_pb2,
    peering_pb2_grpc,
    peerstream_pb2,
    peerstream_pb2_grpc,
    resources,
    service_pb2,
    status_pb2,
)

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "proto"
PROTO_STEMS = ("admin", "catalog", "peering", "peerstream", "service", "status")


def field_numbers(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def reserved_numbers(message: Any) -> set[int]:
    proto = descriptor_pb2.DescriptorProto()
    message.DESCRIPTOR.CopyToProto(proto)
    return {n for r in proto.reserved_range for n in range(r.start, r.end)}


def enum_values(enum_descriptor: Any) -> dict[str, int]:
    return {v.name: v.number for v in enum_descriptor.values}


# --------------------------------------------------------------------------------------------
# Code generation
# --------------------------------------------------------------------------------------------


def test_committed_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTO_DIR / "generate.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_stale_missing_and_orphaned_files(tmp_path: Path) -> None:
    for path in PROTO_DIR.iterdir():
        if path.suffix in (".proto", ".py", ".pyi") and path.name != "__init__.py":
            shutil.copy(path, tmp_path / path.name)
    assert generate.stale_files(tmp_path) == []

    (tmp_path / "peering_pb2.py").write_text("# edited by hand\n")
    (tmp_path / "status_pb2.pyi").unlink()
    (tmp_path / "gone_pb2_grpc.py").write_text("")
    assert generate.stale_files(tmp_path) == [
        "gone_pb2_grpc.py (no .proto source)",
        "peering_pb2.py (differs)",
        "status_pb2.pyi (missing)",
    ]


def test_every_proto_has_its_four_generated_files() -> None:
    assert sorted(p.stem for p in PROTO_DIR.glob("*.proto")) == list(PROTO_STEMS)
    for stem in PROTO_STEMS:
        for suffix in generate.GENERATED_SUFFIXES:
            assert (PROTO_DIR / (stem + suffix)).is_file(), stem + suffix
    assert (PROTO_DIR / "py.typed").is_file()


def test_relativize_imports_rewrites_only_siblings_and_is_idempotent() -> None:
    siblings = {"peering_pb2", "peerstream_pb2"}
    source = textwrap.dedent(
        """\
        import grpc
        import peering_pb2 as peering__pb2
        from google.protobuf import any_pb2 as google_dot_protobuf_dot_any__pb2
        import peerstream_pb2
        from peering_pb2 import Peering
        import other_pb2
        """
    )
    once = generate.relativize_imports(source, siblings)
    assert once == textwrap.dedent(
        """\
        import grpc
        from . import peering_pb2 as peering__pb2
        from google.protobuf import any_pb2 as google_dot_protobuf_dot_any__pb2
        from . import peerstream_pb2
        from .peering_pb2 import Peering
        import other_pb2
        """
    )
    assert generate.relativize_imports(once, siblings) == once


def test_generated_files_have_no_bare_sibling_imports() -> None:
    siblings = "|".join(f"{stem}_pb2(?:_grpc)?" for stem in PROTO_STEMS)
    bare = re.compile(rf"^\s*(?:import ({siblings})\b|from ({siblings}) import)", re.M)
    for stem in PROTO_STEMS:
        for suffix in generate.GENERATED_SUFFIXES:
            text = (PROTO_DIR / (stem + suffix)).read_text()
            assert not bare.search(text), f"{stem + suffix} imports a sibling absolutely"


def test_modules_import_as_a_package_without_proto_dir_on_sys_path(tmp_path: Path) -> None:
    program = f"stems = {PROTO_STEMS!r}\n" + textwrap.dedent(
        """\
        import importlib, importlib.util, sys
        names = [f"{s}_pb2{g}" for s in stems for g in ("", "_grpc")]
        for name in names:
            importlib.import_module("peerkit.proto." + name)
        leaked = [n for n in names if n in sys.modules or importlib.util.find_spec(n)]
        assert not leaked, leaked
        assert not any(p.rstrip("/").endswith("proto") for p in sys.path), sys.path
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------

RM = peerstream_pb2.ReplicationMessage


def _exported_service() -> Any:
    return peerstream_pb2.ExportedService(
        Nodes=[
            service_pb2.CheckServiceNode(
                Node=service_pb2.Node(Node="node-a", Address="10.0.0.1", Partition="default"),
                Service=service_pb2.NodeService(ID="web-1", Service="web", Port=8080, Tags=["v1"]),
                Checks=[
                    service_pb2.HealthCheck(
                        Node="node-a", CheckID="service:web-1", Name="web", Status="passing",
                        ServiceID="web-1", ServiceName="web",
                    )
                ],
            )
        ]
    )


def _messages() -> dict[str, Any]:
    resource = any_pb2.Any()
    resource.Pack(_exported_service())
    return {
        "open": RM(
            open=RM.Open(
                PeerID="acceptor-id",
                StreamSecretID="secret",
                Remote=peering_pb2.RemoteInfo(Partition="default", Datacenter="dc2"),
            )
        ),
        "request": RM(
            request=RM.Request(
                PeerID="acceptor-id",
                ResponseNonce="00000001",
                ResourceURL=resources.TYPE_URL_EXPORTED_SERVICE,
                Error=status_pb2.Status(code=3, message='unsupported operation: "Unknown"'),
            )
        ),
        "response": RM(
            response=RM.Response(
                Nonce="00000001",
                ResourceURL=resources.TYPE_URL_EXPORTED_SERVICE,
                ResourceID="web",
                Resource=resource,
                operation=peerstream_pb2.OPERATION_UPSERT,
            )
        ),
        "terminated": RM(terminated=RM.Terminated()),
        "heartbeat": RM(heartbeat=RM.Heartbeat()),
    }


@pytest.mark.parametrize("kind", ["open", "request", "response", "terminated", "heartbeat"])
def test_replication_message_round_trip(kind: str) -> None:
    message = _messages()[kind]
    assert message.WhichOneof("Payload") == kind
    wire = message.SerializeToString(deterministic=True)
    decoded = RM.FromString(wire)
    assert decoded == message
    assert decoded.WhichOneof("Payload") == kind
    assert decoded.SerializeToString(deterministic=True) == wire


def test_empty_payloads_still_select_their_oneof_case() -> None:
    # Terminated and Heartbeat have no fields; the oneof tag alone must survive the wire.
    for kind in ("terminated", "heartbeat"):
        wire = _messages()[kind].SerializeToString()
        assert wire != b""
        assert RM.FromString(wire).WhichOneof("Payload") == kind
    assert RM.FromString(b"").WhichOneof("Payload") is None


def test_response_resource_unpacks_and_a_removal_is_an_empty_upsert() -> None:
    response = RM.FromString(_messages()["response"].SerializeToString()).response
    assert response.Resource.type_url == response.ResourceURL
    unpacked = peerstream_pb2.ExportedService()
    assert response.Resource.Unpack(unpacked)
    assert unpacked == _exported_service()

    removal = RM(
        response=RM.Response(
            Nonce="00000002",
            ResourceURL=resources.TYPE_URL_EXPORTED_SERVICE,
            ResourceID="web",
            operation=peerstream_pb2.OPERATION_UPSERT,
        )
    )
    removal.response.Resource.Pack(peerstream_pb2.ExportedService())
    decoded = RM.FromString(removal.SerializeToString()).response
    assert decoded.operation == peerstream_pb2.OPERATION_UPSERT
    emptied = peerstream_pb2.ExportedService()
    assert decoded.Resource.Unpack(emptied) and list(emptied.Nodes) == []


def test_peering_round_trip_with_deleted_at() -> None:
    peering = peering_pb2.Peering(
        ID="9e6b6b5e-0000-4000-8000-000000000001",
        Name="my-peer",
        Partition="default",
        DeletedAt=timestamp_pb2.Timestamp(seconds=1_655_000_000),
        Meta={"env": "test"},
        State=peering_pb2.DELETING,
        PeerID="remote-id",
        PeerCAPems=["-----BEGIN CERTIFICATE-----"],
        PeerServerName="server.dc1.peering.example",
        PeerServerAddresses=["127.0.0.1:8502"],
        CreateIndex=7,
        ModifyIndex=9,
        ImportedServiceCount=2,
        ExportedServiceCount=1,
    )
    assert peering_pb2.Peering.FromString(peering.SerializeToString()) == peering


# --------------------------------------------------------------------------------------------
# Layout against the reference (peering-protocol.md §1.2, §6.2, §6.3)
# --------------------------------------------------------------------------------------------


def test_packages() -> None:
    assert peering_pb2.DESCRIPTOR.package == "hashicorp.consul.internal.peering"
    assert peerstream_pb2.DESCRIPTOR.package == "hashicorp.consul.internal.peerstream"
    assert status_pb2.DESCRIPTOR.package == "hashicorp.consul.internal.status"
    assert service_pb2.DESCRIPTOR.package == "hashicorp.consul.internal.service"
    assert catalog_pb2.DESCRIPTOR.package == "peerkit.catalog"
    assert admin_pb2.DESCRIPTOR.package == "peerkit.admin"
    for module in (peering_pb2, peerstream_pb2, service_pb2, status_pb2, catalog_pb2, admin_pb2):
        file_proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file_proto)
        assert file_proto.syntax == "proto3"


def test_peering_state_released_numbering() -> None:
    assert enum_values(peering_pb2.PeeringState.DESCRIPTOR) == {
        "UNDEFINED": 0,
        "PENDING": 1,
        "ESTABLISHING": 2,
        "ACTIVE": 3,
        "FAILING": 4,
        "DELETING": 5,
        "TERMINATED": 6,
    }


def test_peering_state_matches_the_shared_vocabulary() -> None:
    from peerkit.model.vocabulary import PeeringState  # type: ignore[import-not-found,unused-ignore]

    assert {s.name: s.value for s in PeeringState} == enum_values(
        peering_pb2.PeeringState.DESCRIPTOR
    )


def test_peering_field_numbers() -> None:
    assert field_numbers(peering_pb2.Peering) == {
        "ID": 1,
        "Name": 2,
        "Partition": 3,
        "DeletedAt": 4,
        "Meta": 5,
        "State": 6,
        "PeerID": 7,
        "PeerCAPems": 8,
        "PeerServerName": 9,
        "PeerServerAddresses": 10,
        "CreateIndex": 11,
        "ModifyIndex": 12,
        "ImportedServiceCount": 13,
        "ExportedServiceCount": 14,
    }
    fields = peering_pb2.Peering.DESCRIPTOR.fields_by_name
    assert fields["DeletedAt"].message_type.full_name == "google.protobuf.Timestamp"
    assert fields["State"].enum_type.full_name == "hashicorp.consul.internal.peering.PeeringState"


def test_peering_messages_field_numbers() -> None:
    assert field_numbers(peering_pb2.PeeringTrustBundle) == {
        "TrustDomain": 1,
        "PeerName": 2,
        "Partition": 3,
        "RootPEMs": 4,
        "ExportedPartition": 5,
        "CreateIndex": 6,
        "ModifyIndex": 7,
    }
    assert field_numbers(peering_pb2.GenerateTokenRequest) == {
        "PeerName": 1,
        "Partition": 2,
        "Meta": 5,
        "ServerExternalAddresses": 6,
    }
    assert reserved_numbers(peering_pb2.GenerateTokenRequest) == {3, 4}
    assert field_numbers(peering_pb2.GenerateTokenResponse) == {"PeeringToken": 1}
    assert field_numbers(peering_pb2.EstablishRequest) == {
        "PeerName": 1,
        "PeeringToken": 2,
        "Partition": 3,
        "Meta": 4,
    }
    assert field_numbers(peering_pb2.PeeringListResponse) == {"Peerings": 1, "Index": 2}
    assert field_numbers(peering_pb2.PeeringWriteRequest) == {"Peering": 1, "Meta": 3}
    assert reserved_numbers(peering_pb2.PeeringWriteRequest) == {2}
    assert field_numbers(peering_pb2.PeeringDeleteRequest) == {
        "Name": 1,
        "Partition": 2,
        "Datacenter": 3,
    }
    assert field_numbers(peering_pb2.TrustBundleReadResponse) == {"Index": 1, "Bundle": 2}
    assert field_numbers(peering_pb2.TrustBundleListByServiceRequest) == {
        "ServiceName": 1,
        "Namespace": 2,
        "Partition": 3,
        "Kind": 4,
    }
    assert field_numbers(peering_pb2.TrustBundleListByServiceResponse) == {
        "Index": 1,
        "Bundles": 2,
    }
    assert field_numbers(peering_pb2.PeeringTerminateByIDRequest) == {"ID": 1}
    assert field_numbers(peering_pb2.PeeringTrustBundleWriteRequest) == {
        "PeeringTrustBundle": 1,
        "Datacenter": 2,
    }
    # peerkit's own choice: the reference does not record RemoteInfo's numbers.
    assert field_numbers(peering_pb2.RemoteInfo) == {"Partition": 1, "Datacenter": 2}


def test_replication_message_layout() -> None:
    oneof = RM.DESCRIPTOR.oneofs_by_name["Payload"]
    assert {f.name: f.number for f in oneof.fields} == {
        "open": 1,
        "request": 2,
        "response": 3,
        "terminated": 4,
        "heartbeat": 5,
    }
    assert field_numbers(RM.Open) == {"PeerID": 1, "StreamSecretID": 2, "Remote": 3}
    assert (
        RM.Open.DESCRIPTOR.fields_by_name["Remote"].message_type.full_name
        == "hashicorp.consul.internal.peering.RemoteInfo"
    )
    assert field_numbers(RM.Request) == {
        "PeerID": 1,
        "ResponseNonce": 2,
        "ResourceURL": 3,
        "Error": 5,
    }
    assert RM.Request.DESCRIPTOR.fields_by_name["Error"].number == 5
    assert reserved_numbers(RM.Request) == {4}
    assert (
        RM.Request.DESCRIPTOR.fields_by_name["Error"].message_type.full_name
        == "hashicorp.consul.internal.status.Status"
    )
    assert field_numbers(RM.Response) == {
        "Nonce": 1,
        "ResourceURL": 2,
        "ResourceID": 3,
        "Resource": 4,
        "operation": 5,
    }
    assert (
        RM.Response.DESCRIPTOR.fields_by_name["Resource"].message_type.full_name
        == "google.protobuf.Any"
    )
    assert field_numbers(RM.Terminated) == {}
    assert field_numbers(RM.Heartbeat) == {}


def test_peerstream_other_messages() -> None:
    assert enum_values(peerstream_pb2.Operation.DESCRIPTOR) == {
        "OPERATION_UNSPECIFIED": 0,
        "OPERATION_UPSERT": 1,
    }
    assert field_numbers(peerstream_pb2.LeaderAddress) == {"address": 1}
    assert field_numbers(peerstream_pb2.ExportedService) == {"Nodes": 1}
    assert field_numbers(peerstream_pb2.ExportedServiceList) == {"Services": 1}
    assert field_numbers(peerstream_pb2.ExchangeSecretRequest) == {
        "PeerID": 1,
        "EstablishmentSecret": 2,
    }
    assert field_numbers(peerstream_pb2.ExchangeSecretResponse) == {"StreamSecret": 1}
    assert field_numbers(status_pb2.Status) == {"code": 1, "message": 2, "details": 3}


def test_catalog_field_numbers() -> None:
    assert field_numbers(catalog_pb2.Node) == {
        "Name": 1,
        "Address": 2,
        "Partition": 3,
        "PeerName": 4,
    }
    assert field_numbers(catalog_pb2.Service) == {
        "ID": 1,
        "Name": 2,
        "Port": 3,
        "Tags": 4,
        "PeerName": 5,
    }
    assert field_numbers(catalog_pb2.HealthCheck) == {
        "CheckID": 1,
        "Name": 2,
        "Status": 3,
        "ServiceID": 4,
        "PeerName": 5,
    }
    assert field_numbers(catalog_pb2.CheckServiceNode) == {"Node": 1, "Service": 2, "Checks": 3}


def test_resource_type_urls_are_what_any_pack_writes() -> None:
    packed = any_pb2.Any()
    packed.Pack(peerstream_pb2.ExportedService())
    assert packed.type_url == resources.TYPE_URL_EXPORTED_SERVICE
    assert resources.TYPE_URL_EXPORTED_SERVICE == (
        "type.googleapis.com/hashicorp.consul.internal.peerstream.ExportedService"
    )
    packed.Pack(peering_pb2.PeeringTrustBundle())
    assert packed.type_url == resources.TYPE_URL_PEERING_TRUST_BUNDLE
    assert resources.TYPE_URL_PEERING_TRUST_BUNDLE == (
        "type.googleapis.com/hashicorp.consul.internal.peering.PeeringTrustBundle"
    )


# --------------------------------------------------------------------------------------------
# gRPC method names
# --------------------------------------------------------------------------------------------


class _RecordingChannel:
    """Stands in for a grpc.Channel and records the full method names a stub asks for."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.methods.append(method)

    unary_unary = unary_stream = stream_unary = stream_stream = _record


def _stub_methods(stub_class: Any) -> list[str]:
    channel = _RecordingChannel()
    stub_class(channel)
    return sorted(channel.methods)


def test_grpc_full_method_names() -> None:
    assert _stub_methods(peerstream_pb2_grpc.PeerStreamServiceStub) == [
        "/hashicorp.consul.internal.peerstream.PeerStreamService/ExchangeSecret",
        "/hashicorp.consul.internal.peerstream.PeerStreamService/StreamResources",
    ]
    stream = peerstream_pb2.DESCRIPTOR.services_by_name["PeerStreamService"].methods_by_name[
        "StreamResources"
    ]
    assert stream.client_streaming and stream.server_streaming
    prefix = "/hashicorp.consul.internal.peering.PeeringService/"
    assert _stub_methods(peering_pb2_grpc.PeeringServiceStub) == sorted(
        prefix + name
        for name in (
            "GenerateToken",
            "Establish",
            "PeeringRead",
            "PeeringList",
            "PeeringDelete",
            "PeeringWrite",
            "TrustBundleRead",
            "TrustBundleListByService",
        )
    )
    prefix = "/peerkit.admin.AdminService/"
    assert _stub_methods(admin_pb2_grpc.AdminServiceStub) == sorted(
        prefix + name
        for name in (
            "RegisterService",
            "DeregisterService",
            "ExportService",
            "UnexportService",
            "ReadCatalog",
            "Status",
        )
    )

"""Crafted and broken peering tokens: each is refused with a clear reason, never a crash.

One job: ``decode_token`` raises only TokenError, for every token however crafted (deep JSON
nesting, huge numbers, thousands of addresses, wrong types, addresses that do not parse); and
Establish answers each with INVALID_ARGUMENT, changes nothing and the server keeps serving.
In-memory network, virtual time.

May import: pytest, trio, peerkit.impl (codec, testing, transport).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from peerkit.impl.codec import (
    MAX_TOKEN_ADDRESSES,
    MAX_TOKEN_CAS,
    MAX_TOKEN_CHARS,
    MAX_TOKEN_STRING_CHARS,
    TokenError,
    address_problem,
    decode_token,
)
from peerkit.impl.testing import Cluster, running_cluster
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed

GOOD = {"CA": None, "ServerAddresses": ["dc1.example:8502"], "ServerName": "server.dc1",
        "PeerID": "p-1", "EstablishmentSecret": "e"}


def pem(chars: int = 800) -> str:
    """A PEM CERTIFICATE block of about ``chars`` characters (the codec checks the structure
    only; TLS parses the certificate)."""
    body = base64.encodebytes(b"\x30" * (chars * 3 // 4 - 60)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def b64(body: str | bytes) -> str:
    raw = body.encode() if isinstance(body, str) else body
    return base64.b64encode(raw).decode()


def doc(**changes: object) -> str:
    return b64(json.dumps({**GOOD, **changes}))


def without(key: str) -> str:
    return b64(json.dumps({k: v for k, v in GOOD.items() if k != key}))


CRAFTED: list[tuple[str, str, str]] = [
    ("nested-200000", b64("[" * 200_000), f"longer than {MAX_TOKEN_CHARS} characters"),
    ("nested-5000", b64("[" * 5_000), "nests deeper than 3 levels"),
    ("nested-in-field", doc(PeerID=[[["x"]]]), "nests deeper than 3 levels"),
    ("nested-objects", b64('{"a":' * 1500 + "1" + "}" * 1500), "nests deeper"),
    ("number-5000-digits", b64('{"PeerID": ' + "9" * 5000 + "}"), "number longer than"),
    ("float-5000-digits", b64('{"PeerID": 1.' + "5" * 5000 + "}"), "number longer than"),
    ("nan", b64('{"PeerID": NaN}'), "NaN, which is not JSON"),
    ("addresses-5000", doc(ServerAddresses=[f"h{i}:1" for i in range(5000)]),
     f"longer than {MAX_TOKEN_CHARS} characters"),
    ("addresses-over-limit", doc(ServerAddresses=[f"h{i}:1" for i in
                                                  range(MAX_TOKEN_ADDRESSES + 1)]),
     f"at most {MAX_TOKEN_ADDRESSES} are allowed"),
    ("long-address", doc(ServerAddresses=["a" * 300 + ":1"]), "longer than 261 characters"),
    ("long-peer-id", doc(PeerID="p" * 5000), "PeerID is longer than"),
    ("not-base64", "%%%not base64%%%", "not valid base64"),
    ("not-utf8", b64(b"\xff\xfe"), "not valid JSON"),
    ("not-json", b64("{nope"), "not valid JSON"),
    ("json-list", b64("[1, 2]"), "must hold a JSON object, not a list"),
    ("json-string", b64('"token"'), "must hold a JSON object, not a string"),
    ("empty", "   ", "empty"),
    ("no-addresses", without("ServerAddresses"), "no ServerAddresses"),
    ("no-peer-id", without("PeerID"), "no PeerID"),
    ("no-secret", without("EstablishmentSecret"), "no EstablishmentSecret"),
    ("addresses-string", doc(ServerAddresses="a:1"), "must be a list, not a string"),
    ("address-number", doc(ServerAddresses=[8502]), "must be a string, not a number"),
    ("peer-id-number", doc(PeerID=7), "PeerID must be a string, not a number"),
    ("secret-null", doc(EstablishmentSecret=None), "must be a string, not null"),
    ("server-name-list", doc(ServerName=["x"]), "ServerName must be a string, not a list"),
    ("peer-id-newline", doc(PeerID="p-1\n"), "control characters"),
    ("address-no-port", doc(ServerAddresses=["dc1"]), "must look like host:port"),
    ("address-port-0", doc(ServerAddresses=["dc1:0"]), "port from 1 to 65535"),
    ("address-port-big", doc(ServerAddresses=["dc1:99999"]), "port from 1 to 65535"),
    ("address-port-unicode", doc(ServerAddresses=["dc1:\u00b2"]), "port from 1 to 65535"),
    ("address-space", doc(ServerAddresses=["dc 1:8502"]), "invalid host name"),
    ("address-newline", doc(ServerAddresses=["dc1\n:8502"]), "invalid host name"),
    ("address-bad-ipv4", doc(ServerAddresses=["300.1.1.1:8502"]), "invalid IPv4"),
    ("address-bad-ipv6", doc(ServerAddresses=["[::zz]:8502"]), "invalid IPv6"),
    ("ca-pem", doc(CA=["-----BEGIN"]), "CA entry 0 is not a PEM certificate"),
    ("ca-text", doc(CA=[pem(), "hello"]), "CA entry 1 is not a PEM certificate"),
    ("ca-pem-and-junk", doc(CA=[pem() + "junk"]), "CA entry 0 is not a PEM certificate"),
    ("ca-private-key", doc(CA=[pem().replace("CERTIFICATE", "PRIVATE KEY")]),
     "not a PEM certificate"),
    ("ca-bad-base64", doc(CA=["-----BEGIN CERTIFICATE-----\nQUJ\n-----END CERTIFICATE-----"]),
     "not a PEM certificate"),
    ("ca-too-many", doc(CA=[pem()] * (MAX_TOKEN_CAS + 1)), f"at most {MAX_TOKEN_CAS} are allowed"),
    ("ca-too-long", doc(CA=[pem(MAX_TOKEN_STRING_CHARS + 200)]), "CA entry 0 is longer than"),
]


@pytest.mark.parametrize(("text", "reason"), [c[1:] for c in CRAFTED],
                         ids=[c[0] for c in CRAFTED])
def test_decode_token_refuses_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(TokenError) as info:
        decode_token(text)
    assert reason in str(info.value)
    assert len(str(info.value)) < 300  # one readable line, not the token echoed back


def test_good_addresses_are_accepted() -> None:
    for address in ("dc1:8502", "10.0.0.1:8502", "[::1]:8502", "a-b.example.com.:443",
                    "server_1.dc1:1"):
        assert address_problem(address) is None, address
    token = decode_token(doc(ServerAddresses=[f"h{i}:1" for i in range(MAX_TOKEN_ADDRESSES)]))
    assert len(token.server_addresses) == MAX_TOKEN_ADDRESSES


def test_the_largest_legal_token_fits_the_total_bound() -> None:
    """Every field at its own bound at once (the most CA PEMs, each as long as allowed, and the
    most addresses, each as long as allowed) still fits MAX_TOKEN_CHARS: the total bound never
    refuses a token that the per-field bounds admit."""
    big_pem = pem(MAX_TOKEN_STRING_CHARS)
    while len(big_pem) > MAX_TOKEN_STRING_CHARS:
        big_pem = big_pem.replace("MDAw", "", 1)
    host = ".".join(["a" * 63] * 3) + "." + "b" * 61  # 253 characters
    addresses = [f"{host}:{10000 + i}" for i in range(MAX_TOKEN_ADDRESSES)]
    longest = "x" * MAX_TOKEN_STRING_CHARS
    text = doc(CA=[big_pem] * MAX_TOKEN_CAS, ServerAddresses=addresses, ServerName=longest,
               PeerID=longest, EstablishmentSecret=longest)
    assert len(text) <= MAX_TOKEN_CHARS
    token = decode_token(text)
    assert token.ca is not None and len(token.ca) == MAX_TOKEN_CAS


@pytest.fixture
async def dc2(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Cluster]:
    async with running_cluster(MemoryNetwork(), "dc2", "dc2:8502") as cluster:
        yield cluster


async def test_establish_refuses_every_crafted_token_and_keeps_serving(dc2: Cluster) -> None:
    before = dc2.store.dump()
    for name, text, reason in CRAFTED:
        with pytest.raises(StreamFailed) as info:
            await dc2.client.establish("dc1", text)
        assert (name, info.value.code) == (name, StatusCode.INVALID_ARGUMENT)
        assert reason in info.value.message, (name, info.value.message)
    status = await dc2.client.status()
    assert status.IsLeader
    assert dc2.store.dump() == before


async def test_generate_token_bounds_its_addresses(dc2: Cluster) -> None:
    before = dc2.store.dump()
    for addresses, reason in (
        ([f"h{i}:1" for i in range(MAX_TOKEN_ADDRESSES + 1)], "at most"),
        (["dc2\n:8502"], "invalid host name"),
        (["dc2:\u00b2"], "port from 1 to 65535"),
    ):
        with pytest.raises(StreamFailed) as info:
            await dc2.client.generate_token("dc1", server_external_addresses=addresses)
        assert info.value.code is StatusCode.INVALID_ARGUMENT
        assert reason in info.value.message
    assert dc2.store.dump() == before

"""Secrets: none is ever logged, and the secrets of a peering marked for deletion stop working at
once (issue 8, "Security"). Over the in-memory network under virtual time.

May import: pytest, trio, peerkit.impl (testing, transport, logs, codec), peerkit.model.vocabulary.
"""

from __future__ import annotations

import io
import logging

import pytest
import trio
import trio.testing

from peerkit.impl.codec import decode_token
from peerkit.impl.logs import JsonLineFormatter
from peerkit.impl.testing import (
    kind,
    let_time_pass,
    open_message,
    open_raw_stream,
    peer,
    token_and_secret,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed
from peerkit.model.vocabulary import PeeringState


def _logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as the CLI would write it (JSON lines, all fields), plus its raw args."""
    out = io.StringIO()
    formatter = JsonLineFormatter()
    for record in caplog.records:
        out.write(formatter.format(record) + "\n")
        out.write(repr(record.args) + "\n")
    return out.getvalue()


async def test_no_secret_is_ever_logged(autojump_clock: trio.testing.MockClock,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peerkit")
    net = MemoryNetwork()
    secrets: set[str] = set()
    async with two_clusters(net) as (dc1, dc2):
        # a whole lifecycle: token, establish (secret exchange), replication, delete, cleanup
        await peer(dc1, dc2)
        row1, row2 = dc1.row("dc2"), dc2.row("dc1")
        assert row1 is not None and row2 is not None
        for row in (row1, row2):
            secrets |= {s for s in (row.stream_secret, row.establishment_secret) if s}
        # a second token, never used: its establishment secret stays in the store
        token = decode_token(await dc2.client.generate_token("dc3"))
        secrets.add(token.establishment_secret)
        # a wrong secret is refused, and the refusal does not echo what was sent
        with pytest.raises(StreamFailed):
            await dc2.client.exchange_secret(token.peer_id, "not-the-secret-" + "x" * 20)
        await dc1.client.peering_delete("dc2")
        await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED)
        await let_time_pass(30)
    assert len(secrets) >= 2 and all(len(s) >= 16 for s in secrets)
    text = _logged_text(caplog)
    assert "exchanged establishment secret" in text  # the events are there...
    for secret in secrets:
        assert secret not in text  # ...their secrets are not


async def test_secrets_of_a_marked_peering_stop_working_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, _dc2):
        # dc1 issues a token; a would-be dialer trades its establishment secret for a stream secret
        peer_id, stream_secret = await token_and_secret(dc1)
        token = decode_token(await dc1.client.generate_token("dc3"))
        await dc1.client.peering_delete("dc2")
        await dc1.client.peering_delete("dc3")
        for name in ("dc2", "dc3"):
            row = dc1.row(name)
            assert row is None or (row.stream_secret is None and row.establishment_secret is None)
        # the establishment secret no longer trades
        with pytest.raises(StreamFailed) as info:
            await dc1.client.exchange_secret(token.peer_id, token.establishment_secret)
        assert info.value.code is StatusCode.PERMISSION_DENIED  # upstream: secrets deleted
        # the stream secret no longer opens a stream: the dial is answered with Terminated, or
        # refused outright once the row is gone, never accepted
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, stream_secret))
        kinds = []
        with pytest.raises(StreamFailed) as info:
            while True:
                kinds.append(kind(await stream.receive()))
        assert set(kinds) <= {"terminated"}
        assert info.value.code in (StatusCode.ABORTED, StatusCode.INVALID_ARGUMENT)
        assert not dc1.connected("dc2")

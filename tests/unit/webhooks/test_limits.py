"""The replica cap's hand-over in webhook-dispatch's endpoint gate, without servers."""

from __future__ import annotations

import asyncio

import pytest
from darkroom_webhooks.limits import EndpointGate, Limited

from tests.factories.webhooks import NoDb


@pytest.fixture
def gate() -> EndpointGate:
    return EndpointGate(NoDb(), replica_cap=2, lease_ms=1000)  # type: ignore[arg-type]


async def test_replica_cap_hands_a_freed_place_to_a_waiter(gate: EndpointGate) -> None:
    a = gate.try_enter_local("wh_1")
    b = gate.try_enter_local("wh_1")
    assert a is not None
    assert b is not None
    assert gate.try_enter_local("wh_1") is None
    with pytest.raises(Limited):
        gate.check_room("wh_1")
    assert gate.try_enter_local("wh_2") is not None  # other endpoints are not affected
    # Nobody leaves: the waiter gives up after its wait.
    assert await gate.enter_local("wh_1", 0.01) is None
    waiter = asyncio.ensure_future(gate.enter_local("wh_1", 1))
    await asyncio.sleep(0.01)
    await gate.leave(a)
    assert await waiter is not None  # handed over at once
    assert gate.in_flight("wh_1") == 2  # the place moved, it was not freed and taken twice
    await gate.leave(b)
    assert gate.in_flight("wh_1") == 1

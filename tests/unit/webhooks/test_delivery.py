"""Which endpoints a fact goes to, and the delivery id: the same for one message and endpoint."""

from __future__ import annotations

from darkroom_webhooks.delivery import delivery_id, subscribed


def test_subscriptions_and_stable_delivery_ids() -> None:
    assert subscribed(["photo.*"], "photo.uploaded")
    assert subscribed(["*"], "event.archived")
    assert not subscribed(["photo.deleted"], "photo.uploaded")
    assert delivery_id("msg_a", "wh_1") == delivery_id("msg_a", "wh_1")
    assert delivery_id("msg_a", "wh_1") != delivery_id("msg_a", "wh_2")

from __future__ import annotations

import pytest
from darkroom_kit.stored.endpoints import EndpointRecord


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/in", "https://hooks.example.com/in"),
        (
            "https://user:s3cret@hooks.example.com/in?a=1",
            "https://user:***@hooks.example.com/in?a=1",
        ),
        (
            "https://user:s3cret@hooks.example.com:8443/in",
            "https://user:***@hooks.example.com:8443/in",
        ),
        ("https://u:p@[2606:4700::1]/x", "https://u:***@[2606:4700::1]/x"),
        ("https://token@hooks.example.com/in", "https://token@hooks.example.com/in"),
    ],
)
def test_a_password_in_a_webhook_url_is_never_shown_back(url: str, shown: str) -> None:
    endpoint = EndpointRecord(id="we_1", url=url, event_types=["*"], created_ms=0)
    assert endpoint.shown_url == shown
    assert "s3cret" not in endpoint.shown_url

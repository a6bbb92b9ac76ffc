from __future__ import annotations

import pytest
from darkroom_webhooks.ssrf import BlockedAddress, check_literal, is_blocked, parse_networks


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert is_blocked(address, [])


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8", "2002:5db8:d822::1", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert not is_blocked(address, [])


def test_allowlist_opens_named_ranges_only() -> None:
    allowed = parse_networks(["127.0.0.0/8"])
    assert not is_blocked("127.0.0.1", allowed)
    assert is_blocked("10.0.0.1", allowed)
    assert is_blocked("::1", allowed)


def test_ip_literals_are_checked() -> None:
    with pytest.raises(BlockedAddress):
        check_literal("10.0.0.1", [])
    with pytest.raises(BlockedAddress):
        check_literal("[::1]", [])
    check_literal("example.com", [])  # names are vetted by the resolver


async def test_a_name_that_does_not_resolve_and_one_that_resolves_inside_read_the_same() -> None:
    """Telling them apart would let a webhooks.manage token map internal names."""
    from darkroom_webhooks.ssrf import GuardedResolver

    resolver = GuardedResolver([])
    try:
        said = []
        for host in ("localhost", "no-such-host.invalid"):
            with pytest.raises(BlockedAddress) as caught:
                await resolver.resolve(host, 443)
            said.append(str(caught.value).replace(host, "HOST"))
    finally:
        await resolver.close()
    assert said[0] == said[1] == "HOST does not resolve to a public address"

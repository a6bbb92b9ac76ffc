"""The metrics every service serves whatever it does: its process's (memory, CPU, garbage
collection), on each app's own registry."""

from __future__ import annotations

from typing import Any

from darkroom_kit.httpapp import create_base_app


async def test_each_app_serves_its_process_metrics_on_its_own_registry(
    aiohttp_client: Any,
) -> None:
    # Two apps in one process, as the integration tests run them: neither clashes with the
    # other (nor with prometheus_client's default registry).
    first = await aiohttp_client(create_base_app("one"))
    second = await aiohttp_client(create_base_app("two"))
    for client in (first, second):
        text = await (await client.get("/metrics")).text()
        assert "\nprocess_resident_memory_bytes " in text
        assert "\nprocess_cpu_seconds_total " in text
        assert '\npython_gc_objects_collected_total{generation="0"} ' in text
        assert "\npython_info{" in text

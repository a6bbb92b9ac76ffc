"""A service's ``/metrics`` read as a test reads it: every sample by name and labels, and what
moved between two reads."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Any) -> Samples:
    """Every sample ``/metrics`` shows now."""
    resp = await api.get("/metrics")
    assert resp.status == 200, await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


def moved(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` that changed between two reads, by their labels, and by how
    much (a sample that appeared moved from 0)."""
    return {
        labels: value - before.get((sample, labels), 0.0)
        for (sample, labels), value in after.items()
        if sample == name and value != before.get((sample, labels), 0.0)
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())

"""The stored shape of every record that crosses a service boundary, one module per collection."""

from darkroom_kit.stored._base import Record

__all__ = ["Record"]

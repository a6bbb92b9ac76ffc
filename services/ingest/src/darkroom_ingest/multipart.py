"""The multipart reader of batch uploads: a control character in a part's header fails that
part, not the request.

aiohttp refuses a header value holding a control character (``\\x01``, ``\\x7f``, a bare ``\\r``),
as it must for a request's own headers (header injection), and in a multipart body it does so by
failing the whole body: one file named ``bad\\x01.jpg`` lost every other file of the batch. In a
part's headers the values are only data this service validates itself (the file name is refused
with ``invalid_filename``, a field name it does not know is ``unknown_field``), so such a header
is read as it is and judged with its part. A header line that is not even ``name: value`` still
fails the request: the body's framing cannot be trusted past it.
"""

from __future__ import annotations

import re
from typing import cast

from aiohttp import MultipartReader
from aiohttp.http import HeadersParser
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader
from multidict import CIMultiDict, CIMultiDictProxy

# What aiohttp refuses in a header value (RFC 9110 5.5: controls but the tab).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Each control byte travels through aiohttp's parser as a private-use character, then back.
_STAND_IN = 0xF700
_RESTORE = {_STAND_IN + b: b for b in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)}


def _stand_in(match: re.Match[bytes]) -> bytes:
    return chr(_STAND_IN + match[0][0]).encode()


def holds_control_characters(value: str | None) -> bool:
    """Whether a part header's value holds a control character (only this reader lets one by)."""
    return value is not None and _CONTROL_TEXT.search(value) is not None


class PartTolerantReader(MultipartReader):
    @classmethod
    def adopt(cls, reader: MultipartReader) -> PartTolerantReader:
        """``reader`` (as ``request.multipart()`` makes it, with the server's size limits) reading
        part headers this way: it only overrides how a part's headers are parsed."""
        if not isinstance(reader, cls):
            if type(reader) is not MultipartReader:
                raise TypeError(f"cannot adopt a {type(reader).__name__}")
            reader.__class__ = cls
        return cast(PartTolerantReader, reader)

    async def _read_headers(self) -> CIMultiDictProxy[str]:
        # As aiohttp's own (multipart.MultipartReader._read_headers), with the fallback below.
        lines: list[bytes] = []
        while True:
            chunk = await self._content.readline(max_line_length=self._max_field_size)
            chunk = chunk.rstrip(b"\r\n")
            lines.append(chunk)
            if not chunk:
                break
            if len(lines) > self._max_headers:
                raise BadHttpMessage("Too many headers received")
        parser = HeadersParser(max_field_size=self._max_field_size)
        try:
            headers, _ = parser.parse_headers(lines)
        except InvalidHeader as exc:
            if not any(_CONTROL.search(line) for line in lines):
                raise
            try:
                headers, _ = parser.parse_headers([_CONTROL.sub(_stand_in, x) for x in lines])
            except BadHttpMessage:
                raise exc from None  # broken for another reason too
            return CIMultiDictProxy(
                CIMultiDict((name, value.translate(_RESTORE)) for name, value in headers.items())
            )
        return headers

"""A series stream read straight into the output volume: zero-copy pixel data.

The generic path (:func:`imagingkit.dicomweb.multipart.iter_parts`, then
:func:`imagingkit.dicomweb.pixels.decode_instance`) copies every byte twice in Python
before it reaches the output array. For the common case — native little-endian pixel data —
this module reads each ``multipart/related`` part (RFC 2046 §5.1.1) of a WADO-RS series
answer (PS3.18 §10.4.1.1.1) like this:

1. the part's header fields, then the first few KiB of its body, into a small buffer;
2. the DICOM header from that buffer (:func:`imagingkit.dicomweb.pixels.native_layout`),
   which says where the Pixel Data value starts and how long it is;
3. the pixel bytes straight into the instance's slice of the output array, from the
   chunks a pump thread reads off the socket while this thread parses (so the server
   never waits for the parser);
4. the Modality LUT in place when the stored and output types have the same size (CT:
   unsigned 12-bit stored + integer intercept → int16), else through a reused scratch
   slice;
5. whatever follows the pixel data, up to the next boundary.

Parts the lean path does not handle (compressed, big-endian, multi-frame ...) are read
whole and decoded by pydicom, in the same stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagingkit.dicomweb.multipart import parse_media_type
from imagingkit.dicomweb.pixels import native_layout
from imagingkit.dicomweb.transport import Pump
from imagingkit.errors import DICOMwebError, InvalidDICOMError

if TYPE_CHECKING:
    import requests

    from imagingkit.dicomweb.volume import _VolumeBuilder

__all__ = ["read_series_into"]

_CRLF = b"\r\n"
_PEEK = 16 * 1024
_MAX_PEEK = 4 * 1024 * 1024


class _Wire:
    """A buffered reader over an HTTP body that a :class:`Pump` reads ahead."""

    def __init__(self, response: requests.Response) -> None:
        self.pump = Pump(response)
        self.url = response.url
        self.buf = bytearray()
        self.pos = 0

    def close(self) -> None:
        self.pump.close()

    def _more(self) -> bool:
        item = self.pump.next()
        if not item:
            return False
        if self.pos > len(item) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += item
        return True

    def ensure(self, n: int) -> bool:
        """Buffer at least *n* unread bytes; False at the end of the body."""
        while len(self.buf) - self.pos < n:
            if not self._more():
                return False
        return True

    def find(self, needle: bytes) -> int:
        """Offset (from the read position) of *needle*, reading on; -1 if never found."""
        scanned = 0  # bytes after the read position already searched
        while True:
            found = self.buf.find(needle, self.pos + scanned)
            if found >= 0:
                return found - self.pos
            scanned = max(0, len(self.buf) - self.pos - len(needle) + 1)
            if not self._more():  # may compact the buffer: offsets stay relative
                return -1

    def peek(self, n: int) -> bytes:
        self.ensure(n)
        return bytes(self.buf[self.pos : self.pos + n])

    def take(self, n: int) -> bytes:
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += len(data)
        return data

    def readinto(self, view: memoryview) -> None:
        """Fill *view* exactly with the next bytes of the body."""
        if not self.ensure(view.nbytes):
            raise DICOMwebError(
                "the transfer broke off inside an instance (truncated)", url=self.url
            )
        with memoryview(self.buf) as source:
            view[:] = source[self.pos : self.pos + view.nbytes]
        self.pos += view.nbytes


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def read_series_into(builder: _VolumeBuilder, response: requests.Response) -> int:
    """Read a WADO-RS series answer into *builder*; return the number of parts.

    Raises
    ------
    DICOMwebError
        If the answer is not multipart, is truncated, or breaks off.
    InvalidDICOMError
        If a part is not a decodable DICOM instance.
    """
    wire = _Wire(response)
    try:
        return _read_parts(builder, wire, response)
    finally:
        wire.close()


def _read_parts(builder: _VolumeBuilder, wire: _Wire, response: requests.Response) -> int:
    media, params = parse_media_type(response.headers.get("Content-Type", ""))
    boundary = params.get("boundary")
    if not media.startswith("multipart/") or not boundary:
        if not wire.ensure(1):
            return 0
        while wire._more():
            pass
        builder.add(wire.take(len(wire.buf) - wire.pos))
        return 1
    delimiter = b"--" + boundary.encode("latin-1")
    # the first delimiter may start the body or follow a preamble
    first = wire.find(delimiter)
    if first < 0:
        raise DICOMwebError("the multipart answer holds no boundary", url=wire.url)
    wire.pos += first + len(delimiter)
    next_delimiter = _CRLF + delimiter
    count = 0
    while True:
        if not wire.ensure(2):
            raise DICOMwebError("the multipart answer is truncated", url=wire.url)
        if wire.buf.startswith(b"--", wire.pos):
            return count  # closing delimiter; the epilogue is ignored
        line_end = wire.find(_CRLF)
        end = wire.find(b"\r\n\r\n")
        if line_end < 0 or end < 0:
            raise DICOMwebError("the multipart answer is truncated", url=wire.url)
        if end == line_end:  # a part without header fields
            block = b""
            wire.pos += line_end + 4
        else:
            wire.pos += line_end + 2
            block = wire.take(end - line_end - 2)
            wire.pos += 4
        headers = _headers(block)
        _read_part(builder, wire, headers, next_delimiter)
        count += 1
        wire.pos += len(next_delimiter)


def _read_part(
    builder: _VolumeBuilder, wire: _Wire, headers: dict[str, str], delimiter: bytes
) -> None:
    length_text = headers.get("content-length", "")
    declared = int(length_text) if length_text.isdigit() else None
    peek = _PEEK if declared is None else min(_PEEK, declared)
    layout = None
    while True:
        prefix = wire.peek(peek)
        try:
            layout = native_layout(prefix)
        except InvalidDICOMError:
            layout = None
            break
        if layout is not None or len(prefix) < peek or peek >= _MAX_PEEK:
            break
        if declared is not None and peek >= declared:
            break
        peek *= 4
    fits = layout is not None and (declared is None or layout.start + layout.nbytes <= declared)
    if layout is not None and fits and wire.ensure(layout.start):
        wire.pos += layout.start
        builder.add_native(layout, wire.readinto)
        rest = wire.find(delimiter)
        if rest < 0:
            raise DICOMwebError("the multipart answer is truncated", url=wire.url)
        wire.pos += rest  # trailing padding and elements after Pixel Data
        return
    size = wire.find(delimiter)
    if size < 0:
        raise DICOMwebError("the multipart answer is truncated", url=wire.url)
    builder.add(wire.take(size))

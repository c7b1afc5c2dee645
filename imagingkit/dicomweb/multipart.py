"""``multipart/related`` bodies of DICOMweb: a streaming splitter and an encoder.

DICOMweb sends instances, frames and bulk data as ``multipart/related`` (RFC 2387,
body syntax of RFC 2046 §5.1.1) with one part per object; each part carries its own
``Content-Type`` (with the transfer syntax actually sent, PS3.18 §8.7.3.5) and often a
``Content-Location``. A client must keep those per-part headers, so :func:`iter_parts`
yields ``(headers, body)`` pairs.

The splitter is linear in the size of the body whatever the part sizes: it scans each
received byte a bounded number of times and never re-splits what it has already seen
(the quadratic behaviour of ``bytes.split``-based parsers on one huge part, e.g. a
digital breast tomosynthesis instance, is what it avoids).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping

from imagingkit.errors import InvalidInputError

__all__ = [
    "MultipartWriter",
    "encode_multipart",
    "format_media_type",
    "iter_parts",
    "parse_media_type",
    "split_unquoted",
]

_CRLF = b"\r\n"
_TOKEN_SPECIALS = set('()<>@,;:\\"/[]?= \t')


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type``-style value into its type and parameters.

    Parameters
    ----------
    value : str
        For example ``'multipart/related; type="application/dicom"; boundary=x'``.

    Returns
    -------
    tuple of (str, dict)
        The lower-cased ``type/subtype`` and the parameters, names lower-cased, values
        unquoted (RFC 9110 §8.3.1; quoted-pair escapes resolved).
    """
    media, *items = split_unquoted(value, ";")
    params: dict[str, str] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if name and sep:
            params[name] = _unquote(raw.strip())
    return media.strip().lower(), params


def format_media_type(media: str, params: Mapping[str, str] | None = None) -> str:
    """Build a media type value, quoting parameter values that need it.

    Parameters
    ----------
    media : str
        ``type/subtype``.
    params : mapping, optional
        Parameters in the order to write them.

    Returns
    -------
    str
        For example ``'multipart/related; type="application/dicom"; boundary=abc'``.
    """
    out = [media]
    for name, val in (params or {}).items():
        if val and not any(ch in _TOKEN_SPECIALS for ch in val):
            out.append(f"{name}={val}")
        else:
            escaped = val.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{name}="{escaped}"')
    return "; ".join(out)


def split_unquoted(text: str, separator: str) -> list[str]:
    """Split *text* at each *separator* that is not inside a quoted string.

    Used for the ``;`` between media type parameters and the ``,`` between ``Accept``
    entries (RFC 9110 §5.6.4: a quoted string may contain either).
    """
    out: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == separator and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        out = []
        escaped = False
        for ch in raw[1:-1]:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    return raw


def _parse_headers(block: bytes) -> dict[str, str]:
    """Parse a part's header block (RFC 5322 fields; obsolete folding tolerated)."""
    headers: dict[str, str] = {}
    last = ""
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, val = line.partition(":")
        if not sep:
            continue
        last = name.strip().lower()
        val = val.strip()
        headers[last] = f"{headers[last]}, {val}" if last in headers else val
    return headers


def _chunks(body: bytes | bytearray | memoryview | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(body, (bytes, bytearray, memoryview)):
        yield bytes(body)
    else:
        for chunk in body:
            if chunk:
                yield bytes(chunk)


def _sniff_boundary(first: bytes) -> str | None:
    """Return the boundary of a body whose first line is ``--boundary``, else None."""
    start = 0
    while first.startswith(_CRLF, start):
        start += 2
    if not first.startswith(b"--", start):
        return None
    end = first.find(_CRLF, start)
    if end < 0:
        return None
    token = first[start + 2 : end].rstrip(b" \t")
    if not 0 < len(token) <= 70 or token.endswith(b"--"):
        return None
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return None


def iter_parts(
    body: bytes | bytearray | memoryview | Iterable[bytes],
    content_type: str,
    *,
    strict: bool = True,
) -> Iterator[tuple[dict[str, str], bytes]]:
    """Split a multipart body into ``(headers, body)`` pairs, streaming.

    Parameters
    ----------
    body : bytes or iterable of bytes
        The whole body, or its chunks in order (e.g. ``response.iter_content()``);
        chunks may split anywhere, even inside a boundary.
    content_type : str
        The response's ``Content-Type``. The boundary may be quoted or not. If it has
        no ``boundary`` parameter (some servers omit it, see
        ImagingDataCommons/dicomweb-client#41) the boundary is taken from the body's
        first line when that line looks like one; otherwise the whole body is
        yielded as a single part whose ``content-type`` is the ``type`` parameter (or
        the media type itself).
    strict : bool
        Raise if the body ends before the closing boundary (a truncated transfer);
        with ``False`` the unfinished last part is yielded as it is.

    Yields
    ------
    tuple of (dict, bytes)
        Each part's header fields (names lower-cased, e.g. ``"content-type"``,
        ``"content-location"``) and its body. Preamble and epilogue are dropped.

    Raises
    ------
    InvalidInputError
        If *strict* and the body is truncated or holds no boundary at all.

    Notes
    -----
    RFC 2046 §5.1.1: a delimiter is CRLF, ``--``, the boundary, optional transport
    padding and CRLF; the first delimiter may start the body without the CRLF. Work is
    O(n) in the body size: every search starts where the previous one stopped, and the
    buffer is compacted only when more than half of it has been consumed.
    """
    media, params = parse_media_type(content_type)
    boundary = params.get("boundary")
    chunks = _chunks(body)
    if boundary is None:
        first = b""
        for chunk in chunks:
            first += chunk
            if _CRLF in first[2:] or len(first) > 200:
                break
        boundary = _sniff_boundary(first)
        if boundary is None:
            rest = b"".join(chunks)
            whole = first + rest
            part_type = params.get("type") or media or "application/octet-stream"
            yield {"content-type": part_type}, whole
            return
        chunks = _prepend(first, chunks)
    yield from _split(chunks, boundary.encode("latin-1"), strict)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _split(
    chunks: Iterator[bytes], boundary: bytes, strict: bool
) -> Iterator[tuple[dict[str, str], bytes]]:
    delimiter = b"\r\n--" + boundary
    # A leading CRLF lets a delimiter at the very start match like any other.
    buf = bytearray(_CRLF)
    pos = 0  # start of the unconsumed data in buf
    scan = 0  # where the next search may start (bytes before it were searched)
    state = "preamble"
    headers: dict[str, str] = {}

    def more() -> bool:
        """Append the next chunk; compact the buffer when mostly consumed."""
        nonlocal buf, pos, scan
        for chunk in chunks:
            if pos > 65536 and pos > len(buf) // 2:
                del buf[:pos]
                scan -= pos
                pos = 0
            buf += chunk
            return True
        return False

    def available(n: int) -> bool:
        while len(buf) - pos < n:
            if not more():
                return False
        return True

    while True:
        if state in ("preamble", "body"):
            found = buf.find(delimiter, max(scan, pos))
            if found < 0:
                scan = max(pos, len(buf) - len(delimiter) + 1)
                if state == "preamble":
                    pos = scan  # preamble bytes are never needed again
                if not more():
                    break
                continue
            if state == "body":
                with memoryview(buf) as view:
                    data = bytes(view[pos:found])
                yield headers, data
            pos = scan = found + len(delimiter)
            state = "delimiter"
        elif state == "delimiter":
            # "--" closes the body (the epilogue is ignored); otherwise optional
            # transport padding and CRLF end the delimiter line.
            if not available(2):
                break
            if buf.startswith(b"--", pos):
                return
            line_end = buf.find(_CRLF, pos)
            while line_end < 0 and len(buf) - pos <= 1024:
                if not more():
                    break
                line_end = buf.find(_CRLF, pos)
            if line_end < 0:
                break
            pos = scan = line_end + 2
            state = "headers"
        else:  # headers
            if not available(2):
                break
            if buf.startswith(_CRLF, pos):
                headers = {}
                pos += 2
            else:
                end = buf.find(b"\r\n\r\n", scan)
                while end < 0:
                    scan = max(pos, len(buf) - 3)
                    if not more():
                        break
                    end = buf.find(b"\r\n\r\n", scan)
                if end < 0:
                    break
                headers = _parse_headers(bytes(buf[pos:end]))
                pos = end + 4
            scan = pos
            state = "body"
    shown = boundary.decode("latin-1")
    if state == "preamble":
        if strict:
            raise InvalidInputError(f"multipart body holds no boundary {shown!r}")
        return
    if strict:
        raise InvalidInputError(
            f"multipart body ended before its closing boundary '--{shown}--' (truncated transfer?)"
        )
    if state == "body" and len(buf) > pos:
        yield headers, bytes(buf[pos:])


class MultipartWriter:
    """Encode parts of a ``multipart/related`` body one at a time (for streaming).

    Parameters
    ----------
    part_type : str
        The ``type`` parameter of the body (RFC 2387), e.g. ``"application/dicom"``.
    boundary : str, optional
        Defaults to a random 32-hex-digit string that cannot occur by chance in the
        parts.
    params : mapping, optional
        Further parameters of the body's media type (e.g. ``transfer-syntax``).

    Examples
    --------
    >>> w = MultipartWriter("application/octet-stream", boundary="b")
    >>> w.part(b"xyz", {"Content-Type": "application/octet-stream"}) + w.close()
    b'--b\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\nxyz\\r\\n--b--\\r\\n'
    """

    def __init__(
        self,
        part_type: str,
        boundary: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> None:
        self.boundary = boundary or uuid.uuid4().hex
        if not 0 < len(self.boundary) <= 70 or any(c in self.boundary for c in "\r\n"):
            raise InvalidInputError(f"multipart boundary {self.boundary!r} is not allowed")
        self.part_type = part_type
        self.params = dict(params or {})
        self.count = 0
        self._delim = b"--" + self.boundary.encode("ascii")

    @property
    def content_type(self) -> str:
        """The body's ``Content-Type`` header value."""
        return format_media_type(
            "multipart/related", {"type": self.part_type, **self.params, "boundary": self.boundary}
        )

    def head(self, headers: Mapping[str, str]) -> bytes:
        """Return the delimiter and header block that start the next part."""
        lines = [b"\r\n" + self._delim if self.count else self._delim]
        for name, val in headers.items():
            if any(c in name + val for c in "\r\n"):
                raise InvalidInputError(f"multipart header {name!r} holds a line break")
            lines.append(f"{name}: {val}".encode("latin-1"))
        self.count += 1
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def part(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        """Return one whole part (delimiter, headers and *body*)."""
        return self.head(headers) + body

    def close(self) -> bytes:
        """Return the closing delimiter."""
        return (b"\r\n" if self.count else b"") + self._delim + b"--\r\n"


def encode_multipart(
    parts: Iterable[tuple[Mapping[str, str], bytes]],
    part_type: str,
    *,
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """Encode ``(headers, body)`` pairs into one multipart body.

    Parameters
    ----------
    parts : iterable of (mapping, bytes)
        Each part's header fields and body.
    part_type : str
        The ``type`` parameter of the body, e.g. ``"application/dicom"``.
    boundary : str, optional
        See :class:`MultipartWriter`.

    Returns
    -------
    tuple of (bytes, str)
        The body and its ``Content-Type`` value.
    """
    writer = MultipartWriter(part_type, boundary)
    out = [writer.part(body, headers) for headers, body in parts]
    out.append(writer.close())
    return b"".join(out), writer.content_type

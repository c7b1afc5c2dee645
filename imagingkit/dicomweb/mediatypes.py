"""DICOMweb media types, transfer syntaxes and ``Accept`` negotiation (PS3.18 §8.7).

PS3.18 pairs each transfer syntax with the media type its bytes travel as: uncompressed
pixel data is ``application/octet-stream``, JPEG family frames ``image/jpeg``, JPEG-LS
``image/jls``, JPEG 2000 ``image/jp2`` / ``image/jpx``, HTJ2K ``image/jphc``, RLE
``image/dicom-rle`` (Table 8.7.3-5); whole instances are ``application/dicom`` in any of
the transfer syntaxes of Table 8.7.3-2, and with no ``transfer-syntax`` parameter the
default is Explicit VR Little Endian (§8.7.3.5.2). Implicit VR Little Endian and
Explicit VR Big Endian shall not be used by web services (§8.7.3.5.1).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from imagingkit.dicomweb.multipart import parse_media_type, split_unquoted
from imagingkit.errors import InvalidQueryError
from imagingkit.uids import validate_uid

__all__ = [
    "DEFAULT_SYNTAX_FOR_MEDIA_TYPE",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "FORBIDDEN_WEB_SYNTAXES",
    "MEDIA_TYPE_ALIASES",
    "UNCOMPRESSED_SYNTAXES",
    "FrameChoice",
    "InstanceChoice",
    "MediaRange",
    "choose_frame_representation",
    "choose_instance_representation",
    "choose_rendered_type",
    "frame_media_type",
    "parse_accept",
]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

#: Syntaxes whose pixel data is native (not encapsulated).
UNCOMPRESSED_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)
#: PS3.18 §8.7.3.5.1: not to be used with web services.
FORBIDDEN_WEB_SYNTAXES = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

_FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}

#: The transfer syntax a frame media type means when the request names none
#: (PS3.18 Table 8.7.3-5, the default of each media type).
DEFAULT_SYNTAX_FOR_MEDIA_TYPE = {
    "application/octet-stream": EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


#: Media types some clients send with an ``x-`` prefix (dicomweb-client offers both).
MEDIA_TYPE_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


def frame_media_type(transfer_syntax: str) -> str:
    """Return the media type that frames in *transfer_syntax* are sent as."""
    return _FRAME_MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")


@dataclass(frozen=True)
class MediaRange:
    """One entry of an ``Accept`` header.

    Attributes
    ----------
    media : str
        Lower-cased ``type/subtype`` (may contain ``*``).
    params : dict
        Parameters other than ``q``, names lower-cased.
    q : float
        The weight, 0…1.
    """

    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter, if any (``"*"`` means as stored)."""
        return self.params.get("transfer-syntax")

    @property
    def part_type(self) -> str | None:
        """For ``multipart/related``: the lower-cased ``type`` parameter, if any."""
        value = self.params.get("type")
        return parse_media_type(value)[0] if value else None

    def matches(self, media: str) -> bool:
        """Tell whether this range accepts *media* (wildcards honoured)."""
        if self.media in ("*/*", "*"):
            return True
        kind, _, sub = self.media.partition("/")
        other_kind, _, other_sub = media.partition("/")
        return kind == other_kind and sub in ("*", other_sub)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an ``Accept`` value into ranges, most preferred first (RFC 9110 §12.5.1).

    Parameters
    ----------
    header : str or None
        The header (or the ``accept`` query parameter, PS3.18 §8.3.3.1). Empty or
        missing means ``*/*``.

    Returns
    -------
    list of MediaRange
        Sorted by decreasing ``q``, ties in header order; ranges with ``q=0`` dropped.

    Raises
    ------
    InvalidQueryError
        If a ``q`` value is not a number from 0 to 1 or a range has no ``/``.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in (entry.strip() for entry in split_unquoted(header, ",")):
        if not item:
            continue
        media, params = parse_media_type(item)
        if "/" not in media and media != "*":
            raise InvalidQueryError(f"Accept entry {item!r} is not a media range")
        q_text = params.pop("q", "1")
        try:
            q = float(q_text)
        except ValueError:
            q = -1.0
        if not 0.0 <= q <= 1.0:
            raise InvalidQueryError(f"Accept entry {item!r} has a bad q value {q_text!r}")
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


# --------------------------------------------------------------------------- negotiation


@dataclass(frozen=True)
class InstanceChoice:
    single_part: bool
    #: acceptable transfer syntaxes in preference order; None = default, "*" = as stored
    syntaxes: tuple[str | None, ...]


def choose_instance_representation(ranges: Sequence[MediaRange]) -> InstanceChoice | None:
    """Pick the representation of instances from Accept ranges (PS3.18 §8.7.3).

    ``multipart/related; type="application/dicom"`` (with any ``transfer-syntax``),
    ``*/*`` and ``multipart/*`` give a multipart answer; ``application/dicom`` a single
    part. Later ranges of the same kind are fallbacks, tried per instance.

    Raises
    ------
    InvalidQueryError
        If a ``transfer-syntax`` parameter is neither ``*`` nor a UID.
    """
    kind: bool | None = None
    syntaxes: list[str | None] = []
    for r in ranges:
        if r.media in ("*/*", "multipart/*") or (
            r.media == "multipart/related" and r.part_type in (None, "application/dicom", "*/*")
        ):
            single, syntax = False, r.transfer_syntax
        elif r.media in ("application/dicom", "application/*"):
            single, syntax = True, r.transfer_syntax
        else:
            continue
        if syntax is not None and syntax != "*":
            validate_uid(syntax, lenient=True, what="transfer-syntax")
        if kind is None:
            kind = single
        if single == kind and syntax not in syntaxes:
            syntaxes.append(syntax)
    if kind is None:
        return None
    return InstanceChoice(kind, tuple(syntaxes))


@dataclass(frozen=True)
class FrameChoice:
    single_part: bool
    #: send the stored (compressed) bytes rather than native pixels
    as_stored: bool
    #: the ``type`` of the multipart body, or the single part's media type
    media: str


def choose_frame_representation(
    ranges: Sequence[MediaRange], stored: str, count: int
) -> FrameChoice | None:
    """Pick how to send *count* frames of an instance stored in *stored* (PS3.18 §8.7.3.3).

    Native pixels (``application/octet-stream``, Explicit VR Little Endian) unless a
    range asks for the stored compressed form: ``transfer-syntax=*``, the stored syntax,
    or the media type of the stored syntax (``image/jpeg``, ``image/jp2``, …).
    """
    compressed = frame_media_type(stored) != "application/octet-stream"
    for r in ranges:
        single = r.media not in ("*/*", "multipart/related", "multipart/*")
        if single and count != 1:
            continue
        media = (r.part_type or "application/octet-stream") if not single else r.media
        media = MEDIA_TYPE_ALIASES.get(media, media)
        if media in ("*/*", "application/*") or r.media == "*/*":
            return FrameChoice(single and r.media != "*/*", False, "application/octet-stream")
        syntax = r.transfer_syntax
        if media == "application/octet-stream":
            if syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) or (syntax == "*" and not compressed):
                return FrameChoice(single, False, media)
            if syntax in ("*", stored) and compressed:
                return FrameChoice(single, True, media)
            continue
        if not compressed:
            continue
        stored_media = frame_media_type(stored)
        kind, _, sub = media.partition("/")
        wanted = kind == "image" and sub in ("*", stored_media.partition("/")[2])
        if wanted and syntax in (None, "*", stored):
            return FrameChoice(single, True, stored_media)
    return None


def choose_rendered_type(
    ranges: Sequence[MediaRange], offered: Collection[str]
) -> tuple[str, bool] | None:
    """Pick the media type of a rendered answer (PS3.18 §8.7.4).

    Parameters
    ----------
    ranges : sequence of MediaRange
        The request's Accept ranges.
    offered : collection of str
        The image media types the server can encode, the first being the default
        (``image/jpeg``).

    Returns
    -------
    tuple of (str, bool) or None
        The media type and whether the answer is ``multipart/related``; None → 406.
    """
    default = next(iter(offered))
    for r in ranges:
        if r.media in ("*/*", "image/*"):
            return default, False
        if r.media in offered:
            return r.media, False
        if r.media == "multipart/related":
            part = r.part_type or default
            if part == "image/*":
                part = default
            if part in offered:
                return part, True
    return None

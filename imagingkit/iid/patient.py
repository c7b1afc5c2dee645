"""Patient identity in an IID request: the HL7 v2 CX identifier and the DICOM PN name.

IHE IID (RAD TF-2 §4.106.4.1.2) carries the patient as ``patientID`` in HL7 v2 CX form
(HL7 v2.5 §2.A.14): ``ID^^^AssigningAuthority``, the authority itself an HD
(§2.A.33) of up to three ``&``-separated subcomponents ``namespace&universalID&type``,
e.g. ``12345^^^&1.2.3.4&ISO``. Delimiters inside a value are written as HL7 escape
sequences (§2.7): ``\\S\\`` for ``^``, ``\\T\\`` for ``&``, ``\\E\\`` for ``\\``,
``\\F\\`` for ``|`` and ``\\R\\`` for ``~``.

``patientName`` is a DICOM PN value (PS3.5 §6.2): up to three ``=``-separated component
groups of up to five ``^``-separated components.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagingkit.errors import InvalidQueryError
from imagingkit.uids import is_valid_uid

__all__ = ["PatientID", "validate_patient_name"]

#: Longest CX.1 value accepted in strict mode: DICOM Patient ID is LO (PS3.5 §6.2).
MAX_ID_CHARS = 64
#: Longest value accepted in lenient mode (real HIS identifiers can be longer).
MAX_ID_CHARS_LENIENT = 250
#: PS3.5 §6.2: each PN component group is at most 64 characters.
MAX_PN_GROUP_CHARS = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"S": "^", "T": "&", "E": "\\", "F": "|", "R": "~"}
_ESCAPE_SEQ = re.compile(r"\\([STEFR])\\")


def shown(value: str, limit: int = 80) -> str:
    """Return ``repr(value)`` cut to *limit* characters, safe to put in a message."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _unescape(text: str, what: str) -> str:
    """Decode HL7 v2 escape sequences (HL7 v2.5 §2.7.4)."""
    decoded = _ESCAPE_SEQ.sub(lambda m: _ESCAPES[m.group(1)], text)
    if "\\" in _ESCAPE_SEQ.sub("", text):
        raise InvalidQueryError(
            f"{what} {shown(text)} has a backslash that is not an HL7 escape sequence "
            r"(HL7 v2.5 §2.7: use \S\ for ^, \T\ for &, \E\ for \)"
        )
    return decoded


def _escape(text: str) -> str:
    """Encode HL7 v2 delimiters in *text* as escape sequences (HL7 v2.5 §2.7.4)."""
    out = text.replace("\\", "\\E\\")
    for code, char in _ESCAPES.items():
        if char != "\\":
            out = out.replace(char, f"\\{code}\\")
    return out


@dataclass(frozen=True)
class PatientID:
    """A patient identifier with its assigning authority (HL7 v2 CX, HL7 v2.5 §2.A.14).

    Parameters
    ----------
    value : str
        CX.1, the identifier itself (DICOM Patient ID).
    namespace : str, optional
        CX.4.1, the assigning authority's local name (DICOM Issuer of Patient ID).
    universal_id : str, optional
        CX.4.2, the authority's universal identifier, e.g. an OID.
    universal_id_type : str, optional
        CX.4.3, the type of *universal_id*: ``ISO`` (an OID), ``URI``, ``DNS`` …
    type_code : str, optional
        CX.5, the identifier type code, e.g. ``MR``.
    """

    value: str
    namespace: str | None = None
    universal_id: str | None = None
    universal_id_type: str | None = None
    type_code: str | None = None

    def __post_init__(self) -> None:
        for name in ("value", "namespace", "universal_id", "universal_id_type", "type_code"):
            part = getattr(self, name)
            if part is None:
                continue
            if not isinstance(part, str):
                raise InvalidQueryError(f"patientID {name} must be a string, not {part!r}")
            if _CONTROL.search(part):
                raise InvalidQueryError(
                    f"patientID {name} {shown(part)} contains a control character"
                )
        if not self.value or not self.value.strip():
            raise InvalidQueryError("patientID is empty: HL7 CX.1 (the identifier) is required")
        if (
            self.universal_id_type == "ISO"
            and self.universal_id is not None
            and not is_valid_uid(self.universal_id, lenient=True)
        ):
            raise InvalidQueryError(
                f"patientID assigning authority {shown(self.universal_id)} is typed ISO "
                "but is not an OID (digits and dots)"
            )
        if self.universal_id_type and not self.universal_id:
            raise InvalidQueryError(
                f"patientID assigning authority has a type {shown(self.universal_id_type)} "
                "but no universal ID (HL7 HD.3 needs HD.2)"
            )

    @classmethod
    def parse(cls, cx: str, *, lenient: bool = False) -> PatientID:
        """Parse an HL7 v2 CX string such as ``12345^^^&1.2.3&ISO``.

        Parameters
        ----------
        cx : str
            The ``patientID`` value, already URL-decoded.
        lenient : bool
            Accept identifiers up to 250 characters and ignore CX components this
            model does not keep (check digit, CX.6 and later). Strict mode refuses them
            so that nothing given is silently dropped.

        Returns
        -------
        PatientID

        Raises
        ------
        InvalidQueryError
            If *cx* is empty, too long, has control characters, malformed escapes or
            more components than a CX has.
        """
        if _CONTROL.search(cx):
            raise InvalidQueryError(f"patientID {shown(cx)} contains a control character")
        parts = cx.split("^")
        if len(parts) > 10:
            raise InvalidQueryError(
                f"patientID {shown(cx)} has {len(parts)} components; an HL7 CX has at most 10"
            )
        parts += [""] * (5 - len(parts))
        ignored = [i + 1 for i, p in enumerate(parts) if p and (i in (1, 2) or i >= 5)]
        if ignored and not lenient:
            raise InvalidQueryError(
                f"patientID {shown(cx)} has CX component(s) {ignored} that are not supported "
                "(only CX.1 identifier, CX.4 assigning authority and CX.5 type code are)"
            )
        value = _unescape(parts[0], "patientID")
        limit = MAX_ID_CHARS_LENIENT if lenient else MAX_ID_CHARS
        if len(value) > limit:
            raise InvalidQueryError(
                f"patientID {shown(value)} is {len(value)} characters; at most {limit} allowed"
                + ("" if lenient else " (DICOM LO; lenient mode allows longer)")
            )
        hd = parts[3].split("&")
        if len(hd) > 3:
            raise InvalidQueryError(
                f"patientID assigning authority {shown(parts[3])} has {len(hd)} subcomponents; "
                "an HL7 HD has at most 3 (namespace&universalID&type)"
            )
        hd += [""] * (3 - len(hd))
        namespace, universal_id, id_type = (
            _unescape(p, "patientID assigning authority") or None for p in hd
        )
        return cls(
            value=value,
            namespace=namespace,
            universal_id=universal_id,
            universal_id_type=id_type,
            type_code=_unescape(parts[4], "patientID type code") or None,
        )

    def to_cx(self) -> str:
        """Return the HL7 v2 CX form, delimiters in values escaped (HL7 v2.5 §2.7)."""
        authority = "&".join(
            _escape(p or "") for p in (self.namespace, self.universal_id, self.universal_id_type)
        ).rstrip("&")
        cx = "^".join([_escape(self.value), "", "", authority, _escape(self.type_code or "")])
        return cx.rstrip("^")

    def __str__(self) -> str:
        return self.to_cx()

    @property
    def issuer(self) -> str | None:
        """The issuer as DICOM Issuer of Patient ID (0010,0021): namespace, else universal ID."""
        return self.namespace or self.universal_id

    def fhir_system(self) -> str | None:
        """Return the FHIR ``Identifier.system`` for the assigning authority, if known.

        An ISO authority becomes ``urn:oid:<oid>``; a URI/URL authority is used as is; a
        namespace that is itself a URI (contains ``:``) is used as is. A bare local
        namespace has no FHIR system (``None``): match on the value alone.
        """
        if self.universal_id:
            if self.universal_id_type == "ISO" or (
                self.universal_id_type is None and is_valid_uid(self.universal_id, lenient=True)
            ):
                return f"urn:oid:{self.universal_id}"
            if self.universal_id_type in (None, "URI", "URL") and ":" in self.universal_id:
                return self.universal_id
        if self.namespace and ":" in self.namespace:
            return self.namespace
        return None


def validate_patient_name(name: str, *, lenient: bool = False) -> str:
    """Return *name* if it is a DICOM PN value (PS3.5 §6.2), else raise.

    Parameters
    ----------
    name : str
        e.g. ``Doe^John`` or ``Yamada^Tarou=山田^太郎``.
    lenient : bool
        Allow component groups longer than 64 characters.

    Raises
    ------
    InvalidQueryError
        On control characters, backslashes (the DICOM value delimiter), more than three
        component groups or five components, or over-long groups.
    """
    if not name.strip():
        raise InvalidQueryError("patientName is empty")
    if _CONTROL.search(name) or "\\" in name:
        raise InvalidQueryError(
            f"patientName {shown(name)} contains a control character or a backslash "
            "(not allowed in DICOM PN, PS3.5 §6.2)"
        )
    groups = name.split("=")
    if len(groups) > 3:
        raise InvalidQueryError(
            f"patientName {shown(name)} has {len(groups)} component groups; DICOM PN has at "
            "most 3 (alphabetic=ideographic=phonetic)"
        )
    for group in groups:
        if len(group.split("^")) > 5:
            raise InvalidQueryError(
                f"patientName {shown(name)} has more than 5 components in a group "
                "(family^given^middle^prefix^suffix)"
            )
        if len(group) > MAX_PN_GROUP_CHARS and not lenient:
            raise InvalidQueryError(
                f"patientName {shown(name)} has a component group of {len(group)} characters; "
                "DICOM PN allows 64"
            )
    return name

"""Typed views of the FHIR R4 JSON that imagingkit reads, decoded with msgspec.

Only the elements the cohort builder and the flattener use are declared; msgspec skips
every other member without building Python objects for it, which is what makes decoding
a search Bundle several times faster than :func:`json.loads` (see
``bench/flatten_imagingstudy.py``). One resource struct, :class:`Resource`, carries the
elements of every type imagingkit reads from a searchset (ImagingStudy, Patient, Endpoint,
Condition, Observation): their element names do not clash in type, except
``Patient.address`` (a list) vs ``Endpoint.address`` (a url), which is kept raw.

Absent Codings and References decode as the shared empty :data:`NO_CODING` /
:data:`NO_REFERENCE` instead of ``None``, so ``series.modality.code`` is simply ``None``
and column extraction can use :func:`operator.attrgetter` (a C loop). (FHIR JSON has
no ``null`` values, R4 §2.6.2, so nothing valid is refused by this.)

Two decoders exist: :data:`BUNDLE` skips ``ImagingStudy.series.instance`` (study and
series level), :data:`BUNDLE_WITH_INSTANCES` keeps it (instance level).

References: FHIR R4 ImagingStudy, Patient, Endpoint, Observation, Condition, Bundle.
"""

from __future__ import annotations

from typing import Any

import msgspec

from imagingkit.errors import FHIRError

__all__ = [
    "BUNDLE",
    "BUNDLE_WITH_INSTANCES",
    "NO_CODE",
    "NO_CODING",
    "NO_REFERENCE",
    "Bundle",
    "Code",
    "Coding",
    "Concept",
    "Extension",
    "Identifier",
    "Instance",
    "Quantity",
    "Reference",
    "Resource",
    "Series",
    "decode_bundle",
    "to_builtins",
]


class Coding(msgspec.Struct, frozen=True, gc=False):
    """R4 Coding (only system, code and display)."""

    system: str | None = None
    code: str | None = None
    display: str | None = None


class Code(msgspec.Struct, frozen=True, gc=False):
    """A Coding of which only the code is read (series modality, body site, laterality).

    Declaring only ``code`` lets the decoder skip ``system`` and ``display`` without
    allocating them: a third of the strings of a typical series.
    """

    code: str | None = None


#: The Code of an absent element.
NO_CODE = Code()
#: The Coding of an absent element (so ``series.modality.code`` is ``None``, not an error).
NO_CODING = Coding()


class Concept(msgspec.Struct, frozen=True, gc=False):
    """R4 CodeableConcept."""

    coding: list[Coding] = []
    text: str | None = None


class Identifier(msgspec.Struct, frozen=True, gc=False):
    """R4 Identifier."""

    system: str | None = None
    value: str | None = None
    type: Concept | None = None


class Reference(msgspec.Struct, frozen=True, gc=False):
    """R4 Reference (literal or logical)."""

    reference: str | None = None
    identifier: Identifier | None = None


#: The Reference of an absent element.
NO_REFERENCE = Reference()


class Extension(msgspec.Struct, frozen=True, gc=False):
    """R4 Extension, with the value types the Endpoint extensions use."""

    url: str = ""
    valueBoolean: bool | None = None
    valueString: str | None = None
    valueUri: str | None = None
    valueOid: str | None = None
    valueId: str | None = None
    valueIdentifier: Identifier | None = None

    @property
    def value(self) -> Any:
        """The first value[x] that is set."""
        for value in (
            self.valueBoolean,
            self.valueString,
            self.valueUri,
            self.valueOid,
            self.valueId,
        ):
            if value is not None:
                return value
        return self.valueIdentifier.value if self.valueIdentifier else None


class Quantity(msgspec.Struct, frozen=True, gc=False):
    """R4 Quantity."""

    value: float | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None
    comparator: str | None = None


class Instance(msgspec.Struct, frozen=True, gc=False):
    """R4 ImagingStudy.series.instance."""

    uid: str | None = None
    sopClass: Code = NO_CODE
    number: int | None = None
    title: str | None = None


class SeriesBase(msgspec.Struct, frozen=True, gc=False):
    """R4 ImagingStudy.series without its instances."""

    uid: str | None = None
    number: int | None = None
    modality: Code = NO_CODE
    description: str | None = None
    numberOfInstances: int | None = None
    endpoint: list[Reference] = []
    bodySite: Code = NO_CODE
    laterality: Code = NO_CODE
    started: str | None = None


class Series(SeriesBase, frozen=True, gc=False):
    """R4 ImagingStudy.series with its instances."""

    instance: list[Instance] = []


class Contained(msgspec.Struct, frozen=True, gc=False):
    """A contained resource (SMART Imaging Access allows a contained Endpoint)."""

    resourceType: str = ""
    id: str | None = None
    status: str | None = None
    address: str | None = None
    connectionType: Coding | None = None
    extension: list[Extension] = []


class _ResourceBase(msgspec.Struct, frozen=True, gc=False):
    resourceType: str = ""
    id: str | None = None
    extension: list[Extension] = []
    contained: list[Contained] = []
    identifier: list[Identifier] = []
    status: str | None = None
    subject: Reference = NO_REFERENCE
    # ImagingStudy
    started: str | None = None
    modality: list[Code] = []
    numberOfSeries: int | None = None
    numberOfInstances: int | None = None
    description: str | None = None
    endpoint: list[Reference] = []
    basedOn: list[Reference] = []
    # Patient
    gender: str | None = None
    birthDate: str | None = None
    # Endpoint (Patient.address is a list: kept raw, read only for Endpoints)
    address: msgspec.Raw = msgspec.Raw(b"")
    connectionType: Coding | None = None
    # Condition, Observation
    code: Concept | None = None
    valueQuantity: Quantity | None = None

    @property
    def key(self) -> str:
        """``Type/id``."""
        return f"{self.resourceType}/{self.id}"

    def address_url(self) -> str | None:
        """``Endpoint.address`` as a string (``None`` if absent or not a string)."""
        if not len(self.address):
            return None
        try:
            value = msgspec.json.decode(self.address)
        except msgspec.DecodeError:
            return None
        return value if isinstance(value, str) else None


class Resource(_ResourceBase, frozen=True, gc=False):
    """A resource of a search Bundle whose ImagingStudy series omit their instances."""

    series: list[SeriesBase] = []


class ResourceWithInstances(_ResourceBase, frozen=True, gc=False):
    """A resource whose ImagingStudy series keep their instances."""

    series: list[Series] = []


class Link(msgspec.Struct, frozen=True, gc=False):
    relation: str = ""
    url: str = ""


class EntrySearch(msgspec.Struct, frozen=True, gc=False):
    mode: str | None = None


class Entry(msgspec.Struct, frozen=True, gc=False):
    fullUrl: str | None = None
    resource: Resource | None = None
    search: EntrySearch | None = None


class EntryWithInstances(msgspec.Struct, frozen=True, gc=False):
    fullUrl: str | None = None
    resource: ResourceWithInstances | None = None
    search: EntrySearch | None = None


class Bundle(msgspec.Struct, frozen=True, gc=False):
    """R4 Bundle (searchset)."""

    resourceType: str = ""
    type: str | None = None
    total: int | None = None
    link: list[Link] = []
    entry: list[Entry] = []

    def next_url(self) -> str | None:
        """The ``next`` link (R4 http §3.1.0.14 paging), if any."""
        for link in self.link:
            if link.relation == "next" and link.url:
                return link.url
        return None


class BundleWithInstances(Bundle, frozen=True, gc=False):
    entry: list[EntryWithInstances] = []  # type: ignore[assignment]


#: Decoder for search pages, ImagingStudy series without instances.
BUNDLE = msgspec.json.Decoder(Bundle)
#: Decoder for search pages, ImagingStudy series with instances.
BUNDLE_WITH_INSTANCES = msgspec.json.Decoder(BundleWithInstances)


def decode_bundle(data: bytes, *, instances: bool = False, url: str | None = None) -> Bundle:
    """Decode one search page.

    Parameters
    ----------
    data : bytes
        The JSON of a Bundle.
    instances : bool
        Keep ``ImagingStudy.series.instance``.
    url : str, optional
        Where the page came from (for the error message).

    Raises
    ------
    FHIRError
        If the bytes are not a Bundle of the expected shape; the message names the
        JSON path of the first bad value.
    """
    decoder = BUNDLE_WITH_INSTANCES if instances else BUNDLE
    try:
        bundle = decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FHIRError(f"the server sent an unreadable search page: {exc}", url=url) from exc
    if bundle.resourceType != "Bundle":
        raise FHIRError(
            f"expected a Bundle, the server sent {bundle.resourceType or 'something else'!r}",
            url=url,
        )
    return bundle


def to_builtins(value: Any) -> Any:
    """Plain dicts and lists of a decoded struct (for users and JSON)."""
    return msgspec.to_builtins(value)

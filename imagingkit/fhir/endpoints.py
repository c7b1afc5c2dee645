"""Where a study's pixels live: resolving ``ImagingStudy.endpoint`` to a DICOMweb URL.

Three conventions for ``Endpoint.address`` exist in the wild, and all are accepted:

* **FHIR core** (R4 ImagingStudy notes, ``dicom-wado-rs``): the address is the
  service base URL; the client appends ``/studies/{uid}[/series/{uid}]``.
* **IHE IDR** (RAD IDR Endpoint examples): the address already holds the study or
  series path (``…/studies/1.2.3`` or ``…/study/1.2.3``); the path is not appended again,
  the base is what precedes it.
* **IHE MADO**: each ``series.endpoint`` is mandatory and the address may be a
  placeholder (absent, with a data-absent-reason, or a non-http URN) standing for the
  DICOM ``RetrieveLocationUID`` extension; placeholders resolve through the
  ``dicomweb=`` mapping given to :func:`imagingkit.connect`.

A series endpoint overrides the study endpoint of the same connection type (R4
ImagingStudy notes). Only ``dicom-wado-rs`` Endpoints (or Endpoints without a
connectionType) are used; ``ihe-iid``/``web-viewer``/``dicom-wado-uri`` ones are skipped.
SMART Imaging Access's ``requires-access-token`` extension is carried along: ``False``
means the address is a capability URL that must be called without a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imagingkit.fhir.model import Contained, Extension, Reference, _ResourceBase

__all__ = [
    "DicomWebLocation",
    "EndpointInfo",
    "EndpointResolver",
    "reference_key",
    "split_wado_address",
]

WADO_RS = "dicom-wado-rs"
_ADDRESS_PATH = re.compile(
    r"^(?P<base>.+?)/(?:studies|study)/(?P<study>[0-9][0-9.]*)"
    r"(?:/series/(?P<series>[0-9][0-9.]*))?/?$"
)
_TYPE_ID = re.compile(r"(?:^|/)(?P<key>[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def reference_key(reference: str | None) -> str | None:
    """Normalise a literal reference to ``Type/id`` (absolute URLs keep their tail).

    ``Patient/1``, ``http://h/fhir/Patient/1`` and ``Patient/1/_history/2`` all give
    ``Patient/1``; contained references (``#ep``) are returned unchanged.
    """
    if not reference:
        return None
    if reference.startswith("#"):
        return reference
    match = _TYPE_ID.search(reference)
    return match.group("key") if match else reference


def split_wado_address(address: str) -> tuple[str, str | None, str | None]:
    """Split an Endpoint address into (base, study UID, series UID).

    A FHIR-core address is the base itself; an IHE IDR address ends with the study (or
    series) path.
    """
    trimmed = address.rstrip("/")
    match = _ADDRESS_PATH.match(trimmed)
    if match is None:
        return trimmed, None, None
    return match.group("base"), match.group("study"), match.group("series")


@dataclass(frozen=True)
class EndpointInfo:
    """What imagingkit reads from one Endpoint resource."""

    address: str | None
    connection_type: str | None
    status: str | None = None
    requires_access_token: bool | None = None
    retrieve_location_uid: str | None = None

    @classmethod
    def from_resource(cls, resource: _ResourceBase | Contained) -> EndpointInfo:
        address = resource.address if isinstance(resource, Contained) else resource.address_url()
        token = _extension(resource.extension, "requires-access-token")
        location = _extension(resource.extension, "retrievelocationuid")
        return cls(
            address=address,
            connection_type=resource.connectionType.code if resource.connectionType else None,
            status=resource.status,
            requires_access_token=token if isinstance(token, bool) else None,
            retrieve_location_uid=location if isinstance(location, str) else None,
        )

    @property
    def is_wado_rs(self) -> bool:
        return self.connection_type in (None, WADO_RS)


def _extension(extensions: Iterable[Extension], suffix: str) -> object:
    for extension in extensions:
        if extension.url.lower().rstrip("/").endswith(suffix):
            value = extension.value
            return value.removeprefix("urn:oid:") if isinstance(value, str) else value
    return None


@dataclass(frozen=True)
class DicomWebLocation:
    """The DICOMweb service of one study or series.

    Attributes
    ----------
    base : str or None
        The service base URL (no trailing slash), or ``None`` if nothing resolved.
    convention : str
        ``"fhir-core"``, ``"ihe-idr"``, ``"mado"`` (a placeholder resolved through the
        configured map), ``"configured"`` (``dicomweb=`` given to connect) or
        ``"missing"``.
    requires_access_token : bool or None
        SMART Imaging Access: ``False`` means "send no token" (a capability URL).
    """

    base: str | None
    convention: str
    requires_access_token: bool | None = None

    def study_url(self, study_uid: str) -> str | None:
        """WADO-RS URL of a study (PS3.18 §10.4.1)."""
        return f"{self.base}/studies/{study_uid}" if self.base else None

    def series_url(self, study_uid: str, series_uid: str) -> str | None:
        """WADO-RS URL of a series (PS3.18 §10.4.1)."""
        return f"{self.base}/studies/{study_uid}/series/{series_uid}" if self.base else None


MISSING = DicomWebLocation(None, "missing")


class EndpointResolver:
    """Resolve ImagingStudy/series endpoints against the Endpoints of a search.

    Parameters
    ----------
    endpoints : mapping of str to EndpointInfo
        Endpoint resources by ``Type/id`` (and by full URL).
    dicomweb : str or mapping, optional
        A string is the DICOMweb base to use for every study (it overrides the
        Endpoints). A mapping resolves placeholders: keys are RetrieveLocationUIDs or
        placeholder addresses, and ``"*"`` is the fallback for studies without any usable
        Endpoint.
    """

    def __init__(
        self,
        endpoints: Mapping[str, EndpointInfo],
        dicomweb: str | Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.override = dicomweb.rstrip("/") if isinstance(dicomweb, str) else None
        self.locations = (
            {k: v.rstrip("/") for k, v in dicomweb.items()} if isinstance(dicomweb, Mapping) else {}
        )
        self._cache: dict[tuple[object, ...], DicomWebLocation] = {}

    def locate(
        self,
        references: Iterable[Reference],
        contained: Iterable[Contained] = (),
    ) -> DicomWebLocation:
        """Return the DICOMweb location named by the first usable reference."""
        if self.override is not None:
            return DicomWebLocation(self.override, "configured")
        refs = tuple(r.reference for r in references if r.reference)
        if any(r.startswith("#") for r in refs):  # contained: differs from study to study
            return self._locate(refs, {f"#{c.id}": c for c in contained})
        found = self._cache.get(refs)
        if found is None:
            found = self._cache[refs] = self._locate(refs, {})
        return found

    def _locate(self, refs: tuple[str, ...], contained: dict[str, Contained]) -> DicomWebLocation:
        for ref in refs:
            if ref in contained:
                info: EndpointInfo | None = EndpointInfo.from_resource(contained[ref])
            else:
                info = self.endpoints.get(ref) or self.endpoints.get(reference_key(ref) or "")
            if info is None or not info.is_wado_rs:
                continue
            location = self._from_info(info)
            if location is not None:
                return location
        fallback = self.locations.get("*")
        return DicomWebLocation(fallback, "configured") if fallback else MISSING

    def _from_info(self, info: EndpointInfo) -> DicomWebLocation | None:
        token = info.requires_access_token
        flag = token if isinstance(token, bool) else None
        address = info.address
        if address and address.startswith(("http://", "https://")):
            if address in self.locations:
                return DicomWebLocation(self.locations[address], "configured", flag)
            base, study, _series = split_wado_address(address)
            return DicomWebLocation(base, "ihe-idr" if study else "fhir-core", flag)
        for key in (info.retrieve_location_uid, address):
            if isinstance(key, str) and key in self.locations:
                return DicomWebLocation(self.locations[key], "mado", flag)
        return None

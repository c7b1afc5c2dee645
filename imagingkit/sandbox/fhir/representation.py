"""How stored resources are shown to a client: server addresses, ``_elements``, ``_summary``.

Server-relative addresses
-------------------------
The sandbox's Endpoint resources point at the embedded DICOMweb store, whose absolute URL
depends on how the app is reached (``--port 0`` picks the port; Jupyter adds a base URL;
a proxy may change the host). So an ``Endpoint.address`` is stored as a placeholder::

    urn:imagingkit:dicomweb-base[/<path>]      (``urn:imagingkit:dicom-web`` also accepted)

and rendered on every way out (read, vread, search, history, transaction responses) as
``{protocol}://{host}{app base URL}dicom-web[/<path>]``, computed from the incoming request
and the app's base URL (the FHIR store's own mount point minus ``fhir``; the DICOMweb
store is mounted at ``{base_url}dicom-web``). With the app at ``http://127.0.0.1:8042/`` the
address becomes ``http://127.0.0.1:8042/dicom-web``; under Jupyter at
``http://localhost:8888/user/x/imagingkit/`` it becomes
``http://localhost:8888/user/x/imagingkit/dicom-web`` (R4 Endpoint.address for
``dicom-wado-rs``: the service base, no trailing slash). Only ``Endpoint.address`` is
rewritten.

In the other direction, a client that writes back an Endpoint whose address is this app's
own absolute DICOMweb URL (as it read it) has it stored as the placeholder again, so the
data stays right when the port or base URL changes; likewise references written as
absolute URLs under this server's FHIR base are stored relative (``Patient/1``).
In-process callers without a request (e.g. :meth:`FhirStore.read` without
``base_url``) see the placeholder.

``_elements`` and ``_summary`` (R4 search §3.1.1.5.8-9) return a marked subset
(``meta.tag`` SUBSETTED).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imagingkit.errors import InvalidQueryError
from imagingkit.sandbox.fhir.references import iter_references

__all__ = [
    "PLACEHOLDER",
    "PLACEHOLDERS",
    "SUMMARY_ELEMENTS",
    "BaseUrls",
    "RawJSON",
    "dumps",
    "portable",
    "rendered",
    "subset",
]

#: The placeholder written for the DICOMweb base (the canonical spelling).
PLACEHOLDER = "urn:imagingkit:dicomweb-base"
#: Every accepted placeholder → the app mount it stands for.
PLACEHOLDERS = {PLACEHOLDER: "dicom-web", "urn:imagingkit:dicom-web": "dicom-web"}

_SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_MANDATORY = ("resourceType", "id", "meta")


@dataclass(frozen=True)
class BaseUrls:
    """The absolute URLs a response is rendered against.

    Attributes
    ----------
    fhir : str
        The FHIR service base, no trailing slash (``http://127.0.0.1:8042/fhir``).
    app : str
        The app's base, with a trailing slash (``http://127.0.0.1:8042/``); sibling
        mounts such as ``dicom-web`` live below it.
    """

    fhir: str
    app: str

    @classmethod
    def from_fhir_base(cls, fhir_base: str, mount: str = "fhir") -> BaseUrls:
        """Derive the app base from the FHIR base (``…/{mount}``)."""
        fhir = fhir_base.rstrip("/")
        app = fhir[: -len(mount)] if fhir.endswith("/" + mount) else fhir.rsplit("/", 1)[0] + "/"
        return cls(fhir=fhir, app=app)


def _split_placeholder(address: str) -> tuple[str, str] | None:
    for placeholder, mount in PLACEHOLDERS.items():
        if address == placeholder or address.startswith(placeholder + "/"):
            return mount, address[len(placeholder) :]
    return None


def rendered(resource: dict[str, Any], urls: BaseUrls | None) -> dict[str, Any]:
    """Return *resource* with a placeholder address made absolute for *urls* (in place)."""
    if urls is None or resource.get("resourceType") != "Endpoint":
        return resource
    address = resource.get("address")
    found = _split_placeholder(address) if isinstance(address, str) else None
    if found is not None:
        mount, rest = found
        resource["address"] = urls.app + mount + rest
    return resource


def portable(resource: dict[str, Any], urls: BaseUrls | None) -> dict[str, Any]:
    """Return *resource* (changed in place) with this server's own absolute URLs made relative.

    A reference ``{fhir base}/Patient/1`` becomes ``Patient/1`` (R4 §2.3.0: a reference
    to the server's own base is a local one), and this app's DICOMweb URL in
    ``Endpoint.address`` becomes the placeholder.
    """
    if urls is None:
        return resource
    own = urls.fhir + "/"
    for _, ref in iter_references(resource, resource.get("resourceType", "")):
        if ref["reference"].startswith(own):
            ref["reference"] = ref["reference"][len(own) :]
    if resource.get("resourceType") != "Endpoint":
        return resource
    address = resource.get("address")
    own = urls.app + "dicom-web"
    if isinstance(address, str) and (address == own or address.startswith(own + "/")):
        resource["address"] = PLACEHOLDER + address[len(own) :]
    return resource


def _mark_subsetted(resource: dict[str, Any]) -> None:
    meta = resource.setdefault("meta", {})
    tags = meta.setdefault("tag", [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(dict(_SUBSETTED))


def subset(
    resource: dict[str, Any],
    *,
    elements: Iterable[str] | None = None,
    summary: str | None = None,
) -> dict[str, Any]:
    """Return the part of *resource* a client asked for.

    Parameters
    ----------
    resource : dict
    elements : iterable of str, optional
        ``_elements``: top-level element names to keep (plus the mandatory ``id``,
        ``meta``, ``resourceType``).
    summary : {"true", "text", "data", "false"}, optional
        ``_summary``; ``true`` keeps the top-level elements R4 marks as summary
        (:data:`SUMMARY_ELEMENTS`).

    Raises
    ------
    InvalidQueryError
        If *summary* is not an R4 value.
    """
    if elements is not None:
        keep = set(elements)
        out = {k: v for k, v in resource.items() if k in keep or k in _MANDATORY}
        out = copy.deepcopy(out)
        _mark_subsetted(out)
        return out
    if summary in (None, "false"):
        return resource
    if summary == "text":
        out = {k: copy.deepcopy(v) for k, v in resource.items() if k in (*_MANDATORY, "text")}
    elif summary == "data":
        out = {k: copy.deepcopy(v) for k, v in resource.items() if k != "text"}
    elif summary == "true":
        rtype = resource.get("resourceType", "")
        out = {k: copy.deepcopy(v) for k, v in resource.items() if _is_summary(rtype, k)}
    else:
        raise InvalidQueryError(
            f"_summary value {summary!r} is not one of true, text, data, count, false"
        )
    _mark_subsetted(out)
    return out


#: Top-level elements R4 marks isSummary (StructureDefinition snapshots of R4 4.0.1);
#: ``[x]`` stands for every choice of a choice element. Nested elements are kept whole.
SUMMARY_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Patient": (
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceased[x]",
        "address",
        "managingOrganization",
        "link",
    ),
    "Condition": (
        "identifier",
        "clinicalStatus",
        "verificationStatus",
        "code",
        "bodySite",
        "subject",
        "encounter",
        "onset[x]",
        "recordedDate",
        "recorder",
        "asserter",
    ),
    "Observation": (
        "identifier",
        "basedOn",
        "partOf",
        "status",
        "code",
        "subject",
        "focus",
        "encounter",
        "effective[x]",
        "issued",
        "performer",
        "value[x]",
        "hasMember",
        "derivedFrom",
        "component",
    ),
    "ImagingStudy": (
        "identifier",
        "status",
        "modality",
        "subject",
        "encounter",
        "started",
        "basedOn",
        "referrer",
        "interpreter",
        "endpoint",
        "numberOfSeries",
        "numberOfInstances",
        "procedureReference",
        "procedureCode",
        "location",
        "reasonCode",
        "reasonReference",
        "note",
        "description",
        "series",
    ),
    "Endpoint": (
        "identifier",
        "status",
        "connectionType",
        "name",
        "managingOrganization",
        "period",
        "payloadType",
        "payloadMimeType",
        "address",
    ),
    "Encounter": (
        "identifier",
        "status",
        "class",
        "type",
        "serviceType",
        "subject",
        "episodeOfCare",
        "participant",
        "appointment",
        "reasonCode",
        "reasonReference",
        "diagnosis",
    ),
    "DiagnosticReport": (
        "identifier",
        "status",
        "category",
        "code",
        "subject",
        "encounter",
        "effective[x]",
        "issued",
        "performer",
        "resultsInterpreter",
        "media",
    ),
    "RiskAssessment": (
        "identifier",
        "status",
        "method",
        "code",
        "subject",
        "encounter",
        "occurrence[x]",
        "condition",
        "performer",
    ),
}


def _is_summary(resource_type: str, key: str) -> bool:
    if key in ("resourceType", "id", "meta", "implicitRules"):
        return True
    for name in SUMMARY_ELEMENTS.get(resource_type, ()):
        if name.endswith("[x]"):
            stem = name[:-3]
            if key.startswith(stem) and len(key) > len(stem) and key[len(stem)].isupper():
                return True
        elif key == name:
            return True
    return False


class RawJSON:
    """Stored resource JSON to put into a response as it is (not parsed and re-encoded).

    Search pages are mostly stored resources shown unchanged; splicing their stored text
    into the Bundle saves a parse and an encode per resource. See :func:`dumps`.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def dumps(body: Any, *, indent: int | None = None) -> str:
    """Serialise a response body whose values may include :class:`RawJSON`."""
    raws: list[str] = []
    token = secrets.token_hex(12)  # random: user text cannot collide with the markers

    def default(value: Any) -> Any:
        if not isinstance(value, RawJSON):
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")
        if indent is not None:  # pretty output re-indents everything: parse it
            return json.loads(value.text)
        raws.append(value.text)
        return f"{token}:{len(raws) - 1}"

    text = json.dumps(body, default=default, ensure_ascii=False, indent=indent)
    if not raws:
        return text
    return re.sub(f'"{token}:([0-9]+)"', lambda m: raws[int(m.group(1))], text)

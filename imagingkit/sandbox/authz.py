"""Who may see what when the sandbox runs with ``--auth`` (SMART scopes, patient compartments).

A request to the FHIR or DICOMweb store must carry ``Authorization: Bearer <token>``
issued by the sandbox's token endpoint (:mod:`imagingkit.sandbox.token_endpoint`). The
token stands for a :class:`Grant`:

``scopes``
    SMART v2 resource scopes (SMART App Launch 2.2 §3.1) — ``system/*.rs``,
    ``patient/ImagingStudy.rs``, ``system/*.cruds`` … (v1 ``.read``/``.write``/``.*`` are
    read as ``rs``/``cud``/``cruds``). ``c r u d s`` = create, read, update, delete, search.
``fhircast``
    FHIRcast scopes ``fhircast/{Event}.read|write|*`` (FHIRcast 3.0.0 ``2-2``): what the
    token may subscribe to (``read``) and publish (``write``) on the sandbox's hub. They
    are not resource scopes: the FHIR and DICOMweb stores ignore them, and a token with
    only FHIRcast scopes reads nothing there.
``patients``
    ``None`` for a client pre-authorised for every patient; otherwise the ids of the
    Patients it may see. Such a *restricted* grant only ever reads and searches.

The patient compartment of this store (a subset of R4's Patient CompartmentDefinition):
Patient X itself, and every resource whose ``patient`` search parameter refers to
``Patient/X`` (ImagingStudy, Observation, Condition, Encounter, DiagnosticReport,
RiskAssessment). Endpoint resources are service configuration, readable with any valid
token: SMART Imaging Access searches ``ImagingStudy?patient=…&_include=ImagingStudy:endpoint``
under an ImagingStudy-only scope. A DICOMweb study belongs to Patient X when the FHIR
store's ImagingStudy with that Study Instance UID (identifier ``urn:dicom:uid``) has the
subject ``Patient/X``; the sandbox derives that link from the study's PatientID (and
its issuer) when it syncs the DICOM index into FHIR (SMART Imaging Access: access is
decided by "the study's owner").

Enforcement, for a restricted grant:

- **FHIR read / vread**: the resource must be in the compartment (403 otherwise);
  histories are refused; writes and Bundles are refused.
- **FHIR search**: the store adds ``patient=`` (``_id=`` on Patient) to the search, so
  matches, ``total`` and paging only ever count the compartment; chained and ``_has``
  parameters are allowed only where they stay inside it (``patient.x``,
  ``subject:Patient.x``, ``endpoint.x``, ``Patient?_has:T:patient:x``); every entry of
  the answer, ``_include``/``_revinclude`` ones too, is checked again before it is sent.
- **DICOMweb**: QIDO-RS results are limited to the grant's studies; any path naming a
  study (WADO-RS instances, metadata, frames, rendered, thumbnail, bulk data, nested
  QIDO) is refused with 403 unless the study is one of them; STOW-RS needs an
  unrestricted grant with ``c`` on ImagingStudy.

Every request but CORS preflights and ``/fhir/metadata`` needs a token: 401 with a
``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3) without one or with an invalid or
expired one; 403 ``insufficient_scope`` when the scopes do not cover the interaction.

The guards (:mod:`imagingkit.sandbox.guards`) authenticate each request and record its
:class:`RequestAccess`; the stores then call three hooks, which do nothing when the app
runs without ``--auth``: :func:`scope_fhir_search`, :func:`screen_fhir_body` and
:func:`qido_filters`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import tornado.web

from imagingkit.errors import InvalidInputError
from imagingkit.server.base import HTTPProblem

if TYPE_CHECKING:
    from imagingkit.sandbox.fhir.search import Criterion
    from imagingkit.sandbox.fhir.storage import Storage

__all__ = [
    "COMPARTMENT_TYPES",
    "PUBLIC_TYPES",
    "REALM",
    "FhircastScope",
    "Grant",
    "RequestAccess",
    "Scope",
    "TokenStore",
    "forbidden",
    "insufficient_scope",
    "parse_fhircast_scopes",
    "parse_scopes",
    "qido_filters",
    "scope_fhir_search",
    "screen_fhir_body",
    "set_access",
    "valid_patient_id",
]

#: Types whose ``patient`` search parameter puts them in a Patient's compartment.
COMPARTMENT_TYPES = frozenset(
    {"Condition", "DiagnosticReport", "Encounter", "ImagingStudy", "Observation", "RiskAssessment"}
)
#: Service configuration every valid token may read (SMART Imaging Access ``_include``).
PUBLIC_TYPES = frozenset({"Endpoint"})
#: Reference parameters that lead from a compartment resource to its own Patient.
_PATIENT_LINKS = frozenset({"patient", "subject"})
_PERMISSIONS = "cruds"
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)$")
#: ``fhircast/{event-name|*}.{read|write|*}`` (FHIRcast 3.0.0 ``2-2``); the last dot
#: separates the mode (proprietary event names contain dots)
_FHIRCAST_RE = re.compile(r"^fhircast/(\S+)\.(read|write|\*)$", re.IGNORECASE)
_FHIRCAST_MODES = ("read", "write")
_FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: the ``WWW-Authenticate`` challenge of both stores (RFC 6750 §3)
REALM = 'Bearer realm="imagingkit"'
#: the request attribute the guard sets for the hooks
_ACCESS = "imagingkit_access"


# --------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope ``context/Type.perms`` (SMART App Launch 2.2 §3.1).

    Attributes
    ----------
    context : {"patient", "user", "system"}
    resource_type : str
        A FHIR type or ``"*"``.
    permissions : frozenset of str
        Letters of ``c r u d s``.
    """

    context: str
    resource_type: str
    permissions: frozenset[str]

    def covers(self, other: Scope) -> bool:
        """Whether this scope grants everything *other* asks for (same context)."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
        )

    def __str__(self) -> str:
        letters = "".join(p for p in _PERMISSIONS if p in self.permissions)
        return f"{self.context}/{self.resource_type}.{letters}"


@dataclass(frozen=True)
class FhircastScope:
    """One FHIRcast scope ``fhircast/{Event}.{mode}`` (FHIRcast 3.0.0 ``2-2``).

    ``read`` lets a token subscribe to (receive) the event, ``write`` lets it request
    that context change; ``*`` stands for both. Event names compare case-insensitively,
    as the hub compares them.

    Attributes
    ----------
    event : str
        An event name (``Patient-open``, ``org.example.custom``) or ``"*"``.
    modes : frozenset of str
        ``{"read"}``, ``{"write"}`` or both.
    """

    event: str
    modes: frozenset[str]

    def covers(self, other: FhircastScope) -> bool:
        """Whether this scope grants everything *other* asks for."""
        same_event = self.event == "*" or self.event.lower() == other.event.lower()
        return same_event and other.modes <= self.modes

    def split(self) -> tuple[FhircastScope, ...]:
        """One scope per mode (``fhircast/*.*`` is ``fhircast/*.read`` and ``….write``)."""
        return tuple(FhircastScope(self.event, frozenset({m})) for m in sorted(self.modes))

    def __str__(self) -> str:
        mode = "*" if len(self.modes) == 2 else next(iter(self.modes))
        return f"fhircast/{self.event}.{mode}"


def _fhircast_scope(word: str) -> FhircastScope:
    from imagingkit.fhircast.protocol import event_grammar_ok

    match = _FHIRCAST_RE.match(word)
    if match is None:
        raise InvalidInputError(f"scope {word!r} is not fhircast/Event.read|write|*")
    event, mode = match.group(1), match.group(2).lower()
    if event != "*" and not event_grammar_ok(event):
        raise InvalidInputError(f"scope {word!r}: {event!r} is not a FHIRcast event name")
    modes = frozenset(_FHIRCAST_MODES if mode == "*" else (mode,))
    return FhircastScope(event, modes)


def _is_fhircast(word: str) -> bool:
    return word[:9].lower() == "fhircast/"


def parse_scopes(text: str) -> tuple[list[Scope], list[str]]:
    """Split a space-separated scope string into resource scopes and other scopes.

    Non-resource scopes (``openid``, ``launch/patient``, ``offline_access`` …) come back
    in the second list untouched, for the caller to ignore; FHIRcast scopes are checked
    and come back there too (read them with :func:`parse_fhircast_scopes`).

    Raises
    ------
    InvalidInputError
        For a resource scope this server does not understand (unknown permission
        letters, repeated letters, or SMART 2.2 ``?param=value`` constraints), or a
        malformed FHIRcast scope.
    """
    scopes: list[Scope] = []
    others: list[str] = []
    for word in text.split():
        if "/" not in word or word.startswith("launch"):
            others.append(word)
            continue
        if _is_fhircast(word):
            _fhircast_scope(word)
            others.append(word)
            continue
        if "?" in word:
            raise InvalidInputError(f"scope {word!r}: query constraints are not supported")
        match = _SCOPE_RE.match(word)
        if match is None:
            raise InvalidInputError(f"scope {word!r} is not context/Type.permissions")
        context, rtype, perms = match.groups()
        letters = _V1_PERMISSIONS.get(perms, perms)
        if not letters or set(letters) - set(_PERMISSIONS) or len(set(letters)) != len(letters):
            raise InvalidInputError(f"scope {word!r}: permissions must be letters of 'cruds'")
        scopes.append(Scope(context, rtype, frozenset(letters)))
    return scopes, others


def parse_fhircast_scopes(text: str) -> list[FhircastScope]:
    """The FHIRcast scopes of a space-separated scope string (FHIRcast 3.0.0 ``2-2``).

    Raises
    ------
    InvalidInputError
        For a ``fhircast/…`` word outside the grammar
        ``fhircast/(event-name|*).(read|write|*)``.
    """
    return [_fhircast_scope(word) for word in text.split() if _is_fhircast(word)]


# --------------------------------------------------------------------------- grants


@dataclass(frozen=True)
class Grant:
    """What one access token allows.

    Attributes
    ----------
    client_id : str
    scopes : tuple of Scope
    patients : frozenset of str or None
        Patient ids the client may see; ``None``: every patient.
    patient : str or None
        The ``patient`` context returned with the token (one pre-authorised patient).
    expires_at : float
        Epoch seconds.
    fhircast : tuple of FhircastScope
        What the token may do on the FHIRcast hub.
    """

    client_id: str
    scopes: tuple[Scope, ...]
    patients: frozenset[str] | None
    patient: str | None = None
    expires_at: float = 0.0
    fhircast: tuple[FhircastScope, ...] = ()

    @property
    def restricted(self) -> bool:
        """Whether the grant is limited to some patients."""
        return self.patients is not None

    def permits(self, resource_type: str, letter: str) -> bool:
        """Whether some scope allows *letter* (``c r u d s``) on *resource_type*."""
        return any(
            letter in s.permissions and s.resource_type in ("*", resource_type) for s in self.scopes
        )

    @property
    def scope_text(self) -> str:
        """The granted scopes (resource, then FHIRcast) as a space-separated string."""
        return " ".join([*(str(s) for s in self.scopes), *(str(s) for s in self.fhircast)])


class TokenStore:
    """Issued access tokens, kept in memory by their SHA-256 (never the token itself).

    Tokens are opaque random strings (256 bits, RFC 6750 §2.1 ``b64token``); a restart
    forgets them all, which is what a sandbox wants.
    """

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()

    def issue(self, grant: Grant) -> str:
        """Store *grant* and return a new token for it."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for key in [k for k, g in self._grants.items() if g.expires_at <= now]:
                del self._grants[key]
            self._grants[self._key(token)] = grant
        return token

    def lookup(self, token: str) -> Grant | None:
        """The grant of an active token, or None (unknown or expired)."""
        with self._lock:
            grant = self._grants.get(self._key(token))
        if grant is None or grant.expires_at <= time.time():
            return None
        return grant

    def __len__(self) -> int:
        return len(self._grants)

    def __repr__(self) -> str:
        return f"TokenStore({len(self)} tokens)"


# --------------------------------------------------------------------------- request access


@dataclass
class RequestAccess:
    """What the guard decided for one request (set on the handler for the hooks).

    Attributes
    ----------
    grant : Grant
    study_uids : frozenset of str or None
        For a restricted grant on the DICOMweb store: the studies it may see.
    """

    grant: Grant
    study_uids: frozenset[str] | None = field(default=None)


def set_access(handler: tornado.web.RequestHandler, access: RequestAccess) -> None:
    """Record what the guard decided for the request *handler* answers."""
    setattr(handler, _ACCESS, access)


def _access(handler: tornado.web.RequestHandler) -> RequestAccess | None:
    access = getattr(handler, _ACCESS, None)
    return access if isinstance(access, RequestAccess) else None


def forbidden(detail: str) -> HTTPProblem:
    """A 403 refusal naming what is not granted."""
    return HTTPProblem(403, detail)


def insufficient_scope(handler: tornado.web.RequestHandler, detail: str) -> HTTPProblem:
    """A 403 whose ``WWW-Authenticate`` says ``insufficient_scope`` (RFC 6750 §3.1)."""
    handler._imagingkit_challenge = (  # type: ignore[attr-defined]
        f'{REALM}, error="insufficient_scope", error_description="{detail}"'
    )
    return HTTPProblem(403, detail)


# --------------------------------------------------------------------------- store hooks


def _patient_ids(values: Iterable[str]) -> set[str]:
    ids = set()
    for value in values:
        for item in value.split(","):
            text = item.strip().rstrip("/")
            if "/_history/" in text:
                text = text.split("/_history/")[0]
            ids.add(text.rsplit("/", 1)[-1] if "/" in text else text)
    return ids


def _check_criterion(criterion: Criterion) -> None:
    """Refuse chains and ``_has`` that could match resources outside the compartment."""
    base = criterion.resource_type
    if criterion.has is not None:
        source, reference, inner = criterion.has
        if not (
            base == "Patient" and source in COMPARTMENT_TYPES and reference.name in _PATIENT_LINKS
        ):
            raise forbidden(
                f"search parameter {criterion.name!r} could match other patients' data; "
                "patient-scoped tokens may use _has only as Patient?_has:Type:patient:…"
            )
        _check_criterion(inner)
    if criterion.chain:
        name = criterion.param.name if criterion.param is not None else ""
        for target, inner in criterion.chain.items():
            own_patient = (
                target == "Patient" and name in _PATIENT_LINKS and base in COMPARTMENT_TYPES
            )
            if not own_patient and target not in PUBLIC_TYPES:
                raise forbidden(
                    f"chained search parameter {criterion.name!r} could match other "
                    "patients' data; patient-scoped tokens may chain only through "
                    "patient/subject or endpoint"
                )
            _check_criterion(inner)


def scope_fhir_search(
    handler: tornado.web.RequestHandler, resource_type: str, params: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Hook of the FHIR search handlers: limit a search to the token's patients.

    Without ``--auth`` (or with an unrestricted grant) *params* come back unchanged.
    Otherwise the search gets ``_id=`` (Patient) or ``patient=`` (compartment types), so
    matches and ``Bundle.total`` only count the compartment; ``_snapshot`` (a paging
    snapshot that may come from another client's search) is dropped; chained and
    ``_has`` parameters that could reach other patients are refused (403), and so is a
    search naming only other patients (SMART Imaging Access: 403, not an empty Bundle).
    """
    access = _access(handler)
    if access is None or not access.grant.restricted:
        return params
    from imagingkit.sandbox.fhir.search import parse_search

    patients = access.grant.patients
    assert patients is not None
    if not patients:
        raise forbidden("this token grants no patient")
    request = parse_search(resource_type, params, strict=False)
    for criterion in request.criteria:
        _check_criterion(criterion)
    named = [
        v
        for k, v in params
        if k in ("patient", "patient:Patient", "subject", "subject:Patient")
        or (resource_type == "Patient" and k == "_id")
    ]
    if named and all(_patient_ids([v]).isdisjoint(patients) for v in named if v):
        raise forbidden("the search names patients this token does not grant")
    kept = [(k, v) for k, v in params if k != "_snapshot"]
    ids = sorted(patients)
    if resource_type == "Patient":
        kept.append(("_id", ",".join(ids)))
    elif resource_type in COMPARTMENT_TYPES:
        kept.append(("patient", ",".join(f"Patient/{p}" for p in ids)))
    return kept


def _patients_of(resource: Mapping[str, Any]) -> set[str]:
    """The Patient ids whose compartment holds *resource* (this store's definition)."""
    from imagingkit.sandbox.fhir.indexing import extract_rows

    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return {str(resource.get("id"))}
    if rtype not in COMPARTMENT_TYPES:
        return set()
    rows = extract_rows(dict(resource))["reference"]
    # (param, grp, target_type, target_id, url, local)
    return {str(r[3]) for r in rows if r[0] == "patient" and r[2] == "Patient" and r[5] == 1}


def _visible_ids(
    storage: Storage, rtype: str, ids: list[str], patients: frozenset[str]
) -> set[str]:
    """Which of *ids* (current resources of *rtype*) are in the patients' compartments."""
    if rtype == "Patient":
        return {i for i in ids if i in patients}
    if rtype in PUBLIC_TYPES:
        return set(ids)
    if rtype not in COMPARTMENT_TYPES:
        return set()
    from imagingkit.sandbox.fhir.search import parse_search
    from imagingkit.sandbox.fhir.searchset import Searcher

    searcher = Searcher(storage)
    refs = ",".join(f"Patient/{p}" for p in sorted(patients))
    visible: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        request = parse_search(rtype, [("_id", ",".join(chunk)), ("patient", refs)], strict=True)
        rids = searcher.match_rids(request)
        visible.update(s.id for s in storage.by_rids(rids).values())
    return visible


def _entry_identity(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    resource = entry.get("resource")
    if resource is None:
        return None
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and full_url.count("/") >= 2:
        named_type, named_id = full_url.rsplit("/", 2)[-2:]  # ``{base}/{type}/{id}``
        return named_type, named_id
    if isinstance(resource, Mapping):
        rtype, rid = resource.get("resourceType"), resource.get("id")
    else:  # RawJSON: the stored text, spliced into the answer unparsed
        parsed = json.loads(resource.text)
        rtype, rid = parsed.get("resourceType"), parsed.get("id")
    return str(rtype), str(rid)


def screen_fhir_body(handler: tornado.web.RequestHandler, body: dict[str, Any] | None) -> Any:
    """Hook of the FHIR store's responses: nothing leaves that the token may not read.

    A single resource outside the grant is refused (403); Bundle entries outside it
    (matches, ``_include``/``_revinclude`` entries) are dropped. Without ``--auth`` the
    body comes back unchanged.
    """
    access = _access(handler)
    if access is None or body is None:
        return body
    grant = access.grant
    rtype = body.get("resourceType")
    if rtype in ("OperationOutcome", "CapabilityStatement"):
        return body
    reading = handler.request.method in ("GET", "HEAD") or handler.request.path.endswith("/_search")
    if not grant.restricted and (not reading or grant.permits("*", "r")):
        return body  # an all-access read, or the answer to a write the guard allowed
    if rtype != "Bundle":
        readable = rtype in PUBLIC_TYPES or grant.permits(str(rtype), "r")
        if not readable:
            raise insufficient_scope(handler, f"the token's scopes do not allow {rtype}.r")
        if grant.restricted and rtype not in PUBLIC_TYPES:
            assert grant.patients is not None
            if _patients_of(body).isdisjoint(grant.patients):
                raise forbidden(f"this token does not grant access to {rtype}/{body.get('id')}")
        return body
    entries = body.get("entry")
    if not entries:
        return body
    if grant.restricted and body.get("type") != "searchset":
        raise forbidden("this Bundle is not available to patient-scoped tokens")
    identities = [_entry_identity(e) for e in entries]
    by_type: dict[str, list[str]] = {}
    for identity in identities:
        if identity is not None:
            by_type.setdefault(identity[0], []).append(identity[1])
    allowed: dict[str, set[str]] = {}
    storage = handler.interactions.storage  # type: ignore[attr-defined]
    for entry_type, ids in by_type.items():
        if entry_type in ("OperationOutcome",):
            allowed[entry_type] = set(ids)
        elif entry_type not in PUBLIC_TYPES and not grant.permits(entry_type, "r"):
            allowed[entry_type] = set()
        elif grant.restricted:
            assert grant.patients is not None
            allowed[entry_type] = _visible_ids(storage, entry_type, ids, grant.patients)
        else:
            allowed[entry_type] = set(ids)
    kept = [
        e
        for e, identity in zip(entries, identities, strict=True)
        if identity is None or identity[1] in allowed.get(identity[0], set())
    ]
    if len(kept) == len(entries):
        return body
    screened = dict(body)
    if kept:
        screened["entry"] = kept
    else:
        screened.pop("entry", None)
    return screened


def qido_filters(handler: tornado.web.RequestHandler) -> list[tuple[str, list[Any]]]:
    """Hook of QIDO-RS: SQL conditions (on the study table alias ``{t}``) to add.

    Empty without ``--auth`` or for an unrestricted grant; otherwise the studies the
    grant may see. A restricted request the guard did not resolve is refused (never
    served unfiltered).
    """
    access = _access(handler)
    if access is None or not access.grant.restricted:
        return []
    if access.study_uids is None:
        raise forbidden("patient scoping of this search could not be resolved")
    uids = sorted(access.study_uids)
    if not uids:
        return [("0 = 1", [])]
    return [(f"{{t}}.study_uid IN ({','.join('?' * len(uids))})", uids)]


def valid_patient_id(value: str) -> bool:
    """Whether *value* is a FHIR id (R4 datatypes ``id``)."""
    return bool(_FHIR_ID_RE.match(value))

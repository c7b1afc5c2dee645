"""Guards in front of the FHIR and DICOMweb stores when the sandbox runs with ``--auth``.

:func:`protect` wraps each store in a :class:`Protected` component whose every handler
first asks a guard (:class:`FhirGuard`, :class:`DicomWebGuard`): the guard authenticates
the bearer token (401 with an RFC 6750 §3 challenge otherwise), checks that the grant's
scopes cover the interaction (403 ``insufficient_scope``), refuses patient-scoped grants
anything but reads and searches, and — on DICOMweb — resolves which studies a
patient-scoped grant may see (:class:`StudyOwnership`), refusing any path that names
another study. What the stores then answer is scoped by the hooks of
:mod:`imagingkit.sandbox.authz`, which also defines the grants and the compartment rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import tornado.ioloop
import tornado.web

from imagingkit.sandbox.authz import (
    COMPARTMENT_TYPES,
    PUBLIC_TYPES,
    REALM,
    Grant,
    RequestAccess,
    TokenStore,
    forbidden,
    insufficient_scope,
    set_access,
)
from imagingkit.server.app import Component, RouteList
from imagingkit.server.base import HTTPProblem

if TYPE_CHECKING:
    from imagingkit.sandbox.fhir.storage import Storage

__all__ = ["DicomWebGuard", "FhirGuard", "Protected", "StudyOwnership", "protect"]

# --------------------------------------------------------------------------- study ownership


class StudyOwnership:
    """Which DICOM studies belong to which Patients, read from the FHIR store.

    A study belongs to Patient X when an ImagingStudy with identifier
    ``urn:dicom:uid|urn:oid:<StudyInstanceUID>`` has the subject ``Patient/X`` (SMART
    Imaging Access ``SmartImagingStudy``). It reads the store's search index directly
    (one indexed query, no resource parsed), so it costs well under a millisecond.

    Parameters
    ----------
    storage : Storage
        The FHIR store's storage (``FhirStore.storage``).
    """

    _SQL = (
        "SELECT DISTINCT t.code FROM idx_token t "
        "JOIN idx_reference r ON r.rid = t.rid "
        "JOIN resource res ON res.rid = t.rid "
        "WHERE t.type = 'ImagingStudy' AND t.param = 'identifier' AND t.system = 'urn:dicom:uid' "
        "AND r.type = 'ImagingStudy' AND r.param = 'patient' AND r.target_type = 'Patient' "
        "AND r.local = 1 AND res.deleted = 0 AND r.target_id IN ({marks})"
    )

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def studies_of(self, patients: Iterable[str]) -> frozenset[str]:
        """Return the Study Instance UIDs of the ImagingStudies of *patients*."""
        ids = sorted(set(patients))
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = self._SQL.format(marks=",".join("?" * len(chunk)))
            for (code,) in self.storage.query(sql, chunk):
                text = str(code)
                found.add(text[8:] if text.startswith("urn:oid:") else text)
        return frozenset(found)


# --------------------------------------------------------------------------- guards


class _Guard:
    """Authenticates a request and checks what its grant allows (one per store)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    def authenticate(self, handler: tornado.web.RequestHandler) -> Grant:
        """Return the grant of the request's bearer token (401 without a valid one)."""
        header = handler.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if not header:
            handler._imagingkit_challenge = REALM  # type: ignore[attr-defined]
            raise HTTPProblem(401, "this server needs a bearer token (SMART Backend Services)")
        if scheme.lower() != "bearer" or not token:
            handler._imagingkit_challenge = (  # type: ignore[attr-defined]
                f'{REALM}, error="invalid_request", '
                'error_description="use Authorization: Bearer <token>"'
            )
            raise HTTPProblem(401, "only bearer tokens are accepted (RFC 6750 §2.1)")
        grant = self.tokens.lookup(token)
        if grant is None:
            handler._imagingkit_challenge = (  # type: ignore[attr-defined]
                f'{REALM}, error="invalid_token", '
                'error_description="the token is unknown or expired"'
            )
            raise HTTPProblem(401, "the bearer token is unknown or expired; get a new one")
        return grant

    async def admit(self, handler: tornado.web.RequestHandler, prefix: str) -> None:
        """Raise an HTTPProblem unless the request may go on; record its access."""
        raise NotImplementedError


def _relative_path(handler: tornado.web.RequestHandler, prefix: str) -> str:
    path = unquote(handler.request.path)
    return path[len(prefix) :] if path.startswith(prefix) else path


_T = r"([A-Z][A-Za-z]+)"
_I = r"([^/]+)"
_FHIR_PATHS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/?$"), "root"),
    (re.compile(r"^/metadata$"), "metadata"),
    (re.compile(r"^/_history$"), "history"),
    (re.compile(r"^/_search$"), "system-search"),
    (re.compile(rf"^/{_T}/?$"), "type"),
    (re.compile(rf"^/{_T}/_search$"), "search"),
    (re.compile(rf"^/{_T}/_history$"), "history"),
    (re.compile(rf"^/{_T}/{_I}/_history$"), "history"),
    (re.compile(rf"^/{_T}/{_I}/_history/{_I}$"), "vread"),
    (re.compile(rf"^/{_T}/{_I}$"), "instance"),
]
_WRITE_LETTER = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}


class FhirGuard(_Guard):
    """The guard of the FHIR store (see the module docstring)."""

    async def admit(self, handler: tornado.web.RequestHandler, prefix: str) -> None:
        path = _relative_path(handler, prefix)
        kind: str = "other"
        groups: tuple[str, ...] = ()
        for pattern, name in _FHIR_PATHS:
            match = pattern.match(path)
            if match:
                kind, groups = name, match.groups()
                break
        method = handler.request.method or "GET"
        if kind == "metadata":
            return  # the CapabilityStatement is public (SMART discovery)
        grant = self.authenticate(handler)
        set_access(handler, RequestAccess(grant))
        if (kind == "root" and method == "GET") or kind == "system-search":
            # R4 search §3.1.1.3 system search: every searched type needs the search scope
            if grant.restricted:
                raise forbidden("system search is not available to patient-scoped tokens")
            named = ",".join(handler.get_arguments("_type")).split(",")
            for rtype in [t for t in named if t.strip()] or ["*"]:
                if not grant.permits(rtype.strip(), "s"):
                    raise insufficient_scope(
                        handler, f"the token's scopes do not allow {rtype.strip()}.s"
                    )
            return
        rtype = groups[0] if groups else "*"
        reading = method in ("GET", "HEAD") or kind == "search"
        if grant.restricted:
            # a 304 would confirm another patient's version without the body check
            handler.request.headers.pop("If-None-Match", None)
        if kind in ("type", "instance", "vread", "search") and reading:
            letter = "s" if kind in ("type", "search") else "r"
            if rtype not in PUBLIC_TYPES and not grant.permits(rtype, letter):
                raise insufficient_scope(
                    handler, f"the token's scopes do not allow {rtype}.{letter}"
                )
            if grant.restricted and rtype not in PUBLIC_TYPES | COMPARTMENT_TYPES | {"Patient"}:
                raise forbidden(f"{rtype} resources are not available to patient-scoped tokens")
            return
        if grant.restricted:
            raise forbidden(
                f"{method} {kind} interactions are not available to patient-scoped tokens "
                "(they may only read and search their patients' compartments)"
            )
        if kind == "history" and reading:
            if not grant.permits(rtype, "r"):
                raise insufficient_scope(handler, f"the token's scopes do not allow {rtype}.r")
            return
        letters = {"root": "cud"}.get(kind, _WRITE_LETTER.get(method, "r"))
        if not all(grant.permits(rtype, letter) for letter in letters):
            raise insufficient_scope(
                handler, f"the token's scopes do not allow {method} on {rtype} ({letters})"
            )


_STUDY_PATH = re.compile(r"^/studies/([^/]+)(/.*)?$")
_NESTED_QIDO = re.compile(r"^/(series|instances|series/[^/]+/instances)/?$")
_QIDO_ROOTS = {"/studies", "/studies/", "/series", "/series/", "/instances", "/instances/"}


class DicomWebGuard(_Guard):
    """The guard of the DICOMweb store (see the module docstring).

    Parameters
    ----------
    tokens : TokenStore
    ownership : StudyOwnership
    """

    def __init__(self, tokens: TokenStore, ownership: StudyOwnership) -> None:
        super().__init__(tokens)
        self.ownership = ownership

    async def admit(self, handler: tornado.web.RequestHandler, prefix: str) -> None:
        grant = self.authenticate(handler)
        access = RequestAccess(grant)
        set_access(handler, access)
        path = _relative_path(handler, prefix)
        method = handler.request.method or "GET"
        study = _STUDY_PATH.match(path)
        if method == "POST":  # STOW-RS
            if grant.restricted or not grant.permits("ImagingStudy", "c"):
                raise insufficient_scope(
                    handler, "storing instances needs an unrestricted ImagingStudy.c scope"
                )
            return
        if method not in ("GET", "HEAD"):
            if grant.restricted or not grant.permits(
                "ImagingStudy", _WRITE_LETTER.get(method, "d")
            ):
                raise forbidden(f"{method} is not available to this token")
            return
        nested_search = study is not None and bool(_NESTED_QIDO.match(study.group(2) or ""))
        searching = path in _QIDO_ROOTS or nested_search
        letter = "s" if searching else "r"
        if not grant.permits("ImagingStudy", letter):
            raise insufficient_scope(
                handler, f"DICOMweb needs a scope allowing ImagingStudy.{letter}"
            )
        if not grant.restricted:
            return
        if path not in _QIDO_ROOTS and study is None:
            raise forbidden("this DICOMweb resource is not available to patient-scoped tokens")
        assert grant.patients is not None
        loop = tornado.ioloop.IOLoop.current()
        access.study_uids = await loop.run_in_executor(
            None, self.ownership.studies_of, grant.patients
        )
        if study is not None and study.group(1) not in access.study_uids:
            raise forbidden(f"this token does not grant access to study {study.group(1)}")


def _guarded(
    handler_class: type[tornado.web.RequestHandler], guard: _Guard, prefix: str
) -> type[tornado.web.RequestHandler]:
    """A subclass of *handler_class* whose ``prepare`` first asks *guard*."""

    class Guarded(handler_class):  # type: ignore[valid-type,misc]
        async def prepare(self) -> None:
            if getattr(self, "authenticates_itself", False):
                # a websocket: its credentials come in its own messages (binding tokens)
                self.imagingkit_guard = guard
            elif self.request.method != "OPTIONS":  # CORS preflights carry no credentials
                await guard.admit(self, prefix)
            parent = super().prepare()
            if parent is not None:
                await parent

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            challenge = getattr(self, "_imagingkit_challenge", None)
            if challenge and status_code in (401, 403):
                self.set_header("WWW-Authenticate", challenge)
            super().write_error(status_code, **kwargs)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{handler_class.__name__}"
    return Guarded


class Protected:
    """A component whose every route first passes a guard (the stores under ``--auth``).

    Attribute access other than :meth:`routes` and :meth:`close` goes to the wrapped
    component, so ``protected.index`` or ``protected.storage`` still work.
    """

    def __init__(self, inner: Component, guard: _Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.mount = inner.mount

    def routes(self, prefix: str) -> RouteList:
        """The wrapped component's routes, each handler guarded."""
        made: dict[type[tornado.web.RequestHandler], type[tornado.web.RequestHandler]] = {}
        rules: RouteList = []
        for pattern, handler_class, kwargs in self.inner.routes(prefix):
            if handler_class not in made:
                made[handler_class] = _guarded(handler_class, self.guard, prefix.rstrip("/"))
            rules.append((pattern, made[handler_class], kwargs))
        return rules

    def close(self) -> None:
        """Close the wrapped component."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def protect(components: Sequence[Component], tokens: TokenStore) -> list[Component]:
    """Guard the FHIR and DICOMweb stores among *components*; others are left as they are.

    Parameters
    ----------
    components : sequence of Component
    tokens : TokenStore
        Where the token endpoint keeps the grants.

    Raises
    ------
    SandboxError
        If patient scoping of DICOMweb cannot work (no FHIR store to read owners from).
    """
    from imagingkit.errors import SandboxError
    from imagingkit.sandbox.dicomweb_store import DicomWebStore
    from imagingkit.sandbox.fhir.store import FhirStore

    fhir = [c for c in components if isinstance(c, FhirStore)]
    out: list[Component] = []
    for component in components:
        if isinstance(component, FhirStore):
            out.append(Protected(component, FhirGuard(tokens)))
        elif isinstance(component, DicomWebStore):
            if not fhir:
                raise SandboxError("--auth needs the FHIR store to know who owns each study")
            guard = DicomWebGuard(tokens, StudyOwnership(fhir[0].storage))
            out.append(Protected(component, guard))
        else:
            out.append(component)
    return out

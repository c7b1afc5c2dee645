"""Instance interactions: read, vread, create, update, delete (FHIR R4 http §3.1.0).

Rules implemented here:

- create (§3.1.0.6) ignores a client ``id`` and assigns a UUID; update (§3.1.0.4) needs a
  body ``id`` equal to the URL id and creates the resource if it does not exist
  (create-on-update with a client id, answering 201);
- versions are ``1, 2, 3 …`` in ``meta.versionId``; ETag ``W/"n"``; ``If-Match`` with any
  other version answers 412 (§3.1.0.4.2, managing resource contention);
- an update that changes nothing but ``meta.versionId``/``meta.lastUpdated`` keeps the
  current version (no new history entry), so re-running a loader is idempotent;
- read of a deleted resource answers 410 Gone, of an unknown one 404 (§3.1.0.2);
- referential integrity: a relative reference ``Type/id`` to a type this store serves must
  name a resource that exists (or is written in the same transaction); otherwise the
  write is refused with 400 naming the element. References to other types (Practitioner,
  ServiceRequest …) and absolute URLs are kept as they are.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from imagingkit.errors import InvalidInputError
from imagingkit.sandbox.fhir.outcome import fhir_error
from imagingkit.sandbox.fhir.references import check_id, iter_references, parse_reference
from imagingkit.sandbox.fhir.searchparams import RESOURCE_TYPES
from imagingkit.sandbox.fhir.storage import Storage, Stored

__all__ = ["Repository", "check_type", "parse_etag", "validate_resource"]


def check_type(type_: str) -> str:
    """Return *type_* if the store serves it, else raise a 404 FHIRError."""
    if type_ not in RESOURCE_TYPES:
        raise fhir_error(
            404,
            f"resource type {type_!r} is not supported here (supported: "
            f"{', '.join(RESOURCE_TYPES)})",
        )
    return type_


def validate_resource(resource: Any, expected_type: str | None = None) -> dict[str, Any]:
    """Check the envelope of a resource body and return it.

    Parameters
    ----------
    resource : Any
        Parsed JSON.
    expected_type : str, optional
        The type named by the URL; the body's ``resourceType`` must equal it.

    Raises
    ------
    InvalidInputError
        Not a JSON object, no ``resourceType``, a type not matching the URL, a malformed
        ``id`` or ``meta``.
    FHIRError
        404 if the type is not served here.
    """
    if not isinstance(resource, dict):
        raise InvalidInputError("the request body must be a JSON object (a FHIR resource)")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InvalidInputError("the resource has no resourceType")
    if expected_type is not None and rtype != expected_type:
        raise InvalidInputError(
            f"resourceType {rtype!r} does not match the type {expected_type!r} in the URL"
        )
    check_type(rtype)
    if "id" in resource:
        check_id(resource["id"], what=f"{rtype}.id")
    meta = resource.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInputError(f"{rtype}.meta must be an object, not {type(meta).__name__}")
    return resource


def parse_etag(value: str) -> int:
    """Return the version number of an ``If-Match`` / ETag value (``W/"3"``, ``"3"``, ``3``)."""
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise InvalidInputError(f'If-Match value {value!r} is not a version ETag like W/"1"')
    return int(text)


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the server-managed meta fields (for no-op detection)."""
    out = dict(resource)
    meta = dict(out.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out


class Repository:
    """Instance interactions over a :class:`.storage.Storage`.

    Parameters
    ----------
    storage : Storage
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def read(self, type_: str, id_: str) -> Stored:
        """Return the current version (R4 http §3.1.0.2); 404 unknown, 410 deleted."""
        check_type(type_)
        stored = self.storage.current(type_, id_)
        if stored is None:
            raise fhir_error(404, f"{type_}/{id_} is not known")
        if stored.deleted:
            raise fhir_error(410, f"{type_}/{id_} was deleted (version {stored.version})")
        return stored

    def vread(self, type_: str, id_: str, version: str) -> Stored:
        """Return one version (R4 http §3.1.0.3); 404 unknown, 410 for a deletion."""
        check_type(type_)
        if not version.isdigit():
            raise fhir_error(404, f"{type_}/{id_} has no version {version!r}")
        stored = self.storage.version(type_, id_, int(version))
        if stored is None:
            raise fhir_error(404, f"{type_}/{id_} has no version {version!r}")
        if stored.deleted:
            raise fhir_error(410, f"{type_}/{id_} version {version} is a deletion")
        return stored

    def check_references(
        self,
        resource: dict[str, Any],
        *,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
    ) -> None:
        """Refuse a relative reference to a served type that names no live resource.

        Parameters
        ----------
        resource : dict
        pending : collection of str
            ``Type/id`` written by the same transaction (they count as existing).
        removed : collection of str
            ``Type/id`` deleted by the same transaction (they count as missing).

        Raises
        ------
        InvalidInputError
            Naming the element path and the dangling reference.
        """
        rtype = resource["resourceType"]
        for path, ref_value in iter_references(resource, rtype):
            text = ref_value["reference"]
            if text.startswith("urn:uuid:") or text.startswith("urn:oid:"):
                raise InvalidInputError(
                    f"{path} refers to {text!r}, which is not the fullUrl of any entry of "
                    "the Bundle"
                )
            ref = parse_reference(text)
            if not ref.is_local or ref.type not in RESOURCE_TYPES:
                continue
            key = f"{ref.type}/{ref.id}"
            if key in removed:
                exists = False
            elif key in pending:
                exists = True
            else:
                exists = self.storage.exists(ref.type, ref.id or "")
            if not exists:
                raise InvalidInputError(
                    f"{path} refers to {text!r}, which does not exist on this server"
                )

    def create(
        self,
        resource: dict[str, Any],
        *,
        id_: str | None = None,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
    ) -> Stored:
        """Store *resource* under a new server-assigned id (R4 http §3.1.0.6).

        A client ``id`` in the body is ignored; *id_* lets a transaction pass the id it
        assigned in advance (to resolve ``urn:uuid`` references).
        """
        validate_resource(resource)
        resource["id"] = id_ or str(uuid.uuid4())
        with self.storage.transaction():
            self.check_references(resource, pending=pending, removed=removed)
            return self.storage.write(resource, "POST")

    def update(
        self,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        *,
        if_match: str | None = None,
        pending: Collection[str] = (),
        removed: Collection[str] = (),
        method: str = "PUT",
    ) -> tuple[Stored, bool]:
        """Update or create ``type_/id_`` with *resource* (R4 http §3.1.0.4).

        *method* is recorded in the history (``PATCH`` for R4 http.html "patch", which
        processes the patched resource as an update).

        Returns
        -------
        tuple
            ``(stored version, created)``; *created* is True when the resource did not
            exist (or was deleted) before.

        Raises
        ------
        InvalidInputError
            Body id missing or not equal to *id_*, or a dangling reference.
        FHIRError
            412 if *if_match* names another version than the current one.
        """
        check_type(type_)
        check_id(id_, what=f"{type_} id in the URL")
        validate_resource(resource, type_)
        if "id" not in resource:
            raise InvalidInputError(f"the {type_} body has no id; an update needs id {id_!r}")
        if resource["id"] != id_:
            raise InvalidInputError(
                f"the body id {resource['id']!r} does not match the id {id_!r} in the URL"
            )
        with self.storage.transaction():
            current = self.storage.current(type_, id_)
            live = current is not None and not current.deleted
            if if_match is not None:
                wanted = parse_etag(if_match)
                if not live or current is None or current.version != wanted:
                    have = f"version {current.version}" if live and current else "no resource"
                    raise fhir_error(412, f"If-Match {if_match!r} failed: {type_}/{id_} has {have}")
            self.check_references(resource, pending=pending, removed=removed)
            if live and current is not None and _content(current.resource()) == _content(resource):
                return current, False
            return self.storage.write(resource, method), not live

    def delete(self, type_: str, id_: str, *, if_match: str | None = None) -> Stored | None:
        """Delete ``type_/id_`` (R4 http §3.1.0.7); deleting an absent resource is a no-op."""
        check_type(type_)
        with self.storage.transaction():
            if if_match is not None:
                current = self.storage.current(type_, id_)
                if current is None or current.deleted or current.version != parse_etag(if_match):
                    raise fhir_error(412, f"If-Match {if_match!r} failed for {type_}/{id_}")
            return self.storage.delete(type_, id_)

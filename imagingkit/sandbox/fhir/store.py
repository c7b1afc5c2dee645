"""The embedded FHIR R4 store as an app component (DESIGN.md D3, D4; FHIR R4 http §3.1.0).

:class:`FhirStore` is mounted at ``{base_url}fhir`` next to the DICOMweb store. Loaders in
the same process use its Python API, which has the same semantics as the REST API
(a :meth:`FhirStore.transaction` is the same as POSTing the Bundle to ``/fhir``).

Endpoint addresses: store ``"address": "urn:imagingkit:dicomweb-base"`` and every response
renders it as the DICOMweb base URL of the app as the client reached it (see
:mod:`.representation`).

FHIR Subscriptions (R4 legacy and Backport topic-based, websocket and rest-hook) are
served by :attr:`FhirStore.subscriptions` (:mod:`.subscriptions`): every write, whatever
its path, is matched after it commits.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imagingkit.config import Settings
from imagingkit.sandbox.fhir.bundle import process_bundle
from imagingkit.sandbox.fhir.handlers import fhir_routes
from imagingkit.sandbox.fhir.interactions import Interactions
from imagingkit.sandbox.fhir.repository import validate_resource
from imagingkit.sandbox.fhir.representation import BaseUrls
from imagingkit.sandbox.fhir.storage import Storage
from imagingkit.sandbox.fhir.subscriptions.routes import observing, subscription_routes
from imagingkit.sandbox.fhir.subscriptions.service import SubscriptionService
from imagingkit.server.app import RouteList

__all__ = ["FhirStore"]


class FhirStore:
    """A FHIR R4 server over one SQLite file.

    Parameters
    ----------
    db_path : Path
        The database file (created if missing).
    settings : Settings
        imagingkit settings.

    Examples
    --------
    >>> store = FhirStore.for_data_dir(tmp_path, "sandbox", settings=Settings())  # doctest: +SKIP
    >>> store.upsert({"resourceType": "Patient", "id": "p1", "gender": "female"})  # doctest: +SKIP
    >>> store.search("Patient", [("gender", "female")], base_url="http://h/fhir")  # doctest: +SKIP
    """

    #: Mounted at ``{base_url}fhir`` (DESIGN.md D3).
    mount = "fhir"

    def __init__(self, db_path: Path, *, settings: Settings) -> None:
        self.settings = settings
        self.db_path = Path(db_path)
        self.storage = Storage(self.db_path)
        self.interactions = Interactions(self.storage)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagingkit-fhir")
        #: Subscriptions: lifecycle, change detection, websocket and rest-hook delivery
        self.subscriptions = SubscriptionService(self.storage, self._executor, mount=self.mount)

    @classmethod
    def for_data_dir(cls, data_dir: Path, name: str, *, settings: Settings) -> FhirStore:
        """Open (or create) the store ``{data_dir}/fhir/{name}.sqlite``."""
        return cls(Path(data_dir) / "fhir" / f"{name}.sqlite", settings=settings)

    def routes(self, prefix: str) -> RouteList:
        """Tornado rules serving the REST API below *prefix* (``{base_url}fhir``)."""
        kwargs = {
            "interactions": self.interactions,
            "executor": self._executor,
            "prefix": prefix,
            "mount": self.mount,
        }
        return [
            *subscription_routes(prefix, self.subscriptions, kwargs),
            *observing(
                fhir_routes(prefix, self.interactions, self._executor, self.mount),
                self.subscriptions,
            ),
        ]

    # -- in-process API -----------------------------------------------------------------

    def _urls(self, base_url: str | None) -> BaseUrls | None:
        return BaseUrls.from_fhir_base(base_url, self.mount) if base_url else None

    def transaction(self, bundle: dict[str, Any], *, base_url: str | None = None) -> dict[str, Any]:
        """Process a transaction or batch Bundle, as ``POST [base]`` would (R4 http §3.1.0.11).

        Parameters
        ----------
        bundle : dict
            ``Bundle.type`` ``transaction`` (atomic) or ``batch``.
        base_url : str, optional
            The FHIR base URL to render ``fullUrl`` and Endpoint addresses against; without
            it responses keep stored forms (placeholders, no ``fullUrl``).

        Returns
        -------
        dict
            The ``transaction-response`` / ``batch-response`` Bundle.

        Raises
        ------
        InvalidInputError, FHIRError
            For a transaction, the first failing entry's error (nothing is written).
        """
        return process_bundle(self.interactions, bundle, self._urls(base_url))

    def upsert(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create or update *resource* under its own ``id`` and return it as stored.

        Same rules as ``PUT [type]/[id]`` (R4 http §3.1.0.4): references to served types
        must exist; an unchanged resource keeps its version. For resources that refer
        to each other in a cycle, use :meth:`transaction` with ``PUT`` entries.
        """
        resource = validate_resource(dict(resource))
        if "id" not in resource:
            from imagingkit.errors import InvalidInputError

            raise InvalidInputError(f"upsert needs a {resource['resourceType']} with an id")
        response = self.interactions.update(
            resource["resourceType"], resource["id"], resource, None
        )
        assert response.body is not None
        return response.body

    def patch(
        self,
        type_: str,
        id_: str,
        operations: list[dict[str, Any]],
        *,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Apply a JSON Patch to ``type_/id_`` as ``PATCH [type]/[id]`` would (R4 http.html
        "patch", RFC 6902) and return the resource as stored.

        Raises
        ------
        InvalidInputError
            A malformed patch, or a result that is not a valid update (400).
        FHIRError
            404/410 for an unknown or deleted resource, 412 if *if_match* names another
            version, 422 if an operation cannot be applied or a ``test`` fails.
        """
        body = self.interactions.patch(type_, id_, operations, None, if_match=if_match).body
        assert body is not None
        return body

    def read(self, type_: str, id_: str, *, base_url: str | None = None) -> dict[str, Any]:
        """Return the current version of ``type_/id_`` (404/410 as FHIRError)."""
        body = self.interactions.read(type_, id_, self._urls(base_url)).body
        assert body is not None
        return body

    def search(
        self,
        type_: str,
        params: list[tuple[str, str]],
        *,
        base_url: str,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Run a search and return the searchset Bundle (first page unless paging params).

        Parameters
        ----------
        type_ : str
            Resource type.
        params : list of (str, str)
            Search parameters as in a query string, e.g.
            ``[("modality", "CT"), ("_count", "50")]``.
        base_url : str
            The FHIR base URL used in ``fullUrl``, links and Endpoint addresses.
        strict : bool
            Refuse unknown parameters (``Prefer: handling=strict``).
        """
        body = self.interactions.search(
            type_, params, BaseUrls.from_fhir_base(base_url), strict=strict
        ).body
        assert body is not None
        return body

    def close(self) -> None:
        """Stop Subscription deliveries and the worker thread, then close the database."""
        self.subscriptions.close()
        self._executor.shutdown(wait=True)
        self.storage.close()

"""The Imaging Bridge: one API over FHIR metadata and DICOMweb pixels (issue 4).

>>> import imagingkit                                                  # doctest: +SKIP
>>> bridge = imagingkit.connect(fhir="http://127.0.0.1:8042/fhir")
>>> df = bridge.cohort().imaging(modality="CT").studies()               # one row per series
>>> df.imaging.volume()                                                 # pixels via DICOMweb

Only this layer knows both sides (DESIGN.md layers): it turns each ImagingStudy's
Endpoint into a DICOMweb location (:mod:`imagingkit.fhir.endpoints`), fills in series and
instances by QIDO-RS when an ImagingStudy lacks them, hands the right credentials to the
DICOMweb client (:meth:`imagingkit.auth.AuthMap.for_endpoint`: SMART Imaging Access
rules, never across origins) and writes the provenance from which a DataFrame can be
pulled again (:func:`from_provenance`).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from imagingkit import __version__
from imagingkit.auth import AuthMap, Credential
from imagingkit.config import Settings, get_settings
from imagingkit.errors import ConfigError, InvalidInputError, redact_url

if TYPE_CHECKING:
    import pandas as pd

    from imagingkit.dicomweb.client import DicomWebClient
    from imagingkit.fhir.capabilities import Capabilities
    from imagingkit.fhir.client import FhirClient
    from imagingkit.fhir.cohort import Cohort
    from imagingkit.subscriptions.live import LiveFrame

__all__ = ["PROVENANCE_FORMAT", "Bridge", "connect", "from_provenance", "live_bridge"]

#: The ``format`` of ``df.attrs["imagingkit"]``.
PROVENANCE_FORMAT = "imagingkit.cohort/1"
Joins = Literal["auto", "client"]


#: The bridges of this process by session id (and the latest by FHIR base): a frame's
#: provenance names the session that made it, so ``df.imaging`` uses that bridge's
#: credentials without the frame holding any. Kept alive on purpose: a frame often
#: outlives the ``connect(...)`` expression that made it.
_SESSIONS: dict[str, Bridge] = {}
_LATEST: dict[str, Bridge] = {}


def live_bridge(provenance: Mapping[str, Any] | str | None) -> Bridge | None:
    """The bridge that made a frame (from its provenance), else the latest to its server."""
    if isinstance(provenance, Mapping):
        found = _SESSIONS.get(str(provenance.get("session")))
        if found is not None:
            return found
        provenance = provenance.get("fhir")
    return _LATEST.get(provenance) if isinstance(provenance, str) else None


def _auth_map(auth: Any, fhir: str) -> AuthMap:
    if auth is None:
        return AuthMap()
    if isinstance(auth, AuthMap):
        return auth
    if isinstance(auth, Mapping):
        return AuthMap(auth)
    if isinstance(auth, Credential):
        return AuthMap({fhir: auth})
    raise ConfigError(
        f"auth must be an AuthMap, a {{url: credential}} mapping or a credential, "
        f"not {type(auth).__name__}"
    )


class Bridge:
    """FHIR + DICOMweb behind one object; build it with :func:`connect`.

    Parameters
    ----------
    fhir : str
        FHIR R4 base URL.
    dicomweb : str or mapping, optional
        A DICOMweb base URL to use for every study (overrides the Endpoints), or a
        mapping resolving MADO placeholders (RetrieveLocationUID or placeholder address →
        base URL; ``"*"``: the fallback for studies without a usable Endpoint). Without
        it, each ImagingStudy's Endpoint decides.
    auth : AuthMap, mapping, or Credential, optional
        Credentials per origin; a single credential is bound to the FHIR server's origin.
    settings : Settings, optional
    joins : {"auto", "client"}
        ``"auto"`` pushes criteria to the server where its CapabilityStatement allows;
        ``"client"`` makes every join on the client (same result, more requests).
    fill_in : bool
        Query QIDO-RS for series/instances an ImagingStudy does not list.
    """

    def __init__(
        self,
        fhir: str,
        *,
        dicomweb: str | Mapping[str, str] | None = None,
        auth: AuthMap | Mapping[str, Credential] | Credential | None = None,
        settings: Settings | None = None,
        joins: Joins = "auto",
        fill_in: bool = True,
    ) -> None:
        from imagingkit.fhir.client import FhirClient

        if joins not in ("auto", "client"):
            raise ConfigError(f"joins={joins!r} is not 'auto' or 'client'")
        self.settings = settings or get_settings()
        self.auth = _auth_map(auth, fhir)
        self.fhir: FhirClient = FhirClient(fhir, auth=self.auth, settings=self.settings)
        if isinstance(dicomweb, str):
            dicomweb = dicomweb.rstrip("/")
        elif dicomweb is not None and not isinstance(dicomweb, Mapping):
            raise ConfigError(f"dicomweb must be a URL or a mapping, not {type(dicomweb).__name__}")
        self.dicomweb = dicomweb
        self.joins: Joins = joins
        self.fill_in_enabled = fill_in
        self._dicomweb_clients: dict[tuple[str, bool | None], DicomWebClient] = {}
        self._lock = threading.Lock()
        self.session_id = uuid.uuid4().hex
        _SESSIONS[self.session_id] = self
        _LATEST[redact_url(self.fhir.url) or self.fhir.url] = self

    def __repr__(self) -> str:
        return f"Bridge(fhir={self.fhir.url!r}, dicomweb={self.dicomweb!r}, joins={self.joins!r})"

    # -- FHIR side ----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """The FHIR server's search abilities as the planner uses them."""
        from imagingkit.fhir.cohort import forced_client_joins

        caps = self.fhir.capabilities()
        return forced_client_joins(caps) if self.joins == "client" else caps

    def cohort(self) -> Cohort:
        """An empty cohort (every patient) to narrow with criteria."""
        from imagingkit.fhir.cohort import Cohort

        return Cohort(self)

    def watch(
        self, query: Cohort | None = None, *, level: str = "series", **options: Any
    ) -> LiveFrame:
        """A live DataFrame of *query* kept current by a FHIR Subscription (issue 6).

        *query* is a :class:`Cohort` of this bridge (default: every study); *options* go to
        :class:`~imagingkit.subscriptions.live.LiveFrame`. See :mod:`imagingkit.subscriptions`.
        """
        from imagingkit.subscriptions.live import LiveFrame

        cohort = self.cohort() if query is None else query
        if getattr(cohort, "bridge", None) is not self:
            raise InvalidInputError("watch() takes a cohort built with this bridge's cohort()")
        return LiveFrame(cohort, level=level, **options)

    # -- DICOMweb side ------------------------------------------------------------------

    def dicomweb_client(
        self, base: str, *, requires_access_token: bool | None = None
    ) -> DicomWebClient:
        """The DICOMweb client for one service base (one per base, reused).

        Credentials follow :meth:`AuthMap.for_endpoint` (SMART Imaging Access:
        ``requires-access-token = false`` means none; never to another origin unless
        mapped for it).
        """
        from imagingkit.dicomweb.client import DicomWebClient

        key = (base, requires_access_token)
        with self._lock:
            client = self._dicomweb_clients.get(key)
            if client is None:
                auth = self.auth.for_endpoint(
                    base, self.fhir.url, requires_access_token=requires_access_token
                )
                client = DicomWebClient(base, auth=auth, settings=self.settings)
                self._dicomweb_clients[key] = client
            return client

    @property
    def dicomweb_client_factory(self) -> Any:
        """The factory QIDO fill-in uses, or None when fill-in is off."""
        return self.dicomweb_client if self.fill_in_enabled else None

    # -- provenance ---------------------------------------------------------------------

    def provenance(
        self, cohort: Cohort, kind: str, level: str | None, **extra: Any
    ) -> dict[str, Any]:
        """``df.attrs["imagingkit"]``: what was asked of which servers, and when.

        Holds no credential (DESIGN.md D7): URLs are redacted, the auth is not recorded.
        """
        dicomweb: Any = self.dicomweb
        if isinstance(dicomweb, Mapping):
            dicomweb = {k: redact_url(v) for k, v in dicomweb.items()}
        elif isinstance(dicomweb, str):
            dicomweb = redact_url(dicomweb)
        return {
            "format": PROVENANCE_FORMAT,
            "kind": kind,
            "level": level,
            "fhir": redact_url(self.fhir.url),
            "dicomweb": dicomweb,
            "criteria": cohort.to_dict(),
            "joins": self.joins,
            "retrieved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "imagingkit": __version__,
            "session": self.session_id,
            **extra,
        }

    def close(self) -> None:
        """Close the FHIR session and every DICOMweb client."""
        self.fhir.close()
        for client in self._dicomweb_clients.values():
            client.close()


def connect(
    fhir: str | None = None,
    dicomweb: str | Mapping[str, str] | None = None,
    auth: AuthMap | Mapping[str, Credential] | Credential | None = None,
    *,
    settings: Settings | None = None,
    joins: Joins = "auto",
    fill_in: bool = True,
) -> Bridge:
    """Connect to a FHIR server (and its DICOMweb servers) and return a :class:`Bridge`.

    Parameters
    ----------
    fhir : str, optional
        FHIR R4 base URL; default ``$IMAGINGKIT_FHIR_URL``.
    dicomweb, auth, settings, joins, fill_in
        See :class:`Bridge`.

    Raises
    ------
    ConfigError
        If no FHIR URL is given or set.
    """
    url = fhir or os.environ.get("IMAGINGKIT_FHIR_URL")
    if not url:
        raise ConfigError("no FHIR server: pass fhir=... or set IMAGINGKIT_FHIR_URL")
    return Bridge(
        url, dicomweb=dicomweb, auth=auth, settings=settings, joins=joins, fill_in=fill_in
    )


def from_provenance(
    provenance: Mapping[str, Any],
    *,
    auth: AuthMap | Mapping[str, Credential] | Credential | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Pull the same cohort again from ``df.attrs["imagingkit"]``.

    Credentials are never stored in provenance: pass *auth* again if the servers need it.

    Raises
    ------
    InvalidInputError
        If *provenance* is not imagingkit cohort provenance.
    """
    if not isinstance(provenance, Mapping) or provenance.get("format") != PROVENANCE_FORMAT:
        raise InvalidInputError(
            f"not imagingkit cohort provenance (expected format {PROVENANCE_FORMAT!r}): "
            f"{str(provenance)[:200]}"
        )
    try:
        fhir = provenance["fhir"]
        criteria = provenance["criteria"]
        kind = provenance["kind"]
    except KeyError as exc:
        raise InvalidInputError(f"provenance lacks {exc.args[0]!r}") from None
    bridge = connect(
        fhir,
        provenance.get("dicomweb"),
        auth,
        settings=settings,
        joins=provenance.get("joins", "auto"),
    )
    from imagingkit.fhir.cohort import Cohort

    cohort = Cohort.from_dict(bridge, criteria)
    if kind == "patients":
        return cohort.patients()
    if kind != "studies":
        raise InvalidInputError(f"provenance kind {kind!r} is not 'studies' or 'patients'")
    return cohort.studies(
        level=provenance.get("level") or "series",
        matching_series_only=bool(provenance.get("matching_series_only", True)),
    )

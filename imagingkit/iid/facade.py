"""The IID facade: ``GET {base}iid/IHEInvokeImageDisplay`` (IHE RAD-106 Image Display).

An Image Display Invoker (an EHR, a notebook) sends an IID request; the facade
validates it (:class:`~imagingkit.iid.request.IIDRequest`), finds the studies it means
(:mod:`imagingkit.iid.resolve`), and answers ``302 Found`` with the configured viewer's
deep link (:mod:`imagingkit.iid.viewers`; the built-in viewer by default).

Answers:

* 302 — to a URL built by a *configured* viewer adapter from validated values. The
  target always starts with the adapter's configured prefix; nothing in the request can
  name another host or scheme (no open redirect).
* 400 — a readable HTML page (or problem+json when asked for JSON) naming the bad
  parameter and value, every character HTML-escaped.
* 404 — nothing matches; 409 — the patient is ambiguous; 414 — the URL is too long;
  502 — neither the FHIR nor the DICOMweb server could be asked.

Responses carry ``Cache-Control: no-store`` and ``Referrer-Policy: no-referrer`` since
IID URLs hold patient identifiers (``notes/iid-and-viewers.md`` §6).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import tornado.iostream
import tornado.web

from imagingkit.errors import ConfigError, IIDError, ImagingKitError, InvalidInputError
from imagingkit.iid.request import IID_PATH, MAX_QUERY_CHARS, IIDRequest, RequestType
from imagingkit.iid.resolve import HTTPStudyResolver, StudyResolver
from imagingkit.iid.viewers import Launch, ViewerAdapter, ViewerRegistry, check_base, load_viewers
from imagingkit.server.app import RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem

__all__ = ["IIDHandler", "IidFacade", "safe_target"]

_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f\\]")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46em;margin:3em auto;padding:0 1em;
color:#222}}h1{{font-size:1.4em}}code{{background:#f3f3f3;padding:0 .2em}}
.detail{{border-left:4px solid #c33;padding:.5em 1em;background:#fff6f6;
overflow-wrap:anywhere}}</style></head>
<body><h1>{title}</h1><p class="detail">{detail}</p>
<p>{hint}</p></body></html>
"""


class IidFacade:
    """The IID Image Display endpoint as an app :class:`~imagingkit.server.app.Component`.

    Parameters
    ----------
    viewers : ViewerRegistry, optional
        The configured viewers; default :func:`~imagingkit.iid.viewers.load_viewers`
        (``$IMAGINGKIT_VIEWERS``, else the built-in viewer).
    resolver : StudyResolver, optional
        How studies are found; default :class:`HTTPStudyResolver` against
        *fhir_base* and *dicomweb_base*.
    fhir_base, dicomweb_base : str, optional
        Where to look studies up. Default: this server's own ``fhir`` and ``dicom-web``
        mounts, reached on the local address the request came in on (never on the
        ``Host`` header, so a client cannot point the lookups elsewhere).
    public_dicomweb_base : str, optional
        The DICOMweb URL handed to viewers that need one (Weasis, URL templates).
        Default: this server's ``dicom-web`` as the client addressed it.
    lenient : bool
        Parse requests in lenient mode (see :mod:`imagingkit.iid.request`).
    timeout : float
        Seconds per lookup request.
    ohif : bool
        Without a configuration file, make an OHIF app at this server's root the default
        viewer (``imagingkit serve --ohif DIR``).
    """

    mount = "iid"

    def __init__(
        self,
        viewers: ViewerRegistry | None = None,
        *,
        resolver: StudyResolver | None = None,
        fhir_base: str | None = None,
        dicomweb_base: str | None = None,
        public_dicomweb_base: str | None = None,
        lenient: bool = False,
        timeout: float = 30.0,
        ohif: bool = False,
    ) -> None:
        self.viewers = viewers
        self.ohif = ohif
        self.resolver = resolver
        self.fhir_base = None if fhir_base is None else check_base(fhir_base, "FHIR base")
        self.dicomweb_base = (
            None if dicomweb_base is None else check_base(dicomweb_base, "DICOMweb base")
        )
        self.public_dicomweb_base = (
            None
            if public_dicomweb_base is None
            else check_base(public_dicomweb_base, "public DICOMweb base")
        )
        self.lenient = lenient
        self.timeout = timeout

    def routes(self, prefix: str) -> RouteList:
        """Serve ``{prefix}/IHEInvokeImageDisplay``."""
        base_url = prefix[: -len(self.mount)] if prefix.endswith(self.mount) else "/"
        if self.viewers is None:
            self.viewers = load_viewers(base_url=base_url, ohif=self.ohif)
        return [(rf"{prefix}/{IID_PATH}", IIDHandler, {"facade": self, "base_url": base_url})]

    def registry(self) -> ViewerRegistry:
        """Return the viewer registry (loaded when the routes were built)."""
        if self.viewers is None:
            self.viewers = load_viewers(ohif=self.ohif)
        return self.viewers

    async def launch(
        self, request: IIDRequest, adapter: ViewerAdapter, resolver: StudyResolver, dicomweb: str
    ) -> Launch:
        """Find the studies *request* means and describe what *adapter* should open.

        Raises
        ------
        IIDError
            status 404 when nothing matches (or 409/502 from the resolver).
        """
        studies: list[str] = list(request.study_uids)
        if adapter.needs_studies and not studies:
            if request.request_type is RequestType.PATIENT:
                studies = await resolver.studies_for_patient(request)
                what = "patient"
            else:
                studies = await resolver.studies_for_accessions(request.accession_numbers)
                what = "accession number(s)"
            if not studies:
                raise IIDError(f"no imaging study was found for this {what}", status=404)
        return Launch(
            study_uids=tuple(studies),
            dicomweb_base=dicomweb,
            patient_id=request.patient_id,
            patient_name=request.patient_name,
            accession_numbers=request.accession_numbers,
            request=request,
        )


def safe_target(url: str, adapter: ViewerAdapter) -> str:
    """Return *url* if it is a redirect target *adapter* may produce, else raise.

    The URL must start with the adapter's configured prefix, contain no whitespace,
    control characters or backslashes, and not be protocol-relative.
    """
    if (
        not adapter.prefix
        or not url.startswith(adapter.prefix)
        or _UNSAFE_TARGET.search(url)
        or url.startswith(("//", "/\\"))
    ):
        raise HTTPProblem(500, "refused to redirect to a URL outside the configured viewer")
    return url


class IIDHandler(BaseHandler):
    """``GET …/IHEInvokeImageDisplay``: validate, resolve, redirect (RAD-106)."""

    cors_methods = "GET, OPTIONS"

    def initialize(self, facade: IidFacade, base_url: str) -> None:
        self.facade = facade
        self.base_url = base_url

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    def _local_origin(self) -> str:
        """The address this request arrived on, for lookups on this same server."""
        stream = self.request.connection.stream  # type: ignore[union-attr]
        host, port = stream.socket.getsockname()[:2]
        scheme = "https" if isinstance(stream, tornado.iostream.SSLIOStream) else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    def _public_origin(self) -> str:
        """The origin the client used, when its Host header is a plain host[:port]."""
        host = self.request.host
        if host and _HOST.match(host):
            return f"{self.request.protocol}://{host}"
        return self._local_origin()

    async def get(self) -> None:
        if len(self.request.uri or "") > MAX_QUERY_CHARS + 256:
            raise HTTPProblem(
                414,
                f"the request URL is {len(self.request.uri or '')} characters long; "
                f"at most {MAX_QUERY_CHARS} are accepted in the query",
            )
        facade = self.facade
        request = IIDRequest.from_query(self.request.query, lenient=facade.lenient)
        adapter = facade.registry().get(request.viewer_type)
        resolver = facade.resolver
        if resolver is None:
            local = self._local_origin() + self.base_url
            # Lookups on this same server carry the caller's own credentials (a Jupyter
            # server wants its token or cookie); they never go to another origin (D7).
            same_server = facade.fhir_base is None and facade.dicomweb_base is None
            forwarded = {
                name: value
                for name in ("Authorization", "Cookie")
                if same_server and (value := self.request.headers.get(name))
            }
            resolver = HTTPStudyResolver(
                facade.fhir_base or local + "fhir",
                facade.dicomweb_base or local + "dicom-web",
                timeout=facade.timeout,
                headers=forwarded,
            )
        dicomweb = facade.public_dicomweb_base or f"{self._public_origin()}{self.base_url}dicom-web"
        launch = await facade.launch(request, adapter, resolver, dicomweb)
        target = safe_target(adapter.url(launch), adapter)
        self.set_status(302)
        self.set_header("Location", target)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            f'<!doctype html><title>Opening viewer</title><p><a href="{html.escape(target)}">'
            "Open the viewer</a></p>"
        )

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ImagingKitError) and not isinstance(e, InvalidInputError):
            if not self._finished:
                status = e.status if isinstance(e, IIDError) and e.status else 500
                if isinstance(e, ConfigError):
                    status = 500
                self.send_error(status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        detail = self.problem_detail(status_code, exc)
        if isinstance(exc, IIDError) and exc.status in (404, 409, 502):
            detail = exc.message  # no upstream URLs on the page
        accept = self.request.headers.get("Accept", "")
        if "json" in accept and "html" not in accept:
            self.set_header("Content-Type", "application/problem+json")
            self.finish(
                json.dumps(
                    {
                        "type": "about:blank",
                        "title": self._reason,
                        "status": status_code,
                        "detail": detail,
                    }
                )
            )
            return
        hints = {
            400: "This IHE Invoke Image Display request is not valid. Check the parameter "
            "named above; requests look like <code>?requestType=STUDY&amp;studyUID=1.2.3</code> "
            "or <code>?requestType=PATIENT&amp;patientID=ID%5E%5E%5E%26OID%26ISO</code>.",
            404: "No study matched. Check the identifiers and the date range.",
            409: "The request matches more than one patient; be more specific.",
            414: "Ask for fewer studies per request.",
            502: "The image archive could not be reached; try again later.",
        }
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(
            _PAGE.format(
                title=html.escape(f"{status_code} {self._reason}"),
                detail=html.escape(detail),
                hint=hints.get(status_code, "The viewer could not be opened."),
            )
        )

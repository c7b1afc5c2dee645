"""Base handler shared by every imagingkit endpoint: CORS and JSON problem bodies.

Errors are answered as ``application/problem+json`` (RFC 9457) naming the bad value
(DESIGN.md D9); FHIR handlers override :meth:`BaseHandler.write_error` to answer with an
OperationOutcome instead.
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from imagingkit.errors import ImagingKitError, InvalidInputError

__all__ = ["BaseHandler", "HTTPProblem"]


class HTTPProblem(tornado.web.HTTPError):
    """An HTTP error whose *detail* is safe to show to the client.

    Parameters
    ----------
    status : int
        HTTP status code.
    detail : str
        Human-readable explanation, returned in the problem body.
    """

    def __init__(self, status: int, detail: str, **headers: str) -> None:
        super().__init__(status, log_message=detail.replace("%", "%%"))
        self.detail = detail
        self.headers = headers


class BaseHandler(tornado.web.RequestHandler):
    """CORS-enabled handler that reports errors as problem+json.

    CORS is open (``*``) without credentials: browser viewers on another origin (OHIF)
    may read public sandbox data, but a browser never sends cookies cross-origin here.
    """

    cors_methods = "GET, HEAD, POST, PUT, DELETE, OPTIONS"

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header(
            "Access-Control-Expose-Headers",
            "Content-Type, Content-Location, Location, ETag, Warning, Link, X-Total-Count",
        )
        self.set_header("X-Content-Type-Options", "nosniff")

    def options(self, *args: Any, **kwargs: Any) -> None:
        """Answer a CORS preflight."""
        self.set_header("Access-Control-Allow-Methods", self.cors_methods)
        requested = self.request.headers.get("Access-Control-Request-Headers")
        self.set_header(
            "Access-Control-Allow-Headers",
            requested or "Accept, Authorization, Content-Type, If-Match, If-None-Exist, Prefer",
        )
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def problem_detail(self, status_code: int, exc: BaseException | None) -> str:
        """Return the message to put in an error body for *exc*."""
        if isinstance(exc, HTTPProblem):
            return exc.detail
        if isinstance(exc, ImagingKitError):
            return str(exc)
        return self._reason

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPProblem):
            for name, value in exc.headers.items():
                self.set_header(name.replace("_", "-"), value)
        self.set_header("Content-Type", "application/problem+json")
        body = {
            "type": "about:blank",
            "title": self._reason,
            "status": status_code,
            "detail": self.problem_detail(status_code, exc),
        }
        self.finish(json.dumps(body))

    def _handle_request_exception(self, e: BaseException) -> None:
        # Bad input raised deep inside (InvalidInputError) is the client's fault: 400.
        if isinstance(e, InvalidInputError) and not self._finished:
            self.send_error(400, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

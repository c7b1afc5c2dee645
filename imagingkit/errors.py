"""The one exception tree of imagingkit.

Every error imagingkit raises on purpose is an :class:`ImagingKitError`. Errors that come
from a server carry the URL (with any credentials stripped), the HTTP status and the
server's own message, so a notebook user can see *which* server said *what*.

Bad input raises an :class:`InvalidInputError` subclass that names the offending value
(DESIGN.md D9); these also derive from :class:`ValueError` so that generic ``except
ValueError`` code keeps working.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AuthError",
    "ConfigError",
    "DICOMwebError",
    "FHIRError",
    "FHIRcastError",
    "IIDError",
    "ImagingKitError",
    "InvalidDICOMError",
    "InvalidDateError",
    "InvalidInputError",
    "InvalidQueryError",
    "InvalidUIDError",
    "OperationOutcomeError",
    "SandboxError",
    "redact_url",
]


def redact_url(url: str | None) -> str | None:
    """Return *url* without user-info or query-string secrets.

    Parameters
    ----------
    url : str or None
        Any URL.

    Returns
    -------
    str or None
        The URL with ``user:password@`` removed and the values of ``access_token``,
        ``token`` and ``code`` query parameters replaced by ``***`` (DESIGN.md D7).
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        kept = []
        for item in query.split("&"):
            key = item.split("=", 1)[0]
            if key.lower() in {"access_token", "token", "code", "client_secret"}:
                kept.append(f"{key}=***")
            else:
                kept.append(item)
        query = "&".join(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class ImagingKitError(Exception):
    """Root of every error raised by imagingkit.

    Parameters
    ----------
    message : str
        What went wrong, in words a user can act on.
    url : str, optional
        The URL involved; stored redacted (see :func:`redact_url`).
    status : int, optional
        The HTTP status the server answered, if any.
    server_message : str, optional
        The server's own explanation (e.g. an OperationOutcome's diagnostics).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        server_message: str | None = None,
    ) -> None:
        self.message = message
        self.url = redact_url(url)
        self.status = status
        self.server_message = server_message
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.url:
            details.append(self.url)
        if details:
            text += f" [{' '.join(details)}]"
        if self.server_message:
            text += f": {self.server_message}"
        return text


class ConfigError(ImagingKitError):
    """A setting or environment variable has an unusable value."""


class InvalidInputError(ImagingKitError, ValueError):
    """A value given by the user or a client is malformed; the message names it."""


class InvalidUIDError(InvalidInputError):
    """A DICOM UID is malformed (PS3.5 §9.1: digits and dots, ≤ 64 characters)."""


class InvalidDateError(InvalidInputError):
    """A DICOM DA/TM/DT value or range is malformed (PS3.5 §6.2, PS3.4 §C.2.2.2.5)."""


class InvalidQueryError(InvalidInputError):
    """A query parameter is malformed or unsupported (PS3.18 §8.3.4)."""


class InvalidDICOMError(InvalidInputError):
    """Bytes that should be a DICOM Part-10 object are not (PS3.10 §7)."""


class DICOMwebError(ImagingKitError):
    """A DICOMweb server answered with an error or an unparseable body (PS3.18)."""


class FHIRError(ImagingKitError):
    """A FHIR server answered with an error or an unparseable body (FHIR R4 §3.1.0)."""


class OperationOutcomeError(FHIRError):
    """A FHIR error that came with an OperationOutcome (FHIR R4 OperationOutcome)."""


class AuthError(ImagingKitError):
    """Authentication or authorization failed, or a credential would cross origins."""


class IIDError(ImagingKitError):
    """An IHE Invoke Image Display request is invalid or cannot be served (RAD-106)."""


class FHIRcastError(ImagingKitError):
    """A FHIRcast subscription, event or hub interaction failed (FHIRcast 3.0.0)."""


class SandboxError(ImagingKitError):
    """The embedded sandbox could not generate, index or serve its data."""

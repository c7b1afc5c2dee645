"""OperationOutcome bodies and the HTTP status of store errors (R4 http §3.1.0.1.6).

Store code raises the project's exceptions: :class:`~imagingkit.errors.InvalidInputError`
(and subclasses) for bad client input — always 400 — and
:class:`~imagingkit.errors.FHIRError` with ``status=`` for the other outcomes (404 unknown
resource, 410 deleted, 409/412 version conflicts, 422 business rules …). Handlers and
the batch processor turn them into an OperationOutcome with the matching issue code.
"""

from __future__ import annotations

from typing import Any

from imagingkit.errors import FHIRError, ImagingKitError, InvalidInputError

__all__ = ["ISSUE_CODES", "fhir_error", "operation_outcome", "outcome_for"]

#: HTTP status → OperationOutcome.issue.code (R4 IssueType value set).
ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    500: "exception",
}


def operation_outcome(
    diagnostics: str,
    *,
    severity: str = "error",
    code: str = "invalid",
    expression: str | None = None,
) -> dict[str, Any]:
    """Return an OperationOutcome with one issue.

    Parameters
    ----------
    diagnostics : str
        The explanation, naming the offending value.
    severity : {"fatal", "error", "warning", "information"}
    code : str
        An R4 IssueType code.
    expression : str, optional
        Where the problem is (e.g. the search parameter name).
    """
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhir_error(status: int, message: str) -> FHIRError:
    """Build the :class:`FHIRError` store code raises for a non-400 outcome."""
    return FHIRError(message, status=status)


def outcome_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Return ``(status, OperationOutcome)`` describing *exc*."""
    if isinstance(exc, InvalidInputError):
        status = 400
    elif isinstance(exc, ImagingKitError) and exc.status:
        status = exc.status
    else:
        status = 500
    if isinstance(exc, ImagingKitError):
        message = exc.message
    else:
        message = "internal error while processing the request"
    return status, operation_outcome(message, code=ISSUE_CODES.get(status, "processing"))

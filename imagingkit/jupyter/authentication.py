"""Jupyter's authentication in front of imagingkit's handlers (DESIGN.md D3, D7).

Under a Jupyter server every imagingkit route answers only to requests that Jupyter
itself would accept: the server's token (``Authorization: token …`` or ``Bearer …``, or
``?token=``) or its login cookie, checked by the server's own ``IdentityProvider`` and
``Authorizer``, with Jupyter's Host check (DNS rebinding) and its XSRF check for
cookie-authenticated writes. The component handlers themselves stay unchanged:
:func:`jupyter_authenticated` derives a subclass whose ``prepare`` admits the request
first, as :mod:`imagingkit.sandbox.guards` does for ``--auth``.

Two kinds of request pass without Jupyter credentials:

* CORS preflights (``OPTIONS``), which never carry credentials (Fetch standard §3.2.2);
* the FHIRcast websocket channel (``…/fhircast/ws/{endpoint}``): its path is the
  unguessable ``hub.channel.endpoint`` that the hub returned to an *authenticated*
  subscription request, the capability FHIRcast 3.0.0 §2.3 relies on (the ``websockets``
  client sends no headers on it).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import tornado.web
import tornado.websocket

from imagingkit.server.base import HTTPProblem

__all__ = ["admit", "is_open", "jupyter_authenticated"]

log = logging.getLogger("imagingkit.jupyter")

_READ_METHODS = frozenset({"GET", "HEAD"})
_made: dict[type[tornado.web.RequestHandler], type[tornado.web.RequestHandler]] = {}


class _JupyterView:
    """The request handler as Jupyter's ``IdentityProvider`` expects to see it.

    The provider reads a few ``JupyterHandler`` properties (``token``, ``base_url``,
    ``log``, ``current_user``) that imagingkit's handlers do not have, or use for other
    things (``base_url``); everything else (cookies, arguments, headers, settings) is
    the real handler's, so a login cookie the provider sets lands in the real response.
    """

    def __init__(self, handler: tornado.web.RequestHandler) -> None:
        self._handler = handler
        self._token_authenticated = False
        self._user: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    @property
    def identity_provider(self) -> Any:
        return self._handler.settings["identity_provider"]

    @property
    def token(self) -> str | None:
        token: str | None = self.identity_provider.token
        return token

    @property
    def base_url(self) -> str:
        return str(self._handler.settings.get("base_url", "/"))

    @property
    def log(self) -> logging.Logger:
        return log

    @property
    def current_user(self) -> Any:
        return self._user


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _host_allowed(view: _JupyterView) -> bool:
    from jupyter_server.base.handlers import JupyterHandler

    # Jupyter's own check (loopback or ServerApp.local_hostnames unless allow_remote_access)
    return bool(JupyterHandler.check_host(view))  # type: ignore[arg-type]


async def admit(handler: tornado.web.RequestHandler) -> None:
    """Let *handler*'s request through only if Jupyter authenticates and authorises it.

    Raises
    ------
    HTTPProblem
        403 for a non-local ``Host`` header, missing or wrong credentials, a refusal of
        the server's ``Authorizer`` or a failed XSRF check; 500 when the application is
        not a Jupyter server (no ``identity_provider`` setting).
    """
    settings = handler.settings
    if "identity_provider" not in settings:
        raise HTTPProblem(500, "imagingkit's Jupyter handlers run only inside a Jupyter server")
    view = _JupyterView(handler)
    if not _host_allowed(view):
        raise HTTPProblem(403, f"requests for host {handler.request.host!r} are not accepted")
    user = await _maybe_await(settings["identity_provider"].get_user(view))
    if user is None:
        raise HTTPProblem(
            403,
            "this Jupyter server requires authentication: send its token "
            "('Authorization: token <token>') or its login cookie",
        )
    view._user = user
    method = handler.request.method or "GET"
    authorizer = settings.get("authorizer")
    if authorizer is not None:
        action = "read" if method in _READ_METHODS else "write"
        allowed = await _maybe_await(authorizer.is_authorized(view, user, action, "imagingkit"))
        if not allowed:
            raise HTTPProblem(403, f"this Jupyter user may not {action} imagingkit data")
    if (
        method not in _READ_METHODS
        and not view._token_authenticated
        and not settings.get("disable_check_xsrf", False)
    ):
        # a browser's cookie is not enough to write: the page must prove it is Jupyter's
        try:
            tornado.web.RequestHandler.check_xsrf_cookie(handler)
        except tornado.web.HTTPError as exc:
            raise HTTPProblem(403, f"XSRF check failed: {exc.log_message}") from exc
    handler.current_user = user


def is_open(mount: str, handler_class: type[tornado.web.RequestHandler]) -> bool:
    """Return whether *handler_class* of the component at *mount* needs no Jupyter auth.

    Only the FHIRcast hub's websocket channel is open (see the module docstring).
    """
    return mount == "fhircast" and issubclass(handler_class, tornado.websocket.WebSocketHandler)


def jupyter_authenticated(
    handler_class: type[tornado.web.RequestHandler],
) -> type[tornado.web.RequestHandler]:
    """Return a subclass of *handler_class* that first :func:`admit` s each request.

    Errors are still answered by the handler's own ``write_error`` (problem+json, or an
    OperationOutcome from the FHIR store). Subclasses are made once per class.
    """
    made = _made.get(handler_class)
    if made is not None:
        return made

    class JupyterAuthenticated(handler_class):  # type: ignore[valid-type,misc]
        def check_xsrf_cookie(self) -> None:
            # tornado calls this before prepare(), when the user is not known yet;
            # admit() applies Jupyter's rule (token-authenticated requests are exempt)
            return None

        async def prepare(self) -> None:
            if self.request.method != "OPTIONS":
                await admit(self)
            parent = super().prepare()
            if parent is not None:
                await parent

    name = f"JupyterAuthenticated{handler_class.__name__}"
    JupyterAuthenticated.__name__ = JupyterAuthenticated.__qualname__ = name
    _made[handler_class] = JupyterAuthenticated
    return JupyterAuthenticated

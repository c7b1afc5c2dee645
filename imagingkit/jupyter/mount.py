"""imagingkit's components inside another tornado application, behind a readiness gate.

The Jupyter server extension registers one :class:`ComponentMount` at
``{base_url}imagingkit`` when the server starts, before the components exist: building
them may generate the sandbox (tens of seconds on the first run), which must not hold
up Jupyter. Until :meth:`ComponentMount.install` is called every path below the prefix
answers ``503 Service Unavailable`` with ``Retry-After`` and a problem+json body
(RFC 9110 §15.6.4, §10.2.3; RFC 9457); ``{prefix}/`` always answers the status. After a
failure the paths answer 500 naming the cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import tornado.httputil
import tornado.routing
import tornado.web

from imagingkit import __version__
from imagingkit.server.app import Component, RouteList
from imagingkit.server.base import BaseHandler, HTTPProblem

__all__ = ["ComponentMount", "HandlerWrapper"]

#: ``(mount, handler class) -> handler class`` applied to every route (authentication)
HandlerWrapper = Callable[[str, type[tornado.web.RequestHandler]], type[tornado.web.RequestHandler]]


def _unwrapped(mount: str, handler_class: type[tornado.web.RequestHandler]) -> type[Any]:
    return handler_class


class _HandlerRouter(tornado.routing.RuleRouter):
    """A rule router whose targets are request handler classes of *application*."""

    def __init__(self, application: tornado.web.Application, rules: RouteList) -> None:
        self.application = application
        super().__init__(rules)

    def get_target_delegate(
        self, target: Any, request: tornado.httputil.HTTPServerRequest, **target_params: Any
    ) -> tornado.httputil.HTTPMessageDelegate | None:
        if isinstance(target, type) and issubclass(target, tornado.web.RequestHandler):
            return self.application.get_handler_delegate(request, target, **target_params)
        return super().get_target_delegate(target, request, **target_params)


class _StatusHandler(BaseHandler):
    """``GET {prefix}/``: version, state and the URL of every mounted component."""

    def initialize(self, mount: ComponentMount) -> None:
        self.mount = mount

    def get(self) -> None:
        root = f"{self.request.protocol}://{self.request.host}{self.mount.prefix}/"
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        body: dict[str, Any] = {
            "imagingkit": __version__,
            "status": self.mount.state,
            "endpoints": {m: f"{root}{m}/" for m in self.mount.mounts},
        }
        if self.mount.detail:
            body["detail"] = self.mount.detail
        body.update(self.mount.info)
        self.finish(json.dumps(body))


class _GateHandler(BaseHandler):
    """Every other path while the components are not (or no longer) served."""

    def initialize(self, mount: ComponentMount) -> None:
        self.mount = mount

    def prepare(self) -> None:
        mount = self.mount
        if self.request.method == "OPTIONS":
            return
        if mount.state == "failed":
            raise HTTPProblem(500, f"imagingkit could not start: {mount.detail}")
        seconds = str(mount.retry_after)
        raise HTTPProblem(503, f"{mount.detail}; retry after {seconds} s", Retry_After=seconds)

    def get(self, *args: Any) -> None:  # never reached: prepare() answers
        raise HTTPProblem(500, "unreachable")

    post = put = delete = patch = head = get


class ComponentMount(tornado.routing.Router):
    """Serve components under *prefix* of *application* once they are installed.

    Parameters
    ----------
    application : tornado.web.Application
        The host application (Jupyter's ``web_app``).
    prefix : str
        Path of the mount, e.g. ``"/user/ada/imagingkit"``; a trailing slash is ignored.
    wrap : callable, optional
        ``(mount, handler_class) -> handler_class`` applied to every handler, including
        the status and gate handlers (mount ``""``), e.g. to require authentication.
    retry_after : int
        Seconds suggested to clients in ``Retry-After`` while starting.
    """

    def __init__(
        self,
        application: tornado.web.Application,
        prefix: str,
        *,
        wrap: HandlerWrapper | None = None,
        retry_after: int = 5,
    ) -> None:
        self.application = application
        self.prefix = "/" + prefix.strip("/")
        self.wrap = wrap or _unwrapped
        self.retry_after = retry_after
        self.state = "starting"
        self.detail = "imagingkit is preparing its data (the first run generates the sandbox)"
        #: extra fields for the status document (e.g. the sandbox size and seed)
        self.info: dict[str, Any] = {}
        self.mounts: list[str] = []
        self._router: _HandlerRouter | None = None
        self._status = self.wrap("", _StatusHandler)
        self._gate = self.wrap("", _GateHandler)
        self._pattern = re.compile(rf"{re.escape(self.prefix)}(?:/.*)?$")

    def rule(self) -> tornado.routing.Rule:
        """The rule to add to the host application (``add_handlers(".*$", [rule])``)."""
        return tornado.routing.Rule(tornado.routing.PathMatches(self._pattern), self)

    def install(self, components: Sequence[Component]) -> None:
        """Serve *components*, each at ``{prefix}/{component.mount}``; call on the IOLoop."""
        rules: RouteList = []
        for component in components:
            for pattern, handler_class, kwargs in component.routes(
                f"{self.prefix}/{component.mount}"
            ):
                rules.append((pattern, self.wrap(component.mount, handler_class), kwargs))
        self.mounts = [c.mount for c in components]
        self._router = _HandlerRouter(self.application, rules)
        self.state, self.detail = "ready", ""

    def fail(self, detail: str) -> None:
        """Record that the components could not be built; paths answer 500 with *detail*."""
        self.state, self.detail = "failed", detail

    def stop(self) -> None:
        """Stop serving the components (the server is shutting down)."""
        self._router = None
        self.mounts = []
        self.state, self.detail = "stopping", "imagingkit is shutting down"

    def find_handler(
        self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.httputil.HTTPMessageDelegate | None:
        """Route *request* to a component, the status document or the gate."""
        path = request.path
        if path in (self.prefix, f"{self.prefix}/"):
            return self.application.get_handler_delegate(
                request, self._status, target_kwargs={"mount": self}
            )
        if self._router is not None:
            # a path below the prefix that no component serves falls through (404)
            return self._router.find_handler(request)
        return self.application.get_handler_delegate(
            request, self._gate, target_kwargs={"mount": self}
        )

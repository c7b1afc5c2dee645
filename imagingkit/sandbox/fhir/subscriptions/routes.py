"""Where the Subscription machinery meets the store's tornado routes.

:func:`subscription_routes` gives the operation routes and the websocket endpoint, to be
placed before the store's generic routes (tornado takes the first match);
:func:`observing` wraps the generic routes so every request tells the service the FHIR
base URL the store is reached at (rest-hook notifications are rendered against it).
"""

from __future__ import annotations

from typing import Any

import tornado.web

from imagingkit.sandbox.fhir.subscriptions.channels.websocket import SubscriptionSocket
from imagingkit.sandbox.fhir.subscriptions.definitions import WEBSOCKET_PATH
from imagingkit.sandbox.fhir.subscriptions.operations import operation_routes
from imagingkit.sandbox.fhir.subscriptions.service import SubscriptionService
from imagingkit.server.app import RouteList

__all__ = ["observing", "subscription_routes"]


def subscription_routes(
    prefix: str, service: SubscriptionService, kwargs: dict[str, Any]
) -> RouteList:
    """The operations and the websocket endpoint below *prefix* (``{base_url}fhir``)."""
    socket_kw = {"service": service, "prefix": prefix, "mount": kwargs["mount"]}
    path = WEBSOCKET_PATH.replace("$", r"\$")
    return [
        (rf"{prefix}/{path}", SubscriptionSocket, socket_kw),
        *operation_routes(prefix, service, kwargs),
    ]


def observing(rules: RouteList, service: SubscriptionService) -> RouteList:
    """*rules* with each handler recording its request's FHIR base URL on *service*."""
    made: dict[type[tornado.web.RequestHandler], type[tornado.web.RequestHandler]] = {}
    out: RouteList = []
    for pattern, handler_class, kwargs in rules:
        if handler_class not in made:
            made[handler_class] = _observed(handler_class, service)
        out.append((pattern, made[handler_class], kwargs))
    return out


def _observed(
    handler_class: type[tornado.web.RequestHandler], service: SubscriptionService
) -> type[tornado.web.RequestHandler]:
    class Observed(handler_class):  # type: ignore[valid-type,misc]
        def prepare(self) -> Any:
            urls = getattr(self, "urls", None)
            if urls is not None:
                service.remember_base(urls.fhir)
            return super().prepare()

    Observed.__name__ = Observed.__qualname__ = handler_class.__name__
    return Observed

"""From a notebook: the Jupyter server running this kernel, and its imagingkit URLs.

>>> from imagingkit import jupyter                         # doctest: +SKIP
>>> jupyter.base_urls()                                     # doctest: +SKIP
{'dicom-web': 'http://127.0.0.1:8888/imagingkit/dicom-web', 'fhir': …, 'fhircast': …}
>>> bridge = jupyter.connect()      # FHIR + DICOMweb of the server, with its token

A kernel started by a Jupyter server is its child process, and every server writes
``jpserver-<pid>.json`` (URL, base URL, token) into the Jupyter runtime directory
(:func:`jupyter_server.serverapp.list_running_servers`), so the server is found without
typing URLs or tokens. The token is bound to the server's origin only (DESIGN.md D7).
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from imagingkit.auth import AuthMap, BearerToken
from imagingkit.errors import ConfigError, SandboxError

if TYPE_CHECKING:
    from imagingkit.bridge import Bridge

__all__ = ["JupyterServer", "base_urls", "connect", "current_server"]

_WILDCARDS = {"", "0.0.0.0", "::"}


def _local_url(info: dict[str, Any]) -> str:
    """The server's URL as reached from this machine (a kernel runs beside its server).

    A server listening on every interface prints its host name; loopback always passes
    Jupyter's Host check, so it is used instead.
    """
    parts = urlsplit(str(info["url"]))
    host = parts.hostname or ""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if host in _WILDCARDS or (literal is None and host != "localhost"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if info.get("secure") else parts.scheme or "http"
    base = "/" + str(info.get("base_url", "/")).strip("/") + "/"
    return f"{scheme}://{shown}:{info['port']}{base.replace('//', '/')}"


@dataclass(frozen=True)
class JupyterServer:
    """A running Jupyter server, as seen from this machine."""

    #: ``scheme://host:port{base_url}`` with a trailing slash
    url: str
    token: str = field(repr=False)
    pid: int | None = None

    @property
    def imagingkit_url(self) -> str:
        """``{url}imagingkit`` (no trailing slash): where the extension serves."""
        return f"{self.url}imagingkit"

    def auth(self) -> AuthMap:
        """Credentials for this server's origin only (Jupyter accepts ``Bearer <token>``)."""
        auth = AuthMap()
        if self.token:
            auth.add(self.url, BearerToken(self.token, name="jupyter-server"))
        return auth

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """Return the extension's status document (``GET {base_url}imagingkit/``).

        Raises
        ------
        ConfigError
            The server does not run the imagingkit extension, or refuses the token.
        """
        url = self.imagingkit_url + "/"
        try:
            answer = requests.get(url, headers=self.auth().headers_for(url), timeout=timeout)
        except requests.RequestException as exc:
            raise ConfigError(f"the Jupyter server did not answer: {exc}", url=url) from exc
        if answer.status_code == 404:
            raise ConfigError(
                "this Jupyter server does not run the imagingkit extension "
                "(jupyter server extension enable imagingkit.jupyter)",
                url=url,
                status=404,
            )
        if answer.status_code != 200:
            raise ConfigError(
                "the imagingkit extension refused the request",
                url=url,
                status=answer.status_code,
                server_message=answer.text[:300],
            )
        document: dict[str, Any] = answer.json()
        return document

    def base_urls(self, wait: float = 120.0) -> dict[str, str]:
        """Return ``{mount: base URL}`` (no trailing slash) once the extension is ready.

        Parameters
        ----------
        wait : float
            Seconds to wait while the extension prepares its data (first run).

        Raises
        ------
        SandboxError
            The extension failed to start, or was not ready within *wait* seconds.
        """
        deadline = time.monotonic() + wait
        while True:
            document = self.status()
            if document.get("status") == "ready":
                endpoints = document.get("endpoints", {})
                return {m: str(u).rstrip("/") for m, u in endpoints.items()}
            if document.get("status") == "failed":
                raise SandboxError(
                    f"the imagingkit extension failed to start: {document.get('detail')}",
                    url=self.imagingkit_url,
                )
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"the imagingkit extension was not ready within {wait:g} s "
                    f"({document.get('detail')})",
                    url=self.imagingkit_url,
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def current_server(pid: int | None = None) -> JupyterServer:
    """Return the Jupyter server whose process id is *pid* (default: this kernel's parent).

    Raises
    ------
    ConfigError
        No running Jupyter server has that process id (e.g. not in a Jupyter kernel).
    """
    from jupyter_server.serverapp import list_running_servers

    wanted = os.getppid() if pid is None else pid
    for info in list_running_servers():
        if info.get("pid") == wanted and info.get("port"):
            return JupyterServer(_local_url(info), str(info.get("token") or ""), wanted)
    raise ConfigError(
        f"no running Jupyter server with process id {wanted} "
        "(is this a kernel started by Jupyter with the imagingkit extension?)"
    )


def base_urls(wait: float = 120.0) -> dict[str, str]:
    """``{mount: base URL}`` of the imagingkit extension of this kernel's Jupyter server."""
    return current_server().base_urls(wait)


def connect(*, wait: float = 120.0, **options: Any) -> Bridge:
    """:func:`imagingkit.connect` to the FHIR store of this kernel's Jupyter server.

    The server's token goes with every request to its origin, and nowhere else.
    *options* are passed to :func:`imagingkit.connect`.

    Raises
    ------
    ConfigError
        The extension serves no FHIR store (neither ``sandbox`` nor ``dicom_dir`` set).
    """
    import imagingkit

    server = current_server()
    urls = server.base_urls(wait)
    if "fhir" not in urls:
        raise ConfigError(
            "the imagingkit extension serves no data: set c.ImagingkitApp.sandbox = True "
            "(or IMAGINGKIT_SANDBOX=1) or c.ImagingkitApp.dicom_dir",
            url=server.imagingkit_url,
        )
    options.setdefault("auth", server.auth())
    return imagingkit.connect(urls["fhir"], **options)

"""A launch link that renders in any notebook front end.

:func:`launch_link` returns an object with ``_repr_html_`` (Jupyter, VS Code, Colab …
call it) whose HTML is an ``<a>`` that opens in a new tab without an opener or a
``Referer`` (``noopener noreferrer``), since viewer URLs carry patient identifiers
(``notes/iid-and-viewers.md`` §6, §9). Everything is HTML-escaped and only ``http``,
``https``, ``weasis`` and same-server paths are accepted as targets.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from imagingkit.errors import InvalidInputError

__all__ = ["LaunchLink", "launch_link"]

_ALLOWED_SCHEMES = frozenset({"http", "https", "weasis"})
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class LaunchLink:
    """A viewer link; ``str()`` is the HTML, and notebooks render it as a link.

    Attributes
    ----------
    url : str
        The deep link.
    label : str
        The link text.
    """

    url: str
    label: str

    def to_html(self) -> str:
        """Return the escaped ``<a>`` element."""
        return (
            f'<a href="{html.escape(self.url, quote=True)}" target="_blank" '
            f'rel="noopener noreferrer">{html.escape(self.label)}</a>'
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def __html__(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_html()


def launch_link(url: str, label: str = "Open in viewer") -> LaunchLink:
    """Return a link to *url* that notebooks display as a clickable launcher.

    Parameters
    ----------
    url : str
        A viewer deep link (see :func:`imagingkit.iid.viewers.viewer_url`).
    label : str
        The text shown.

    Returns
    -------
    LaunchLink
        ``IPython.display.display(link)`` shows it; ``str(link)`` is the HTML.

    Raises
    ------
    InvalidInputError
        If *url* has another scheme (``javascript:``, ``data:`` …), a control character,
        or is a protocol-relative ``//host`` URL.
    """
    if not isinstance(url, str) or not url or _CONTROL.search(url) or "\\" in url:
        raise InvalidInputError(f"launch link target {url!r} is empty or has unsafe characters")
    scheme = urlsplit(url).scheme.lower()
    if scheme:
        if scheme not in _ALLOWED_SCHEMES:
            raise InvalidInputError(
                f"launch link target {url[:80]!r} has scheme {scheme!r}; "
                f"only {', '.join(sorted(_ALLOWED_SCHEMES))} are allowed"
            )
    elif not url.startswith("/") or url.startswith("//"):
        raise InvalidInputError(
            f"launch link target {url[:80]!r} must be absolute or a path starting with one '/'"
        )
    return LaunchLink(url, str(label))

"""Viewer adapters: studies in, a viewer's own deep link out.

Each adapter is configured once with where its viewer lives and turns a :class:`Launch`
(the studies, an optional series, the DICOMweb base and the patient) into that viewer's
native URL. Every value put into a URL is percent-encoded, and the part of the URL that
decides *where* the browser goes (scheme, host, path prefix) comes only from the
adapter's configuration, never from the request: :attr:`ViewerAdapter.prefix` is what a
built URL always starts with.

URL formats (see ``notes/iid-and-viewers.md`` §7 for sources):

=================  =====================================================================
``ohif``           ``{base}/viewer?StudyInstanceUIDs=a,b&SeriesInstanceUIDs=s``
``orthanc-ohif``   ``{orthanc}/ohif/viewer?StudyInstanceUIDs=a,b``
``stone``          ``{orthanc}/stone-webviewer/index.html?study=a,b&series=s``
``weasis``         ``weasis://`` + URL-encoded ``$dicom:rs --url "{dicomweb}" -r "studyUID=a"``
``slim``           ``{base}/studies/{a}/series/{s}``
``template``       a dcm4chee-style template: ``{{studyUID}}``, ``{{patientID}}`` …
``iid``            the (validated) IID request, re-issued to another IID endpoint
``builtin``        imagingkit's own page: ``{base}?study=a,b&series=s``
=================  =====================================================================
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, quote_plus, urlsplit

from imagingkit.errors import ConfigError, InvalidInputError
from imagingkit.iid.patient import PatientID
from imagingkit.iid.request import IIDRequest
from imagingkit.uids import validate_uid

__all__ = [
    "ADAPTERS",
    "BuiltinAdapter",
    "IIDAdapter",
    "Launch",
    "OHIFAdapter",
    "OrthancOHIFAdapter",
    "SlimAdapter",
    "StoneAdapter",
    "TemplateAdapter",
    "ViewerAdapter",
    "ViewerRegistry",
    "WeasisAdapter",
    "load_viewers",
    "viewer_url",
]

#: Environment variable naming the viewer configuration file (JSON, or TOML on 3.11+).
VIEWERS_ENV = "IMAGINGKIT_VIEWERS"

_UNSAFE_IN_BASE = re.compile(r"[\x00-\x20\x7f\\\"'<>`{}|^]")
_UNSAFE_IN_TEMPLATE = re.compile(r"[\x00-\x20\x7f\\\"'<>`{}]")


def check_base(url: str, what: str, *, relative_ok: bool = True) -> str:
    """Validate a configured viewer location and return it without a trailing ``/``.

    An absolute ``http(s)://host[:port]/path`` or, if *relative_ok*, a path on this
    server starting with a single ``/`` (or ``""`` for the server root). No query,
    fragment, user-info, spaces, quotes or backslashes.

    Raises
    ------
    ConfigError
        Naming *what* and the value.
    """
    if not isinstance(url, str) or _UNSAFE_IN_BASE.search(url):
        raise ConfigError(f"{what} {url!r} contains spaces, quotes, backslashes or controls")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{what} {url!r} must not have a query or fragment")
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{what} {url!r} must be an http(s) URL")
        if "@" in parts.netloc:
            raise ConfigError(f"{what} {url!r} must not carry user-info (credentials)")
    elif not relative_ok:
        raise ConfigError(f"{what} {url!r} must be an absolute http(s) URL")
    elif url and not url.startswith("/"):
        raise ConfigError(f"{what} {url!r} must be absolute or start with '/'")
    elif url.startswith("//"):
        raise ConfigError(f"{what} {url!r} must not start with '//'")
    return url.rstrip("/")


def _q(value: str) -> str:
    """Percent-encode a query value; only ``,`` (list separator) and ``:`` stay literal."""
    return quote(value, safe=",:")


@dataclass(frozen=True)
class Launch:
    """What to open: studies (and a series) of one patient, and where the pixels are.

    Attributes
    ----------
    study_uids : tuple of str
        Study Instance UIDs, most relevant first.
    series_uids : tuple of str
        Series to show first, if the viewer can take one.
    dicomweb_base : str or None
        The DICOMweb service root holding the studies (for viewers that are told).
    patient_id : PatientID or None
    patient_name : str or None
    accession_numbers : tuple of str
    request : IIDRequest or None
        The IID request this launch came from (the ``iid`` adapter re-issues it).
    """

    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    dicomweb_base: str | None = None
    patient_id: PatientID | None = None
    patient_name: str | None = None
    accession_numbers: tuple[str, ...] = ()
    request: IIDRequest | None = field(default=None, compare=False)


class ViewerAdapter:
    """Base class: a configured viewer that turns a :class:`Launch` into a URL.

    Subclasses set :attr:`kind` (the ``type`` in configuration files) and implement
    :meth:`url`.
    """

    #: the ``type`` name used in configuration files
    kind: ClassVar[str] = ""
    #: False if the adapter forwards IID requests as they are (no study lookup needed)
    needs_studies: ClassVar[bool] = True
    #: how many studies the viewer opens at once (None: any number)
    max_studies: ClassVar[int | None] = None
    #: every URL this adapter builds starts with this
    prefix: str = ""

    def url(self, launch: Launch) -> str:
        """Return the deep link for *launch*."""
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ViewerAdapter:
        """Build the adapter from the options of a configuration entry."""
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigError(f"viewer type {cls.kind!r}: {exc}") from exc

    @classmethod
    def for_dicomweb(cls, dicomweb_base: str) -> ViewerAdapter:
        """Build a default adapter for a viewer next to *dicomweb_base*, if possible."""
        raise ConfigError(
            f"viewer {cls.kind!r} needs to be configured with its location "
            f"(see {VIEWERS_ENV} or pass an adapter instance)"
        )

    def _studies(self, launch: Launch) -> tuple[str, ...]:
        if not launch.study_uids:
            raise InvalidInputError(f"{self.kind} viewer: no study to open")
        if self.max_studies is not None:
            return launch.study_uids[: self.max_studies]
        return launch.study_uids

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"


class OHIFAdapter(ViewerAdapter):
    """OHIF v3 (``{base}/{mode}?StudyInstanceUIDs=…``; OHIF docs ``configuration/url``).

    Parameters
    ----------
    base : str
        Where OHIF is served: ``https://host/ohif`` or ``""`` for this server's root.
    mode : str
        The OHIF mode route, ``viewer`` by default.
    series_parameter : str
        ``SeriesInstanceUIDs`` (load only those series) or ``initialSeriesInstanceUID``
        (load the whole study, show that series first).
    """

    kind = "ohif"

    def __init__(
        self,
        base: str = "",
        mode: str = "viewer",
        series_parameter: str = "SeriesInstanceUIDs",
    ) -> None:
        self.base = check_base(base, "OHIF base")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", mode):
            raise ConfigError(f"OHIF mode {mode!r} must be a single path segment")
        if series_parameter not in ("SeriesInstanceUIDs", "initialSeriesInstanceUID"):
            raise ConfigError(f"OHIF series_parameter {series_parameter!r} is not supported")
        self.mode = mode
        self.series_parameter = series_parameter
        self.prefix = f"{self.base}/{mode}?"

    def url(self, launch: Launch) -> str:
        link = f"{self.prefix}StudyInstanceUIDs={_q(','.join(self._studies(launch)))}"
        if launch.series_uids:
            series = launch.series_uids
            if self.series_parameter == "initialSeriesInstanceUID":
                series = series[:1]
            link += f"&{self.series_parameter}={_q(','.join(series))}"
        return link


class OrthancOHIFAdapter(OHIFAdapter):
    """Orthanc's OHIF plugin, DICOMweb data source (``{orthanc}/ohif/viewer?…``).

    Parameters
    ----------
    orthanc : str
        Orthanc's root URL, e.g. ``http://127.0.0.1:8042``.
    """

    kind = "orthanc-ohif"

    def __init__(self, orthanc: str) -> None:
        super().__init__(check_base(orthanc, "Orthanc URL") + "/ohif")

    @classmethod
    def for_dicomweb(cls, dicomweb_base: str) -> ViewerAdapter:
        return cls(_orthanc_root(dicomweb_base))


class StoneAdapter(ViewerAdapter):
    """Orthanc's Stone Web Viewer (``{orthanc}/stone-webviewer/index.html?study=…``).

    A series is passed only with a single study (Stone ignores it otherwise).
    """

    kind = "stone"

    def __init__(self, orthanc: str) -> None:
        self.orthanc = check_base(orthanc, "Orthanc URL")
        self.prefix = f"{self.orthanc}/stone-webviewer/index.html?"

    @classmethod
    def for_dicomweb(cls, dicomweb_base: str) -> ViewerAdapter:
        return cls(_orthanc_root(dicomweb_base))

    def url(self, launch: Launch) -> str:
        studies = self._studies(launch)
        link = f"{self.prefix}study={_q(','.join(studies))}"
        if launch.series_uids and len(studies) == 1:
            link += f"&series={_q(launch.series_uids[0])}"
        return link


class WeasisAdapter(ViewerAdapter):
    """Weasis desktop through its ``weasis://`` protocol (Weasis ``$dicom:rs`` command).

    The command ``$dicom:rs --url "<DICOMweb>" -r "studyUID=<uid>" …`` (one ``-r`` per
    study, or ``-r "seriesUID=<uid>"`` for a series) is URL-encoded after
    ``weasis://``, as the Weasis protocol documentation asks.

    Parameters
    ----------
    dicomweb_base : str, optional
        The DICOMweb root Weasis queries; else the launch's own base (must be absolute:
        Weasis runs on the user's desktop).
    query_ext : str, optional
        Passed as ``--query-ext`` (e.g. ``&includedefaults=false`` for dcm4chee).
    show_whole_study : bool
        With a series, also list the study's other series.
    """

    kind = "weasis"
    prefix = "weasis://"

    def __init__(
        self,
        dicomweb_base: str | None = None,
        query_ext: str | None = None,
        show_whole_study: bool = True,
    ) -> None:
        self.dicomweb_base = (
            None
            if dicomweb_base is None
            else check_base(dicomweb_base, "Weasis DICOMweb URL", relative_ok=False)
        )
        if query_ext is not None and not re.fullmatch(r"[A-Za-z0-9&=_.\-]*", query_ext):
            raise ConfigError(f"Weasis query_ext {query_ext!r} has unexpected characters")
        self.query_ext = query_ext
        self.show_whole_study = show_whole_study

    @classmethod
    def for_dicomweb(cls, dicomweb_base: str) -> ViewerAdapter:
        return cls(dicomweb_base)

    def url(self, launch: Launch) -> str:
        base = self.dicomweb_base or launch.dicomweb_base
        if not base:
            raise InvalidInputError("weasis viewer: no DICOMweb URL to give Weasis")
        base = check_base(base, "Weasis DICOMweb URL", relative_ok=False)
        words = ["$dicom:rs", "--url", f'"{base}"']
        if launch.series_uids:
            for series in launch.series_uids:
                words += ["-r", f'"seriesUID={series}"']
            if self.show_whole_study:
                words.append("--show-whole-study")
        else:
            for study in self._studies(launch):
                words += ["-r", f'"studyUID={study}"']
        if self.query_ext:
            words += ["--query-ext", f'"{self.query_ext}"']
        return self.prefix + quote_plus(" ".join(words), safe="")


class SlimAdapter(ViewerAdapter):
    """Slim, the slide-microscopy viewer (``{base}/studies/{study}/series/{series}``).

    Slim opens one study; with several, the first (most recent) is opened.
    """

    kind = "slim"
    max_studies = 1

    def __init__(self, base: str) -> None:
        self.base = check_base(base, "Slim base")
        self.prefix = f"{self.base}/studies/"

    def url(self, launch: Launch) -> str:
        (study,) = self._studies(launch)
        link = f"{self.prefix}{quote(study, safe='')}"
        if launch.series_uids:
            link += f"/series/{quote(launch.series_uids[0], safe='')}"
        return link


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z]+)\s*\}\}")
_TEMPLATE_FIELDS = (
    "studyUID",
    "seriesUID",
    "accessionNumber",
    "patientID",
    "patientName",
    "dicomwebBase",
    "qidoBaseURL",
    "qidoBasePath",
)


class TemplateAdapter(ViewerAdapter):
    """A dcm4chee-style URL template (dcm4chee-arc UI ``IID_STUDY_URL``).

    Placeholders: ``{{studyUID}}`` (comma list), ``{{seriesUID}}``,
    ``{{accessionNumber}}``, ``{{patientID}}`` (HL7 CX), ``{{patientName}}``,
    ``{{dicomwebBase}}``, and dcm4chee's ``{{qidoBaseURL}}`` (scheme and host) and
    ``{{qidoBasePath}}`` (path). Every substituted value is percent-encoded (``,``
    kept), so a value can never add a parameter, a path segment or a host. Unlike
    dcm4chee, an unknown placeholder is a configuration error, not the literal name.

    Parameters
    ----------
    url : str
        The template. Its scheme and host must be literal (no placeholder before the
        path), e.g. ``https://pacs/viewer?study={{studyUID}}``; or a path on this
        server starting with ``/``.
    """

    kind = "template"

    def __init__(self, url: str) -> None:
        names = _PLACEHOLDER.findall(url)
        unknown = sorted(set(names) - set(_TEMPLATE_FIELDS))
        if unknown:
            raise ConfigError(
                f"URL template {url!r} has unknown placeholder(s) {unknown}; "
                f"known: {', '.join(_TEMPLATE_FIELDS)}"
            )
        literal = _PLACEHOLDER.split(url)[0]
        parts = urlsplit(literal)
        if parts.scheme or parts.netloc:
            if parts.scheme not in ("http", "https") or not literal.startswith(
                f"{parts.scheme}://"
            ):
                raise ConfigError(
                    f"URL template {url!r} must start with http(s)://host/ or a single '/'"
                )
            # the fixed head must reach at least the '/' that ends the host
            host_end = literal.find("/", len(parts.scheme) + 3)
            if host_end < 0:
                raise ConfigError(
                    f"URL template {url!r}: scheme and host must be literal (a placeholder "
                    "may only appear after the host's '/')"
                )
            check_base(literal[:host_end], "URL template host")
            self.prefix = literal[: host_end + 1]
        else:
            if not literal.startswith("/") or literal.startswith("//"):
                raise ConfigError(
                    f"URL template {url!r} must start with http(s)://host/ or a single '/'"
                )
            self.prefix = "/"
        if _UNSAFE_IN_TEMPLATE.search(_PLACEHOLDER.sub("", url)):
            raise ConfigError(
                f"URL template {url!r} contains spaces, quotes, backslashes, or braces "
                "outside a {{placeholder}}"
            )
        self.template = url
        self.fields = frozenset(names)

    def url(self, launch: Launch) -> str:
        values = {
            "studyUID": ",".join(launch.study_uids),
            "seriesUID": ",".join(launch.series_uids),
            "accessionNumber": ",".join(launch.accession_numbers),
            "patientID": launch.patient_id.to_cx() if launch.patient_id else "",
            "patientName": launch.patient_name or "",
            "dicomwebBase": launch.dicomweb_base or "",
        }
        if launch.dicomweb_base:
            parts = urlsplit(launch.dicomweb_base)
            values["qidoBaseURL"] = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
            values["qidoBasePath"] = parts.path
        if "studyUID" in self.fields and not launch.study_uids:
            raise InvalidInputError("template viewer: no study to open")
        return _PLACEHOLDER.sub(lambda m: _q(values.get(m.group(1), "")), self.template)


class IIDAdapter(ViewerAdapter):
    """Another IID Image Display: the validated request is re-issued to it (RAD-106).

    The forwarded URL is rebuilt from the parsed request, never copied from the
    incoming one, so only well-formed IID parameters reach the other endpoint.

    Parameters
    ----------
    endpoint : str
        The Image Display's base or full ``…/IHEInvokeImageDisplay`` URL.
    """

    kind = "iid"
    needs_studies = False

    def __init__(self, endpoint: str) -> None:
        self.endpoint = check_base(endpoint, "IID endpoint", relative_ok=False)
        probe = IIDRequest.study("1.2").to_url(self.endpoint)
        self.prefix = probe[: probe.index("?") + 1]

    def url(self, launch: Launch) -> str:
        request = launch.request
        if request is None:
            request = IIDRequest.study(self._studies(launch), lenient=True)
        return request.to_url(self.endpoint)


class BuiltinAdapter(ViewerAdapter):
    """imagingkit's built-in viewer page (``{base}?study=a,b&series=s``).

    Parameters
    ----------
    base : str
        Where the page is served, ``/viewer/`` on this server by default.
    """

    kind = "builtin"

    def __init__(self, base: str = "/viewer/") -> None:
        self.base = check_base(base, "built-in viewer base") + "/"
        self.prefix = f"{self.base}?"

    @classmethod
    def for_dicomweb(cls, dicomweb_base: str) -> ViewerAdapter:
        base = check_base(dicomweb_base, "DICOMweb base")
        if not base.endswith("/dicom-web"):
            raise ConfigError(
                f"cannot place the built-in viewer next to {dicomweb_base!r}; "
                "give BuiltinAdapter(base=...) explicitly"
            )
        return cls(base[: -len("dicom-web")] + "viewer/")

    def url(self, launch: Launch) -> str:
        link = f"{self.prefix}study={_q(','.join(self._studies(launch)))}"
        if launch.series_uids:
            link += f"&series={_q(launch.series_uids[0])}"
        return link


#: configuration ``type`` → adapter class
ADAPTERS: dict[str, type[ViewerAdapter]] = {
    cls.kind: cls
    for cls in (
        OHIFAdapter,
        OrthancOHIFAdapter,
        StoneAdapter,
        WeasisAdapter,
        SlimAdapter,
        TemplateAdapter,
        IIDAdapter,
        BuiltinAdapter,
    )
}


def _orthanc_root(dicomweb_base: str) -> str:
    base = check_base(dicomweb_base, "DICOMweb base", relative_ok=False)
    if not base.endswith("/dicom-web"):
        raise ConfigError(
            f"cannot find Orthanc's root from {dicomweb_base!r} (expected …/dicom-web)"
        )
    return base[: -len("/dicom-web")]


@dataclass(frozen=True)
class ViewerRegistry:
    """The configured viewers, by name, and which one is the default.

    A request's IID ``viewerType`` picks a viewer by name; no ``viewerType`` or the
    profile's generic ``IHE_BIR`` picks the default.
    """

    viewers: Mapping[str, ViewerAdapter]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.viewers:
            raise ConfigError(
                f"default viewer {self.default!r} is not configured "
                f"(configured: {', '.join(self.viewers) or 'none'})"
            )

    def names(self) -> list[str]:
        """Return the configured viewer names."""
        return list(self.viewers)

    def get(self, name: str | None = None) -> ViewerAdapter:
        """Return the viewer called *name* (any case), or the default.

        Raises
        ------
        InvalidInputError
            If no viewer of that name is configured.
        """
        if name is None or name.upper() == "IHE_BIR":
            return self.viewers[self.default]
        for key, adapter in self.viewers.items():
            if key.lower() == name.lower():
                return adapter
        raise InvalidInputError(
            f"viewer {name!r} is not configured here; configured: {', '.join(self.viewers)} "
            "(or IHE_BIR for the default)"
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, source: str = "config") -> ViewerRegistry:
        """Build from ``{"default": name, "viewers": {name: {"type": kind, **options}}}``.

        Raises
        ------
        ConfigError
            Naming *source* and the entry at fault.
        """
        entries = config.get("viewers")
        if not isinstance(entries, Mapping) or not entries:
            raise ConfigError(f"{source}: 'viewers' must map names to viewer settings")
        viewers: dict[str, ViewerAdapter] = {}
        for name, options in entries.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", str(name)):
                raise ConfigError(f"{source}: viewer name {name!r} must be a simple token")
            if not isinstance(options, Mapping) or options.get("type") not in ADAPTERS:
                raise ConfigError(
                    f"{source}: viewer {name!r} needs a 'type', one of {', '.join(ADAPTERS)}"
                )
            kwargs = {k: v for k, v in options.items() if k != "type"}
            try:
                viewers[name] = ADAPTERS[options["type"]].from_options(kwargs)
            except ConfigError as exc:
                raise ConfigError(f"{source}: viewer {name!r}: {exc.message}") from exc
        default = config.get("default", next(iter(viewers)))
        return cls(viewers, str(default))

    @classmethod
    def standard(cls, *, base_url: str = "/", ohif: bool = False) -> ViewerRegistry:
        """The registry used without a configuration file.

        The built-in viewer at ``{base_url}viewer/`` (default) and, with *ohif*, an OHIF
        app served by this server at ``{base_url}ohif/`` (``imagingkit serve --ohif
        DIR``), which then becomes the default.
        """
        prefix = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
        viewers: dict[str, ViewerAdapter] = {"builtin": BuiltinAdapter(f"{prefix}viewer/")}
        if ohif:
            viewers = {"ohif": OHIFAdapter(f"{prefix}ohif"), **viewers}
        return cls(viewers, "ohif" if ohif else "builtin")


def load_viewers(
    path: str | os.PathLike[str] | None = None, *, base_url: str = "/", ohif: bool = False
) -> ViewerRegistry:
    """Load the viewer configuration.

    Parameters
    ----------
    path : path, optional
        A JSON file (or TOML, Python 3.11+) in the :meth:`ViewerRegistry.from_config`
        shape. Default: ``$IMAGINGKIT_VIEWERS``; without either, the standard registry.
    base_url, ohif
        Passed to :meth:`ViewerRegistry.standard` when there is no file.

    Raises
    ------
    ConfigError
        If the file is missing or malformed.
    """
    chosen = path if path is not None else os.environ.get(VIEWERS_ENV) or None
    if chosen is None:
        return ViewerRegistry.standard(base_url=base_url, ohif=ohif)
    file = Path(chosen).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read viewer configuration {str(file)!r}: {exc}") from exc
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            config: Any = tomllib.loads(text)
        else:
            config = json.loads(text)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"viewer configuration {str(file)!r} is malformed: {exc}") from exc
    if not isinstance(config, Mapping):
        raise ConfigError(f"viewer configuration {str(file)!r} must be an object")
    return ViewerRegistry.from_config(config, source=str(file))


def viewer_url(
    viewer: str | ViewerAdapter,
    *,
    study_uid: str | Sequence[str],
    series_uid: str | Sequence[str] | None = None,
    dicomweb_base: str,
    patient_id: PatientID | str | None = None,
    patient_name: str | None = None,
    accession_number: str | None = None,
    registry: ViewerRegistry | None = None,
    lenient: bool = False,
) -> str:
    """Return a deep link that opens *study_uid* in *viewer*.

    Parameters
    ----------
    viewer : str or ViewerAdapter
        An adapter, or the name of a configured viewer (see :func:`load_viewers`), or a
        viewer type that can be placed from *dicomweb_base* alone: ``weasis``,
        ``builtin`` (next to an imagingkit ``…/dicom-web``), ``orthanc-ohif`` and
        ``stone`` (next to an Orthanc ``…/dicom-web``).
    study_uid : str or sequence of str
        Study Instance UID(s).
    series_uid : str or sequence of str, optional
        Series to show first, where the viewer can take one.
    dicomweb_base : str
        The DICOMweb root holding the study.
    patient_id : PatientID or str, optional
        For URL templates that use ``{{patientID}}`` (a string is parsed as HL7 CX).
    patient_name, accession_number : str, optional
        For URL templates.
    registry : ViewerRegistry, optional
        Where names are looked up first; default: the file named by
        ``$IMAGINGKIT_VIEWERS``, if set.
    lenient : bool
        Accept UIDs that break PS3.5 §9.1 the way real archives do.

    Returns
    -------
    str

    Raises
    ------
    InvalidUIDError
        If a UID is malformed.
    ConfigError
        If *viewer* names nothing configured and cannot be placed automatically.
    """
    studies = (study_uid,) if isinstance(study_uid, str) else tuple(study_uid)
    series = (series_uid,) if isinstance(series_uid, str) else tuple(series_uid or ())
    for uid in studies:
        validate_uid(uid, lenient=lenient, what="StudyInstanceUID")
    for uid in series:
        validate_uid(uid, lenient=lenient, what="SeriesInstanceUID")
    if isinstance(patient_id, str):
        patient_id = PatientID.parse(patient_id, lenient=lenient)
    adapter = (
        viewer if isinstance(viewer, ViewerAdapter) else _named(viewer, registry, dicomweb_base)
    )
    launch = Launch(
        study_uids=studies,
        series_uids=series,
        dicomweb_base=dicomweb_base,
        patient_id=patient_id,
        patient_name=patient_name,
        accession_numbers=(accession_number,) if accession_number else (),
    )
    return adapter.url(launch)


def _named(name: str, registry: ViewerRegistry | None, dicomweb_base: str) -> ViewerAdapter:
    if registry is None and os.environ.get(VIEWERS_ENV):
        registry = load_viewers()
    if registry is not None and name in registry.viewers:
        return registry.viewers[name]
    if name in ADAPTERS:
        return ADAPTERS[name].for_dicomweb(dicomweb_base)
    configured = ", ".join(registry.names()) if registry is not None else "none"
    raise ConfigError(
        f"viewer {name!r} is neither configured ({configured}) "
        f"nor a known type ({', '.join(ADAPTERS)})"
    )

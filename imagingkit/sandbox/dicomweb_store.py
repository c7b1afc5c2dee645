"""The embedded DICOMweb store: a folder of Part-10 files served as QIDO-RS, WADO-RS, STOW-RS.

:class:`DicomWebStore` is the server :class:`~imagingkit.server.app.Component` mounted at
``/dicom-web`` (DESIGN.md D3). It owns the folder's
:class:`~imagingkit.sandbox.dicom_index.DicomIndex`
(kept under ``settings.data_dir/indexes/``) and contributes the routes of PS3.18 §10:

=====================================================  ==========================================
``GET  /studies``, ``/series``, ``/instances``         QIDO-RS (:mod:`imagingkit.sandbox.qido`)
``GET  /studies/{s}/series``, ``…/instances`` …        QIDO-RS, nested
``POST /studies``, ``/studies/{s}``                    STOW-RS (:mod:`imagingkit.sandbox.stow`)
``GET  /studies/{s}`` …, ``/metadata``, ``/frames`` …   WADO-RS (:mod:`imagingkit.sandbox.wado`)
=====================================================  ==========================================
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagingkit.config import Settings
from imagingkit.errors import SandboxError
from imagingkit.sandbox.dicom_index import DicomIndex
from imagingkit.sandbox.qido import qido_routes
from imagingkit.sandbox.stow import remove_stale_uploads, stow_routes
from imagingkit.sandbox.wado import wado_routes
from imagingkit.server.app import RouteList

__all__ = ["DicomWebStore", "index_path_for"]

log = logging.getLogger("imagingkit.sandbox.dicomweb")


def index_path_for(root: Path, settings: Settings) -> Path:
    """Return where the index of folder *root* lives: ``data_dir/indexes/<sha256>.sqlite``."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:32]
    return Path(settings.data_dir) / "indexes" / f"{digest}.sqlite"


class DicomWebStore:
    """A folder of DICOM files served over DICOMweb (a server Component).

    Parameters
    ----------
    index : DicomIndex
        The folder's index (already scanned).
    settings : Settings
        Limits (``max_query_limit``, ``max_upload_bytes``) and the data folder.

    Attributes
    ----------
    mount : str
        ``"dicom-web"``.
    index : DicomIndex
    root : Path
        The served folder; STOW-RS writes below ``root/stow``.
    settings : Settings
    """

    mount = "dicom-web"

    def __init__(self, index: DicomIndex, settings: Settings) -> None:
        self.index = index
        self.root = index.root
        self.settings = settings
        #: called with the Study Instance UIDs each STOW-RS request stored
        self.on_stored: list[Callable[[set[str]], object]] = []

    @classmethod
    def for_folder(cls, root: Path, *, settings: Settings) -> DicomWebStore:
        """Open (or create) the index of *root*, bring it up to date, and return the store.

        Raises
        ------
        SandboxError
            If *root* is not a folder or the index cannot be opened.
        """
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise SandboxError(f"{str(root)!r} is not a folder of DICOM files")
        index = DicomIndex(index_path_for(root, settings), root)
        try:
            remove_stale_uploads(root)
            report = index.scan()
        except BaseException:
            index.close()
            raise
        log.info("%s", report)
        return cls(index, settings)

    def routes(self, prefix: str) -> RouteList:
        """Return the DICOMweb routes below *prefix* (e.g. ``"/dicom-web"``)."""
        prefix = prefix.rstrip("/")
        common: dict[str, Any] = {"index": self.index, "settings": self.settings, "prefix": prefix}
        rules: RouteList = []
        rules.extend(qido_routes(prefix, common))
        wado = wado_routes(self.index, prefix, self.settings)
        rules.extend(stow_routes(prefix, common, wado, self.on_stored))
        return rules

    def close(self) -> None:
        """Close the index."""
        self.index.close()

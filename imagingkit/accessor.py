"""``df.imaging``: pixels and DICOM metadata for the rows of an imagingkit DataFrame.

Any DataFrame with ``StudyInstanceUID``, ``SeriesInstanceUID`` and ``dicomweb_url``
columns (DESIGN.md D6; what :meth:`Cohort.studies` returns) gets the accessor:

>>> df = bridge.cohort().imaging(modality="CT").studies()           # doctest: +SKIP
>>> df.imaging.metadata()          # instance-level DICOM metadata (WADO-RS metadata)
>>> df.iloc[:1].imaging.volume()   # a numpy volume with spacing and orientation
>>> df.imaging.show(window="lung") # a matplotlib montage

Pixel work is the DICOMweb client's (:mod:`imagingkit.dicomweb`): series streams,
concurrency, the cache, partial failures. Rows are grouped by their DICOMweb service
(the base of ``dicomweb_url``); each service gets the credentials
:meth:`~imagingkit.auth.AuthMap.for_endpoint` allows, taken from the live
:class:`~imagingkit.bridge.Bridge` that made the frame (or ``bridge=``); none otherwise.
Long calls show a tqdm progress bar and take ``executor=`` (any
``concurrent.futures.Executor`` or a ``dask.distributed.Client``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from imagingkit.errors import DICOMwebError, InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from imagingkit.bridge import Bridge
    from imagingkit.dicomweb.bulk import BulkResult
    from imagingkit.dicomweb.client import DicomWebClient
    from imagingkit.dicomweb.volume import Volume

__all__ = ["ImagingAccessor"]

log = logging.getLogger("imagingkit.accessor")

_NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "dicomweb_url")
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _base_of(url: str) -> str | None:
    head, sep, _tail = url.partition("/studies/")
    return head if sep else None


@pd.api.extensions.register_dataframe_accessor("imaging")
class ImagingAccessor:
    """The ``df.imaging`` namespace (see the module docstring)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    # -- grouping -----------------------------------------------------------------------

    def _check(self) -> None:
        missing = [c for c in _NEEDED if c not in self._frame.columns]
        if missing:
            raise InvalidInputError(
                f"df.imaging needs the columns {missing}: use a frame from cohort.studies()"
            )

    def _bridge(self, bridge: Bridge | None) -> Bridge | None:
        if bridge is not None:
            return bridge
        from imagingkit.bridge import live_bridge

        return live_bridge(self._frame.attrs.get("imagingkit") or {})

    def _groups(self, bridge: Bridge | None) -> Iterator[tuple[DicomWebClient, pd.DataFrame]]:
        """(client, rows) per DICOMweb service; rows without a location are skipped."""
        self._check()
        frame = self._frame[self._frame["dicomweb_url"].notna()]
        frame = frame[frame["SeriesInstanceUID"].notna()]
        bases = frame["dicomweb_url"].map(_base_of)
        if "dicomweb_requires_token" in frame.columns:
            flags = (
                frame["dicomweb_requires_token"]
                .astype(object)
                .where(frame["dicomweb_requires_token"].notna(), None)
            )
        else:
            flags = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        owner = self._bridge(bridge)
        keys = pd.Series(list(zip(bases, flags, strict=True)), index=frame.index)
        for (base, flag), rows in frame.groupby(keys, sort=False):
            if base is None:
                continue
            yield _client(owner, base, flag), rows

    def _bulk(self, call: str, bridge: Bridge | None, **kwargs: Any) -> BulkResult:
        from imagingkit.dicomweb import bulk

        merged: BulkResult | None = None
        for client, rows in self._groups(bridge):
            result = getattr(bulk, call)(client, rows, **kwargs)
            if merged is None:
                merged = result
            else:
                merged.results.update(result.results)
                merged.failures = pd.concat([merged.failures, result.failures], ignore_index=True)
        return merged if merged is not None else bulk.BulkResult()

    # -- metadata and objects -----------------------------------------------------------

    def metadata(
        self, *, executor: Any = None, progress: bool = True, bridge: Bridge | None = None
    ) -> pd.DataFrame:
        """Instance-level DICOM metadata of every series (WADO-RS, PS3.18 §10.4.1.1.2).

        One row per instance, columns named by DICOM keyword; series that failed are
        listed in ``result.attrs["failures"]`` (key, url, status, error).
        """
        from imagingkit.dicomweb.client import dataset_keywords

        result = self._bulk("fetch_metadata", bridge, executor=executor, progress=progress)
        rows = [
            {"SeriesInstanceUID": series, **dataset_keywords(item)}
            for series, items in result.results.items()
            for item in items
        ]
        frame = pd.DataFrame(rows)
        frame.attrs["failures"] = result.failures.to_dict("records")
        return frame

    def instances(
        self, *, executor: Any = None, progress: bool = True, bridge: Bridge | None = None
    ) -> BulkResult:
        """pydicom Datasets of every series: ``{SeriesInstanceUID: [Dataset, …]}`` (+ failures)."""
        return self._bulk(
            "fetch_series", bridge, output="datasets", executor=executor, progress=progress
        )

    def pixels(
        self, *, executor: Any = None, progress: bool = True, bridge: Bridge | None = None
    ) -> dict[str, list[np.ndarray]]:
        """Per series, each instance's pixels with the Modality LUT applied (PS3.3 C.11.1)."""
        from imagingkit.dicomweb.pixels import instance_pixels

        datasets = self.instances(executor=executor, progress=progress, bridge=bridge)
        return {
            uid: [instance_pixels(ds) for ds in items] for uid, items in datasets.results.items()
        }

    def volume(
        self, *, executor: Any = None, progress: bool = True, bridge: Bridge | None = None
    ) -> Volume | dict[str, Volume]:
        """Each series as a 3-D :class:`~imagingkit.dicomweb.volume.Volume` ordered by
        geometry (spacing, orientation, positions); one series gives the Volume itself.

        Raises
        ------
        ImagingKitError
            If every series failed (the first failure is named).
        """
        result = self._bulk(
            "fetch_series", bridge, output="volume", executor=executor, progress=progress
        )
        if not result.results:
            result.raise_for_failures()
            raise InvalidInputError("no series with a DICOMweb location in this frame")
        if len(result.results) == 1 and result.ok:
            return next(iter(result.results.values()))
        return dict(result.results)

    def frames(
        self,
        frames: Sequence[int] | None = (1,),
        *,
        decode: bool = True,
        media_type: str = "application/octet-stream",
        executor: Any = None,
        progress: bool = True,
        bridge: Bridge | None = None,
    ) -> BulkResult:
        """Frames of each instance row (WADO-RS frames, PS3.18 §10.4.1.1.4).

        Needs an instance-level frame (``cohort.studies(level="instance")``). One task
        per instance on *executor* (DESIGN.md D2); instances that fail are listed in
        ``result.failures`` and the others returned (D9).

        .. versionchanged:: 0.1.0 (unreleased)
           Frames are decoded to numpy by default; ``decode=False`` gives what this
           method returned before (the raw bytes), now with their media types.

        Parameters
        ----------
        frames : sequence of int or None
            1-based frame numbers (default the first); None for every frame (Number of
            Frames from the metadata).
        decode : bool
            ``True``: ``{SOPInstanceUID: numpy.ndarray}`` of shape
            ``(frames, rows, columns)`` — a trailing samples axis for colour — in the
            order asked, with the Modality LUT applied as :meth:`pixels` and
            :meth:`volume` apply it (PS3.3 C.11.1: Hounsfield units for CT; colour as
            RGB). Native frames are read with the series metadata
            (:func:`imagingkit.dicomweb.pixels.native_frames`); YBR colour, lossy
            compressed, Modality LUT Sequence or otherwise unreadable frames are decoded
            from the instance by pydicom (:func:`~imagingkit.dicomweb.pixels.instance_pixels`),
            so the values are those of pydicom's ``pixel_array``. ``False``:
            ``{SOPInstanceUID: [Part]}``, the raw frames as sent, each with its media
            type (``part.content_type``, ``part.transfer_syntax``) and ``part.payload``.
        media_type : str
            With ``decode=False``, the media type asked for (``image/jpeg``,
            ``image/jp2`` …; default native ``application/octet-stream``).
        executor, progress, bridge
            As :meth:`volume`.

        Returns
        -------
        BulkResult
            Keyed by SOPInstanceUID: ``result[sop]``, ``result.results``,
            ``result.failures``.

        Raises
        ------
        InvalidInputError
            Without a SOPInstanceUID column, or for a frame number below 1.
        """
        from imagingkit.dicomweb import bulk

        if "SOPInstanceUID" not in self._frame.columns:
            raise InvalidInputError("frames() needs instance rows: studies(level='instance')")
        wanted = None if frames is None else [int(f) for f in frames]
        if wanted is not None and (not wanted or min(wanted) < 1):
            raise InvalidInputError(f"frame numbers {frames!r} must be positive (1-based)")
        merged: BulkResult[Any] = bulk.BulkResult()
        for client, rows in self._groups(bridge):
            rows = rows[rows["SOPInstanceUID"].map(lambda v: isinstance(v, str))]
            rows = rows.drop_duplicates("SOPInstanceUID")
            if rows.empty:
                continue
            headers = _instance_headers(client, rows, executor) if decode else {}
            items = [
                _FrameTask(client, study, series, sop, wanted, headers.get(sop), media_type)
                for study, series, sop in rows[
                    ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
                ].itertuples(index=False)
            ]
            result = bulk.run_bulk(
                _decoded_frames if decode else _raw_frames,
                items,
                keys=[t.sop for t in items],
                urls=[
                    f"{client.base_url}/studies/{t.study}/series/{t.series}/instances/{t.sop}"
                    for t in items
                ],
                executor=executor,
                progress=progress,
                desc="frames",
                workers=client.settings.concurrency,
            )
            merged.results.update(result.results)
            merged.failures = pd.concat([merged.failures, result.failures], ignore_index=True)
        return merged

    def thumbnails(
        self,
        *,
        size: int = 128,
        executor: Any = None,
        progress: bool = True,
        bridge: Bridge | None = None,
    ) -> BulkResult:
        """One JPEG thumbnail per series (Sup 203 ``/thumbnail``, else ``/rendered``)."""
        return self._bulk(
            "fetch_thumbnails", bridge, size=size, executor=executor, progress=progress
        )

    def download(
        self,
        directory: str | Path,
        *,
        executor: Any = None,
        progress: bool = True,
        bridge: Bridge | None = None,
    ) -> BulkResult:
        """Save every series as Part-10 files under ``directory/<study>/<series>/``.

        Resumable: files already complete are not fetched again.
        """
        return self._bulk(
            "download", bridge, directory=directory, executor=executor, progress=progress
        )

    # -- looking at it ------------------------------------------------------------------

    def show(
        self,
        *,
        window: str | tuple[float, float] | None = None,
        max_series: int = 12,
        columns: int = 4,
        executor: Any = None,
        progress: bool = True,
        bridge: Bridge | None = None,
    ) -> Figure:
        """A matplotlib montage: the middle slice of each series.

        Parameters
        ----------
        window : str or (center, width), optional
            A preset (``lung``, ``mediastinum``, ``bone``, ``brain``, ``abdomen``) or a
            window in the volume's units (HU for CT); default: each image's range.
        max_series : int
            At most this many series (the first rows).
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from imagingkit.render.lut import window_preset

        chosen = window_preset(window) if isinstance(window, str) else None
        unique = self._frame.drop_duplicates("SeriesInstanceUID").head(max_series)
        volumes = ImagingAccessor(unique).volume(
            executor=executor, progress=progress, bridge=bridge
        )
        if not isinstance(volumes, dict):
            volumes = {volumes.series_uid: volumes}
        count = max(1, len(volumes))
        cols = min(columns, count)
        rows = (count + cols - 1) // cols
        figure, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for axis in axes.flat:
            axis.axis("off")
        labels = dict(
            zip(
                unique["SeriesInstanceUID"],
                unique.get("Modality", unique["SeriesInstanceUID"]),
                strict=True,
            )
        )
        for axis, (uid, volume) in zip(axes.flat, volumes.items(), strict=False):
            image = np.asarray(volume.array[volume.array.shape[0] // 2], dtype=np.float64)
            if chosen is not None:
                low, high = chosen.center - chosen.width / 2, chosen.center + chosen.width / 2
            elif isinstance(window, tuple):
                low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
            else:
                low, high = float(np.min(image)), float(np.max(image))
            axis.imshow(image, cmap="gray", vmin=low, vmax=high)
            axis.set_title(f"{labels.get(uid, '')} …{uid[-8:]}", fontsize=8)
        figure.tight_layout()
        return figure

    def viewer_urls(self, viewer: str = "builtin", **options: Any) -> pd.Series:
        """A deep link per row opening its study (and series) in *viewer*.

        Uses :func:`imagingkit.iid.viewer_url` (OHIF, Orthanc/Stone, Weasis, the built-in
        viewer, URL templates …); rows without a DICOMweb location give ``None``.
        """
        from imagingkit.iid import viewer_url

        self._check()
        out: list[str | None] = []
        for _index, row in self._frame.iterrows():
            url = row["dicomweb_url"]
            base = _base_of(url) if isinstance(url, str) else None
            if base is None:
                out.append(None)
                continue
            series = row["SeriesInstanceUID"]
            out.append(
                viewer_url(
                    viewer,
                    study_uid=row["StudyInstanceUID"],
                    series_uid=series if isinstance(series, str) else None,
                    dicomweb_base=base,
                    accession_number=_text(row.get("AccessionNumber")),
                    lenient=True,
                    **options,
                )
            )
        return pd.Series(out, index=self._frame.index, dtype="string", name="viewer_url")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _FrameTask(NamedTuple):
    """One instance's frames to retrieve (plain data: it may cross to a dask worker)."""

    client: DicomWebClient
    study: str
    series: str
    sop: str
    frames: list[int] | None
    header: dict[str, Any] | None
    media_type: str


def _instance_headers(
    client: DicomWebClient, rows: pd.DataFrame, executor: Any
) -> dict[str, dict[str, Any]]:
    """DICOM JSON metadata by SOPInstanceUID, from each series' metadata (cached)."""
    from imagingkit.dicomweb.bulk import fetch_metadata

    result = fetch_metadata(client, rows, executor=executor, progress=False)
    headers: dict[str, dict[str, Any]] = {}
    for items in result.results.values():
        for item in items:
            values = (item.get("00080018") or {}).get("Value") or []
            if values:
                headers[str(values[0])] = item
    return headers


def _frame_count(header: dict[str, Any] | None) -> int:
    values = ((header or {}).get("00280008") or {}).get("Value") or [1]
    return int(values[0] or 1)


def _raw_frames(task: _FrameTask) -> list[Any]:
    numbers = task.frames or list(range(1, _frame_count(_metadata(task)) + 1))
    return task.client.retrieve_frames(
        task.study, task.series, task.sop, numbers, media_type=task.media_type
    )


def _metadata(task: _FrameTask) -> dict[str, Any] | None:
    found = task.client.retrieve_metadata(task.study, task.series, task.sop)
    return found[0] if found else None


def _decoded_frames(task: _FrameTask) -> np.ndarray:
    """The frames as numpy: native frames read with the metadata, else the instance
    decoded by pydicom (see :meth:`ImagingAccessor.frames`)."""
    import numpy as np

    from imagingkit.dicomweb.pixels import native_frames

    header = task.header if task.header is not None else _metadata(task)
    numbers = task.frames or list(range(1, _frame_count(header) + 1))
    if header is not None and not _lossy(header):
        try:
            parts = task.client.retrieve_frames(
                task.study, task.series, task.sop, numbers, transfer_syntax=_EXPLICIT_LE
            )
        except DICOMwebError as error:  # e.g. a server that cannot transcode this one
            log.info("native frames refused (%s): decoding the instance", error)
            parts = []
        native = all(
            p.content_type == "application/octet-stream"
            and p.transfer_syntax in (None, _EXPLICIT_LE)
            for p in parts
        )
        if native and len(parts) == len(numbers):
            decoded = native_frames([p.payload for p in parts], header)
            if decoded is not None:
                return decoded
    pixels = task.client.instance_pixels(task.study, task.series, task.sop, frames=numbers)
    return pixels[np.newaxis] if len(numbers) == 1 else pixels


def _lossy(header: dict[str, Any]) -> bool:
    """Lossy Image Compression (0028,2110) = 01: a server's decoder may differ from
    pydicom's, so such instances are decoded by pydicom."""
    values = (header.get("00282110") or {}).get("Value") or []
    return bool(values) and str(values[0]).strip() == "01"


def _client(bridge: Bridge | None, base: str, flag: Any) -> DicomWebClient:
    token = flag if isinstance(flag, bool) else None
    if bridge is not None:
        return bridge.dicomweb_client(base, requires_access_token=token)
    from imagingkit.dicomweb.client import DicomWebClient

    return DicomWebClient(base)

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

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from imagingkit.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from imagingkit.bridge import Bridge
    from imagingkit.dicomweb.bulk import BulkResult
    from imagingkit.dicomweb.client import DicomWebClient
    from imagingkit.dicomweb.volume import Volume

__all__ = ["ImagingAccessor"]

_NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "dicomweb_url")


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
        frames: tuple[int, ...] = (1,),
        *,
        media_type: str = "application/octet-stream",
        bridge: Bridge | None = None,
    ) -> dict[str, list[bytes]]:
        """Frames of each instance row (PS3.18 §10.4.1.1.3): ``{SOPInstanceUID: [bytes]}``.

        Needs an instance-level frame (``cohort.studies(level="instance")``).
        """
        if "SOPInstanceUID" not in self._frame.columns:
            raise InvalidInputError("frames() needs instance rows: studies(level='instance')")
        out: dict[str, list[bytes]] = {}
        for client, rows in self._groups(bridge):
            for study, series, sop in rows[
                ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
            ].itertuples(index=False):
                if isinstance(sop, str):
                    parts = client.retrieve_frames(
                        study, series, sop, list(frames), media_type=media_type
                    )
                    out[sop] = [part.payload for part in parts]
        return out

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


def _client(bridge: Bridge | None, base: str, flag: Any) -> DicomWebClient:
    token = flag if isinstance(flag, bool) else None
    if bridge is not None:
        return bridge.dicomweb_client(base, requires_access_token=token)
    from imagingkit.dicomweb.client import DicomWebClient

    return DicomWebClient(base)

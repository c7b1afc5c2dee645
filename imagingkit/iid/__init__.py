"""IHE Invoke Image Display: the request model, viewer deep links and the facade.

* :class:`IIDRequest` — a validated RAD-106 request, parsed from or written to a URL;
* :mod:`imagingkit.iid.viewers` — adapters that turn studies into a viewer's own
  deep link (OHIF, Orthanc, Stone, Weasis, Slim, URL templates, IID pass-through, the
  built-in viewer) and :func:`viewer_url` for notebooks;
* :mod:`imagingkit.iid.facade` — the ``GET /iid/IHEInvokeImageDisplay`` endpoint.
"""

from imagingkit.iid.links import LaunchLink, launch_link
from imagingkit.iid.patient import PatientID
from imagingkit.iid.request import IIDRequest, RequestType
from imagingkit.iid.viewers import ViewerRegistry, load_viewers, viewer_url

__all__ = [
    "IIDRequest",
    "LaunchLink",
    "PatientID",
    "RequestType",
    "ViewerRegistry",
    "launch_link",
    "load_viewers",
    "viewer_url",
]

"""imagingkit: a Jupyter research environment for medical imaging on FHIR.

Quick start::

    $ imagingkit serve --sandbox --port 8042      # FHIR + DICOMweb sandbox on loopback

See README.md for the notebooks and ARCHITECTURE.md for the map of the code.
"""

from imagingkit.errors import ImagingKitError

__version__ = "0.1.0"

__all__ = ["ImagingKitError", "__version__"]

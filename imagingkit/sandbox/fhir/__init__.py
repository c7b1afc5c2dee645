"""The sandbox's embedded FHIR R4 server: SQLite storage, REST interactions and search.

Public entry point: :class:`FhirStore` (a server component mounted at ``{base_url}fhir``).
See :mod:`.representation` for how ``Endpoint.address`` placeholders
(``urn:imagingkit:dicomweb-base``) are rendered as the app's absolute DICOMweb URL.
"""

from imagingkit.sandbox.fhir.store import FhirStore

__all__ = ["FhirStore"]

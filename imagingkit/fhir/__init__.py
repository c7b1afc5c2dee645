"""FHIR access on fhirpy: cohorts, paging, Endpoint resolution, ImagingStudy → DataFrame.

Modules: :mod:`.client` (the fhirpy client with imagingkit's auth, session and errors),
:mod:`.capabilities` (what a server can search), :mod:`.criteria` and :mod:`.plan`
(cohort criteria and the server/client split), :mod:`.cohort` (the builder),
:mod:`.endpoints` (where pixels live), :mod:`.model` and :mod:`.flatten` (fast decoding and
the DataFrame contract of DESIGN.md D6), :mod:`.fill_in` (QIDO-RS fill-in).
"""

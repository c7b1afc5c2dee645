"""The reference FHIR engine for the differential tests (Node script + Python launcher)."""

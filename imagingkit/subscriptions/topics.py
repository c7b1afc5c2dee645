"""Subscription topics the embedded FHIR store defines (Subscriptions Backport IG, topics).

In FHIR R4 a topic is named by its canonical URL (``Subscription.criteria`` of a
``backport-subscription``); clients cannot invent topics, they use the ones a server
defines. The host ``imagingkit.invalid`` is reserved by RFC 6761 and never resolves, so
the canonical cannot be mistaken for a server address.
"""

from __future__ import annotations

__all__ = ["BACKPORT_SUBSCRIPTION_PROFILE", "IMAGINGSTUDY_TOPIC"]

#: "ImagingStudy created or updated": fires on every create or update of an ImagingStudy
#: (a STOW-RS of a new study, a new series, a status change); filters are ImagingStudy
#: search parameters, e.g. ``ImagingStudy?patient=Patient/p1``.
IMAGINGSTUDY_TOPIC = (
    "http://imagingkit.invalid/fhir/SubscriptionTopic/imagingstudy-created-or-updated"
)

#: ``Subscription.meta.profile`` of a topic-based R4 Subscription (Backport IG).
BACKPORT_SUBSCRIPTION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
)

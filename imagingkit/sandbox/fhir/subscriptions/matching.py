"""Which written resources a Subscription matches, decided by the store's own search engine.

A Subscription's criteria (R4 legacy) or topic filter (Backport) is a parsed
:class:`~imagingkit.sandbox.fhir.search.SearchRequest`; a batch of written resources
matches where the same search restricted by ``_id`` to their ids finds them. So a
Subscription matches exactly what a client running that search right after the commit
would find (modifiers, chains, ``_has`` included), with no second matcher to disagree.

The same engine screens deliveries for a patient-restricted audience: a resource is
visible when it is a granted Patient, an Endpoint (public service configuration), or a
compartment resource whose ``patient`` search parameter names a granted Patient — the
rules :mod:`imagingkit.sandbox.authz` applies to reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from imagingkit.sandbox.authz import COMPARTMENT_TYPES, PUBLIC_TYPES
from imagingkit.sandbox.fhir.search import SearchRequest, parse_search
from imagingkit.sandbox.fhir.searchset import Searcher
from imagingkit.sandbox.fhir.storage import Storage, Stored
from imagingkit.sandbox.fhir.subscriptions.model import SubscriptionSpec
from imagingkit.sandbox.fhir.subscriptions.tokens import Audience

__all__ = ["Matcher"]

_CHUNK = 500


def _restricted(search: SearchRequest, extra: list[tuple[str, str]]) -> SearchRequest:
    more = parse_search(search.resource_type, extra, strict=True)
    return dataclasses.replace(
        search, criteria=[*search.criteria, *more.criteria], sort=[], includes=[]
    )


class Matcher:
    """Matches written versions against Subscriptions and screens audiences.

    Parameters
    ----------
    storage : Storage
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.searcher = Searcher(storage)

    def _found(
        self, search: SearchRequest, ids: Sequence[str], extra: list[tuple[str, str]]
    ) -> set[int]:
        rids: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ",".join(ids[start : start + _CHUNK])
            rids.update(self.searcher.match_rids(_restricted(search, [("_id", chunk), *extra])))
        return rids

    def matching(self, spec: SubscriptionSpec, written: Sequence[Stored]) -> list[Stored]:
        """The versions of *written* (creates and updates) that *spec* matches, one per
        resource (its last version in the batch), in write order."""
        last: dict[str, Stored] = {}
        for stored in written:
            if stored.type == spec.resource_type and not stored.deleted:
                last.pop(stored.id, None)
                last[stored.id] = stored
        if not last:
            return []
        rids = self._found(spec.search, list(last), [])
        return [s for s in last.values() if s.rid in rids]

    def visible(self, audience: Audience, focus: Stored) -> bool:
        """Whether *audience* may see *focus* (always, for an unrestricted audience)."""
        if not audience.restricted:
            return True
        if audience.readable is not None and focus.type not in audience.readable | PUBLIC_TYPES:
            return False
        patients = audience.patients
        if patients is None or focus.type in PUBLIC_TYPES:
            return True
        if focus.type == "Patient":
            return focus.id in patients
        if focus.type not in COMPARTMENT_TYPES or not patients:
            return False
        refs = ",".join(f"Patient/{p}" for p in sorted(patients))
        search = SearchRequest(focus.type)
        return focus.rid in self._found(search, [focus.id], [("patient", refs)])

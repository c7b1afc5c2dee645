"""The store's CapabilityStatement, generated from the code's own tables (R4 http §3.1.0.14).

Resources come from :data:`.searchparams.RESOURCE_TYPES`, search parameters from
:data:`.searchparams.SEARCH_PARAMETERS` and :data:`.searchparams.COMMON_PARAMETERS`,
includes from the reference parameters and modifiers from :mod:`.search`, so the
statement cannot advertise something the server does not do.
"""

from __future__ import annotations

from typing import Any

from imagingkit import __version__
from imagingkit.sandbox.fhir.search import MAX_COUNT, MODIFIERS, PREFIXES
from imagingkit.sandbox.fhir.searchparams import (
    COMMON_PARAMETERS,
    RESOURCE_TYPES,
    SEARCH_PARAMETERS,
    SearchParam,
)
from imagingkit.sandbox.fhir.subscriptions.discovery import advertise_subscriptions

__all__ = ["INSTANCE_INTERACTIONS", "SYSTEM_INTERACTIONS", "capability_statement"]

#: Type- and instance-level interactions of every served type (R4 TypeRestfulInteraction).
INSTANCE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
#: Whole-system interactions (R4 SystemRestfulInteraction).
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")


def _documentation(param: SearchParam) -> str:
    modifiers = sorted(MODIFIERS[param.type])
    text = f"R4 {param.type} parameter on {param.expression}."
    if param.type in ("date", "number", "quantity"):
        text += f" Prefixes: {' '.join(PREFIXES)}."
    if param.type == "reference":
        text += " Chaining, :Type, :identifier and _has are supported."
        modifiers.append("[type]")
    if modifiers:
        text += f" Modifiers: {', '.join(':' + m for m in modifiers)}."
    return text


def _search_param(param: SearchParam) -> dict[str, Any]:
    return {
        "name": param.name,
        "definition": param.definition,
        "type": param.type,
        "documentation": _documentation(param),
    }


def _resource(rtype: str) -> dict[str, Any]:
    params = list(SEARCH_PARAMETERS[rtype].values())
    references = [p.name for p in params if p.type == "reference"]
    revincludes = sorted(
        f"{source}:{p.name}"
        for source in RESOURCE_TYPES
        for p in SEARCH_PARAMETERS[source].values()
        if p.type == "reference" and p.refers_to(rtype)
    )
    return {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": code} for code in INSTANCE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "enforced", "local"],
        "searchInclude": [f"{rtype}:{name}" for name in references] + [f"{rtype}:*"],
        "searchRevInclude": revincludes,
        "searchParam": [_search_param(p) for p in [*COMMON_PARAMETERS.values(), *params]],
    }


def capability_statement(fhir_base: str, *, date: str) -> dict[str, Any]:
    """Return the CapabilityStatement of the store served at *fhir_base*.

    Parameters
    ----------
    fhir_base : str
        The absolute FHIR base URL (``implementation.url``).
    date : str
        When the statement was produced (a FHIR dateTime).
    """
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "imagingkit",
        "kind": "instance",
        "software": {"name": "imagingkit embedded FHIR store", "version": __version__},
        "implementation": {
            "description": "imagingkit sandbox FHIR R4 store (SQLite)",
            "url": fhir_base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Search: _count up to {MAX_COUNT} (larger values are capped with a "
                    "warning); _sort, _total, _summary, _elements, _include, _revinclude "
                    "(with :iterate), chaining and _has. Unknown parameters are ignored "
                    "unless 'Prefer: handling=strict'. System search GET [base]?_type=A,B "
                    "(or every type without _type) takes parameters common to the searched "
                    "types; one that only some of them define is a 400. PATCH takes a JSON "
                    "Patch (application/json-patch+json; in Bundles a Binary), not FHIRPath "
                    "Patch."
                ),
                "resource": [_resource(t) for t in RESOURCE_TYPES],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                # R4 search §3.1.1.3: a system search takes the parameters common to the
                # searched types; these are common to every type
                "searchParam": [_search_param(p) for p in COMMON_PARAMETERS.values()],
            }
        ],
    }
    return advertise_subscriptions(statement, fhir_base)

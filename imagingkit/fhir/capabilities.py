"""What a FHIR server says it can search: read from its CapabilityStatement.

The cohort planner pushes a criterion to the server only where this says the server
can evaluate it, and joins on the client otherwise (issue 4 point 2).

R4 has structured elements for search parameters (``rest.resource.searchParam``) and
includes (``searchInclude``/``searchRevInclude``) but none for chaining or ``_has``
(R4 CapabilityStatement; search §3.1.1.4.5-6). imagingkit therefore takes them as
supported when the statement lists ``_has`` as a search parameter (as some servers do) or
names them in its documentation text (``rest.documentation`` or a reference parameter's
``documentation``, as the embedded store does); otherwise it assumes they are not.

A server without a CapabilityStatement (some answer ``/metadata`` with something else)
gets the conservative :data:`BASELINE`: the R4 token, reference and date parameters
every engine implements, and no chaining, ``_has``, ``_include`` or quantity search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BASELINE", "Capabilities"]

#: Parameters assumed without a CapabilityStatement (R4 search parameters of each type).
BASELINE: dict[str, frozenset[str]] = {
    "Patient": frozenset({"_id", "gender", "birthdate", "identifier"}),
    "Condition": frozenset({"_id", "code", "subject", "patient"}),
    "Observation": frozenset({"_id", "code", "subject", "patient"}),
    "ImagingStudy": frozenset(
        {"_id", "identifier", "modality", "bodysite", "started", "patient", "subject"}
    ),
    "Endpoint": frozenset({"_id"}),
}


def _mentions(text: Any, *words: str) -> bool:
    lowered = text.lower() if isinstance(text, str) else ""
    return any(word in lowered for word in words)


@dataclass(frozen=True)
class Capabilities:
    """The search abilities of one FHIR server.

    Attributes
    ----------
    declared : bool
        Whether a CapabilityStatement was found (else :data:`BASELINE` applies).
    params : mapping
        Resource type → names of its search parameters (``"*"`` for rest-level ones).
    includes, revincludes : mapping
        Resource type → the ``_include`` / ``_revinclude`` values it lists.
    chaining, reverse_chaining : bool
        Whether chained parameters and ``_has`` are supported.
    software : str
        ``software.name`` (for :meth:`Cohort.explain`).
    """

    declared: bool = False
    params: Mapping[str, frozenset[str]] = field(default_factory=dict)
    includes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    revincludes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    chaining: bool = False
    reverse_chaining: bool = False
    software: str = ""

    @classmethod
    def baseline(cls) -> Capabilities:
        """What is assumed of a server without a CapabilityStatement."""
        return cls(declared=False, params=BASELINE)

    @classmethod
    def from_statement(cls, statement: Mapping[str, Any] | None) -> Capabilities:
        """Read a CapabilityStatement (R4 §3.1.0.14); anything else gives :meth:`baseline`."""
        if not isinstance(statement, Mapping) or statement.get("resourceType") != (
            "CapabilityStatement"
        ):
            return cls.baseline()
        params: dict[str, set[str]] = {}
        includes: dict[str, frozenset[str]] = {}
        revincludes: dict[str, frozenset[str]] = {}
        chaining = reverse = False
        for rest in statement.get("rest") or []:
            if not isinstance(rest, Mapping) or rest.get("mode", "server") != "server":
                continue
            doc = rest.get("documentation")
            chaining |= _mentions(doc, "chaining", "chained")
            reverse |= _mentions(doc, "_has", "reverse chain")
            for param in rest.get("searchParam") or []:
                params.setdefault("*", set()).add(str(param.get("name")))
            for resource in rest.get("resource") or []:
                kind = str(resource.get("type"))
                names = params.setdefault(kind, set())
                for param in resource.get("searchParam") or []:
                    names.add(str(param.get("name")))
                    doc = param.get("documentation")
                    if param.get("type") == "reference":
                        chaining |= _mentions(doc, "chaining", "chained")
                        reverse |= _mentions(doc, "_has", "reverse chain")
                includes[kind] = frozenset(map(str, resource.get("searchInclude") or []))
                revincludes[kind] = frozenset(map(str, resource.get("searchRevInclude") or []))
        reverse |= any("_has" in names for names in params.values())
        software = statement.get("software") or {}
        return cls(
            declared=True,
            params={k: frozenset(v) for k, v in params.items()},
            includes=includes,
            revincludes=revincludes,
            chaining=chaining,
            reverse_chaining=reverse,
            software=str(software.get("name", "")) if isinstance(software, Mapping) else "",
        )

    def supports(self, resource_type: str, param: str) -> bool:
        """Whether ``resource_type`` can be searched by *param*."""
        return param in self.params.get(resource_type, ()) or param in self.params.get("*", ())

    def supports_include(self, resource_type: str, param: str) -> bool:
        """Whether ``_include={resource_type}:{param}`` is listed."""
        listed = self.includes.get(resource_type, frozenset())
        return (
            f"{resource_type}:{param}" in listed
            or "*" in listed
            or (f"{resource_type}:*" in listed)
        )

    def can_chain(self, resource_type: str, reference: str, target: str, param: str) -> bool:
        """Whether ``{reference}.{param}`` (a chained parameter) can be searched."""
        return (
            self.chaining
            and self.supports(resource_type, reference)
            and self.supports(target, param)
        )

    def can_reverse_chain(self, source: str, reference: str, param: str) -> bool:
        """Whether ``_has:{source}:{reference}:{param}`` can be searched."""
        return (
            self.reverse_chaining
            and self.supports(source, reference)
            and self.supports(source, param)
        )

    def describe(self) -> str:
        """One line for :meth:`Cohort.explain`."""
        if not self.declared:
            return "no CapabilityStatement: baseline R4 parameters, joins on the client"
        features = [
            name
            for name, on in (("chaining", self.chaining), ("_has", self.reverse_chaining))
            if on
        ]
        what = ", ".join(features) if features else "no chaining or _has"
        return f"CapabilityStatement of {self.software or 'the server'}: {what}"

"""The R4 search parameters the embedded FHIR store supports (R4 search §3.1.1).

One table drives indexing (:mod:`.indexing`), query compilation (:mod:`.search`) and the
CapabilityStatement (:mod:`.capability`), so the server can only advertise what it does.
Each row is written from the R4 (4.0.1) SearchParameter definition: the code, the type,
the FHIRPath ``expression`` restricted to the resource (evaluated by :mod:`.paths`), the
reference ``target`` types and the canonical URL of the definition. Note for instance that
ImagingStudy ``modality`` is defined on ``ImagingStudy.series.modality`` and ``bodysite`` on
``ImagingStudy.series.bodySite``, not on study-level elements.

Not supported: ``_text``, ``_content``, ``_query``, ``_list``, ``phonetic`` and other
parameters that need full-text or terminology services.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagingkit.sandbox.fhir.paths import Expression, compile_expression

__all__ = [
    "COMMON_PARAMETERS",
    "RESOURCE_TYPES",
    "SEARCH_PARAMETERS",
    "SearchParam",
    "search_param",
]

#: The parameter types of R4 search §3.1.1.4 that this store implements.
PARAM_TYPES = ("number", "date", "string", "token", "reference", "composite", "quantity", "uri")

_CANONICAL = "http://hl7.org/fhir/SearchParameter/"


@dataclass(frozen=True)
class Component:
    """One part of a composite parameter: its value type and relative expression."""

    type: str
    expression: Expression


@dataclass(frozen=True)
class SearchParam:
    """An R4 SearchParameter as this store uses it.

    Attributes
    ----------
    base : str
        The resource type it applies to (``"*"`` for the Resource-level ones).
    name : str
        The ``code`` used in URLs (``modality``, ``_lastUpdated``).
    type : str
        One of :data:`PARAM_TYPES`.
    expression : str
        The R4 FHIRPath expression, restricted to *base*.
    definition : str
        Canonical URL of the R4 SearchParameter.
    compiled : Expression
        *expression* compiled by :func:`.paths.compile_expression`.
    targets : tuple of str
        Resource types a reference parameter may point to (empty: any type, as R4's
        ``Reference(Any)``).
    components : tuple of Component
        For composite parameters, the parts in order (``code$value``).
    """

    base: str
    name: str
    type: str
    expression: str
    definition: str
    compiled: Expression = field(repr=False, compare=False)
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()

    def refers_to(self, resource_type: str) -> bool:
        """Whether this reference parameter may point at *resource_type* (no targets: any)."""
        return not self.targets or resource_type in self.targets

    def served_targets(self) -> tuple[str, ...]:
        """The target types this store serves (every served type if any type is allowed)."""
        return tuple(t for t in RESOURCE_TYPES if self.refers_to(t))


def _p(
    base: str,
    name: str,
    type_: str,
    expression: str,
    targets: str = "",
    *,
    sp_id: str | None = None,
    components: tuple[tuple[str, str], ...] = (),
    evaluated: str | None = None,
) -> SearchParam:
    """One table row; *evaluated* replaces an R4 expression beyond :mod:`.paths`' subset
    (its values are then computed by the indexer, see ``indexing._deceased``)."""
    if type_ not in PARAM_TYPES:
        raise ValueError(f"unknown search parameter type {type_!r}")
    if base == "*":  # Resource-level: evaluated relative to any resource
        compiled = compile_expression(expression.removeprefix("Resource."), None)
    else:
        compiled = compile_expression(evaluated or expression, base)
    return SearchParam(
        base=base,
        name=name,
        type=type_,
        expression=expression,
        definition=_CANONICAL + (sp_id or f"{base}-{name}"),
        targets=tuple(targets.split()),
        components=tuple(Component(t, compile_expression(e, None)) for t, e in components),
        compiled=compiled,
    )


#: Resource-level parameters (R4 Resource search parameters) valid on every type.
#: ``_id`` is answered from the resource table, the others from the index.
COMMON_PARAMETERS: dict[str, SearchParam] = {
    p.name: p
    for p in (
        _p("*", "_id", "token", "Resource.id", sp_id="Resource-id"),
        _p("*", "_lastUpdated", "date", "Resource.meta.lastUpdated", sp_id="Resource-lastUpdated"),
        _p("*", "_tag", "token", "Resource.meta.tag", sp_id="Resource-tag"),
        _p("*", "_security", "token", "Resource.meta.security", sp_id="Resource-security"),
        _p("*", "_profile", "uri", "Resource.meta.profile", sp_id="Resource-profile"),
        _p("*", "_source", "uri", "Resource.meta.source", sp_id="Resource-source"),
    )
}

_PRACTITIONERS = "Practitioner Organization CareTeam PractitionerRole"

_TABLE: tuple[SearchParam, ...] = (
    # --- Patient (R4 Patient search parameters) ---
    _p("Patient", "active", "token", "Patient.active"),
    _p("Patient", "address", "string", "Patient.address", sp_id="individual-address"),
    _p(
        "Patient",
        "address-city",
        "string",
        "Patient.address.city",
        sp_id="individual-address-city",
    ),
    _p(
        "Patient",
        "address-country",
        "string",
        "Patient.address.country",
        sp_id="individual-address-country",
    ),
    _p(
        "Patient",
        "address-postalcode",
        "string",
        "Patient.address.postalCode",
        sp_id="individual-address-postalcode",
    ),
    _p(
        "Patient",
        "address-state",
        "string",
        "Patient.address.state",
        sp_id="individual-address-state",
    ),
    _p("Patient", "address-use", "token", "Patient.address.use", sp_id="individual-address-use"),
    _p("Patient", "birthdate", "date", "Patient.birthDate", sp_id="individual-birthdate"),
    _p("Patient", "death-date", "date", "(Patient.deceased as dateTime)"),
    # a boolean the indexer computes (see indexing._deceased)
    _p(
        "Patient",
        "deceased",
        "token",
        "Patient.deceased.exists() and Patient.deceased != false",
        evaluated="Patient.deceased",
    ),
    _p(
        "Patient",
        "email",
        "token",
        "Patient.telecom.where(system='email')",
        sp_id="individual-email",
    ),
    _p("Patient", "family", "string", "Patient.name.family", sp_id="individual-family"),
    _p("Patient", "gender", "token", "Patient.gender", sp_id="individual-gender"),
    _p(
        "Patient",
        "general-practitioner",
        "reference",
        "Patient.generalPractitioner",
        "Practitioner Organization PractitionerRole",
    ),
    _p("Patient", "given", "string", "Patient.name.given", sp_id="individual-given"),
    _p("Patient", "identifier", "token", "Patient.identifier"),
    _p("Patient", "language", "token", "Patient.communication.language"),
    _p("Patient", "link", "reference", "Patient.link.other", "Patient RelatedPerson"),
    _p("Patient", "name", "string", "Patient.name"),
    _p("Patient", "organization", "reference", "Patient.managingOrganization", "Organization"),
    _p(
        "Patient",
        "phone",
        "token",
        "Patient.telecom.where(system='phone')",
        sp_id="individual-phone",
    ),
    _p("Patient", "telecom", "token", "Patient.telecom", sp_id="individual-telecom"),
    # --- Condition ---
    _p(
        "Condition",
        "abatement-age",
        "quantity",
        "Condition.abatement.as(Age) | Condition.abatement.as(Range)",
    ),
    _p(
        "Condition",
        "abatement-date",
        "date",
        "Condition.abatement.as(dateTime) | Condition.abatement.as(Period)",
    ),
    _p("Condition", "abatement-string", "string", "Condition.abatement.as(string)"),
    _p(
        "Condition",
        "asserter",
        "reference",
        "Condition.asserter",
        "Practitioner Patient PractitionerRole RelatedPerson",
    ),
    _p("Condition", "body-site", "token", "Condition.bodySite"),
    _p("Condition", "category", "token", "Condition.category"),
    _p("Condition", "clinical-status", "token", "Condition.clinicalStatus"),
    _p("Condition", "code", "token", "Condition.code", sp_id="clinical-code"),
    _p("Condition", "encounter", "reference", "Condition.encounter", "Encounter"),
    _p("Condition", "evidence", "token", "Condition.evidence.code"),
    _p("Condition", "evidence-detail", "reference", "Condition.evidence.detail"),
    _p("Condition", "identifier", "token", "Condition.identifier", sp_id="clinical-identifier"),
    _p(
        "Condition",
        "onset-age",
        "quantity",
        "Condition.onset.as(Age) | Condition.onset.as(Range)",
    ),
    _p(
        "Condition",
        "onset-date",
        "date",
        "Condition.onset.as(dateTime) | Condition.onset.as(Period)",
    ),
    _p("Condition", "onset-info", "string", "Condition.onset.as(string)"),
    _p(
        "Condition",
        "patient",
        "reference",
        "Condition.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p("Condition", "recorded-date", "date", "Condition.recordedDate"),
    _p("Condition", "severity", "token", "Condition.severity"),
    _p("Condition", "stage", "token", "Condition.stage.summary"),
    _p("Condition", "subject", "reference", "Condition.subject", "Group Patient"),
    _p("Condition", "verification-status", "token", "Condition.verificationStatus"),
    # --- Observation ---
    _p(
        "Observation",
        "based-on",
        "reference",
        "Observation.basedOn",
        "CarePlan MedicationRequest NutritionOrder DeviceRequest ServiceRequest "
        "ImmunizationRecommendation",
    ),
    _p("Observation", "category", "token", "Observation.category"),
    _p("Observation", "code", "token", "Observation.code", sp_id="clinical-code"),
    _p(
        "Observation",
        "combo-code",
        "token",
        "Observation.code | Observation.component.code",
    ),
    _p(
        "Observation",
        "combo-data-absent-reason",
        "token",
        "Observation.dataAbsentReason | Observation.component.dataAbsentReason",
    ),
    _p(
        "Observation",
        "combo-value-concept",
        "token",
        "(Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)",
    ),
    _p(
        "Observation",
        "combo-value-quantity",
        "quantity",
        "(Observation.value as Quantity) | (Observation.value as SampledData) | "
        "(Observation.component.value as Quantity) | "
        "(Observation.component.value as SampledData)",
    ),
    _p("Observation", "component-code", "token", "Observation.component.code"),
    _p(
        "Observation",
        "component-data-absent-reason",
        "token",
        "Observation.component.dataAbsentReason",
    ),
    _p(
        "Observation",
        "component-value-concept",
        "token",
        "(Observation.component.value as CodeableConcept)",
    ),
    _p(
        "Observation",
        "component-value-quantity",
        "quantity",
        "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)",
    ),
    _p("Observation", "data-absent-reason", "token", "Observation.dataAbsentReason"),
    _p("Observation", "date", "date", "Observation.effective", sp_id="clinical-date"),
    _p(
        "Observation",
        "derived-from",
        "reference",
        "Observation.derivedFrom",
        "Media Observation ImagingStudy MolecularSequence QuestionnaireResponse DocumentReference",
    ),
    _p("Observation", "device", "reference", "Observation.device", "Device DeviceMetric"),
    _p(
        "Observation",
        "encounter",
        "reference",
        "Observation.encounter",
        "Encounter EpisodeOfCare",
        sp_id="clinical-encounter",
    ),
    _p("Observation", "focus", "reference", "Observation.focus"),
    _p(
        "Observation",
        "has-member",
        "reference",
        "Observation.hasMember",
        "Observation MolecularSequence QuestionnaireResponse",
    ),
    _p(
        "Observation",
        "identifier",
        "token",
        "Observation.identifier",
        sp_id="clinical-identifier",
    ),
    _p("Observation", "method", "token", "Observation.method"),
    _p(
        "Observation",
        "part-of",
        "reference",
        "Observation.partOf",
        "Immunization MedicationDispense MedicationAdministration Procedure ImagingStudy "
        "MedicationStatement",
    ),
    _p(
        "Observation",
        "patient",
        "reference",
        "Observation.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p(
        "Observation",
        "performer",
        "reference",
        "Observation.performer",
        "Practitioner Organization CareTeam Patient PractitionerRole RelatedPerson",
    ),
    _p("Observation", "specimen", "reference", "Observation.specimen", "Specimen"),
    _p("Observation", "status", "token", "Observation.status"),
    _p(
        "Observation",
        "subject",
        "reference",
        "Observation.subject",
        "Group Device Patient Location",
    ),
    _p(
        "Observation",
        "value-concept",
        "token",
        "(Observation.value as CodeableConcept)",
    ),
    _p(
        "Observation",
        "value-date",
        "date",
        "(Observation.value as dateTime) | (Observation.value as Period)",
    ),
    _p(
        "Observation",
        "value-quantity",
        "quantity",
        "(Observation.value as Quantity) | (Observation.value as SampledData)",
    ),
    _p(
        "Observation",
        "value-string",
        "string",
        "(Observation.value as string) | (Observation.value as CodeableConcept).text",
    ),
    _p(
        "Observation",
        "code-value-concept",
        "composite",
        "Observation",
        components=(("token", "code"), ("token", "value.as(CodeableConcept)")),
    ),
    _p(
        "Observation",
        "code-value-date",
        "composite",
        "Observation",
        components=(("token", "code"), ("date", "value.as(DateTime) | value.as(Period)")),
    ),
    _p(
        "Observation",
        "code-value-quantity",
        "composite",
        "Observation",
        components=(("token", "code"), ("quantity", "value.as(Quantity)")),
    ),
    _p(
        "Observation",
        "code-value-string",
        "composite",
        "Observation",
        components=(("token", "code"), ("string", "value.as(string)")),
    ),
    _p(
        "Observation",
        "combo-code-value-concept",
        "composite",
        "Observation | Observation.component",
        components=(("token", "code"), ("token", "value.as(CodeableConcept)")),
    ),
    _p(
        "Observation",
        "combo-code-value-quantity",
        "composite",
        "Observation | Observation.component",
        components=(("token", "code"), ("quantity", "value.as(Quantity)")),
    ),
    _p(
        "Observation",
        "component-code-value-concept",
        "composite",
        "Observation.component",
        components=(("token", "code"), ("token", "value.as(CodeableConcept)")),
    ),
    _p(
        "Observation",
        "component-code-value-quantity",
        "composite",
        "Observation.component",
        components=(("token", "code"), ("quantity", "value.as(Quantity)")),
    ),
    # --- ImagingStudy ---
    _p(
        "ImagingStudy",
        "basedon",
        "reference",
        "ImagingStudy.basedOn",
        "Appointment AppointmentResponse CarePlan Task ServiceRequest",
    ),
    _p("ImagingStudy", "bodysite", "token", "ImagingStudy.series.bodySite"),
    _p("ImagingStudy", "dicom-class", "token", "ImagingStudy.series.instance.sopClass"),
    _p("ImagingStudy", "encounter", "reference", "ImagingStudy.encounter", "Encounter"),
    _p(
        "ImagingStudy",
        "endpoint",
        "reference",
        "ImagingStudy.endpoint | ImagingStudy.series.endpoint",
        "Endpoint",
    ),
    _p(
        "ImagingStudy",
        "identifier",
        "token",
        "ImagingStudy.identifier",
        sp_id="clinical-identifier",
    ),
    _p("ImagingStudy", "instance", "token", "ImagingStudy.series.instance.uid"),
    _p(
        "ImagingStudy",
        "interpreter",
        "reference",
        "ImagingStudy.interpreter",
        "Practitioner PractitionerRole",
    ),
    _p("ImagingStudy", "modality", "token", "ImagingStudy.series.modality"),
    _p(
        "ImagingStudy",
        "patient",
        "reference",
        "ImagingStudy.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p(
        "ImagingStudy",
        "performer",
        "reference",
        "ImagingStudy.series.performer.actor",
        "Practitioner Organization CareTeam Device Patient PractitionerRole RelatedPerson",
    ),
    _p("ImagingStudy", "reason", "token", "ImagingStudy.reasonCode"),
    _p(
        "ImagingStudy",
        "referrer",
        "reference",
        "ImagingStudy.referrer",
        "Practitioner PractitionerRole",
    ),
    _p("ImagingStudy", "series", "token", "ImagingStudy.series.uid"),
    _p("ImagingStudy", "started", "date", "ImagingStudy.started"),
    _p("ImagingStudy", "status", "token", "ImagingStudy.status"),
    _p("ImagingStudy", "subject", "reference", "ImagingStudy.subject", "Group Device Patient"),
    # --- Endpoint ---
    _p("Endpoint", "connection-type", "token", "Endpoint.connectionType"),
    _p("Endpoint", "identifier", "token", "Endpoint.identifier"),
    _p("Endpoint", "name", "string", "Endpoint.name"),
    _p("Endpoint", "organization", "reference", "Endpoint.managingOrganization", "Organization"),
    _p("Endpoint", "payload-type", "token", "Endpoint.payloadType"),
    _p("Endpoint", "status", "token", "Endpoint.status"),
    # --- Encounter ---
    _p("Encounter", "account", "reference", "Encounter.account", "Account"),
    _p("Encounter", "appointment", "reference", "Encounter.appointment", "Appointment"),
    _p("Encounter", "based-on", "reference", "Encounter.basedOn", "ServiceRequest"),
    _p("Encounter", "class", "token", "Encounter.class"),
    _p("Encounter", "date", "date", "Encounter.period", sp_id="clinical-date"),
    _p(
        "Encounter",
        "diagnosis",
        "reference",
        "Encounter.diagnosis.condition",
        "Condition Procedure",
    ),
    _p("Encounter", "episode-of-care", "reference", "Encounter.episodeOfCare", "EpisodeOfCare"),
    _p("Encounter", "identifier", "token", "Encounter.identifier", sp_id="clinical-identifier"),
    _p("Encounter", "length", "quantity", "Encounter.length"),
    _p("Encounter", "location", "reference", "Encounter.location.location", "Location"),
    _p("Encounter", "location-period", "date", "Encounter.location.period"),
    _p("Encounter", "part-of", "reference", "Encounter.partOf", "Encounter"),
    _p(
        "Encounter",
        "participant",
        "reference",
        "Encounter.participant.individual",
        "Practitioner PractitionerRole RelatedPerson",
    ),
    _p("Encounter", "participant-type", "token", "Encounter.participant.type"),
    _p(
        "Encounter",
        "patient",
        "reference",
        "Encounter.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p(
        "Encounter",
        "practitioner",
        "reference",
        "Encounter.participant.individual.where(resolve() is Practitioner)",
        "Practitioner",
    ),
    _p("Encounter", "reason-code", "token", "Encounter.reasonCode"),
    _p(
        "Encounter",
        "reason-reference",
        "reference",
        "Encounter.reasonReference",
        "Condition Observation Procedure ImmunizationRecommendation",
    ),
    _p("Encounter", "service-provider", "reference", "Encounter.serviceProvider", "Organization"),
    _p(
        "Encounter",
        "special-arrangement",
        "token",
        "Encounter.hospitalization.specialArrangement",
    ),
    _p("Encounter", "status", "token", "Encounter.status"),
    _p("Encounter", "subject", "reference", "Encounter.subject", "Group Patient"),
    _p("Encounter", "type", "token", "Encounter.type", sp_id="clinical-type"),
    # --- DiagnosticReport ---
    _p(
        "DiagnosticReport",
        "based-on",
        "reference",
        "DiagnosticReport.basedOn",
        "CarePlan MedicationRequest NutritionOrder ServiceRequest ImmunizationRecommendation",
    ),
    _p("DiagnosticReport", "category", "token", "DiagnosticReport.category"),
    _p("DiagnosticReport", "code", "token", "DiagnosticReport.code", sp_id="clinical-code"),
    _p("DiagnosticReport", "conclusion", "token", "DiagnosticReport.conclusionCode"),
    _p("DiagnosticReport", "date", "date", "DiagnosticReport.effective", sp_id="clinical-date"),
    _p(
        "DiagnosticReport",
        "encounter",
        "reference",
        "DiagnosticReport.encounter",
        "Encounter EpisodeOfCare",
        sp_id="clinical-encounter",
    ),
    _p(
        "DiagnosticReport",
        "identifier",
        "token",
        "DiagnosticReport.identifier",
        sp_id="clinical-identifier",
    ),
    _p("DiagnosticReport", "issued", "date", "DiagnosticReport.issued"),
    _p("DiagnosticReport", "media", "reference", "DiagnosticReport.media.link", "Media"),
    _p(
        "DiagnosticReport",
        "patient",
        "reference",
        "DiagnosticReport.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p("DiagnosticReport", "performer", "reference", "DiagnosticReport.performer", _PRACTITIONERS),
    _p("DiagnosticReport", "result", "reference", "DiagnosticReport.result", "Observation"),
    _p(
        "DiagnosticReport",
        "results-interpreter",
        "reference",
        "DiagnosticReport.resultsInterpreter",
        _PRACTITIONERS,
    ),
    _p("DiagnosticReport", "specimen", "reference", "DiagnosticReport.specimen", "Specimen"),
    _p("DiagnosticReport", "status", "token", "DiagnosticReport.status"),
    _p(
        "DiagnosticReport",
        "subject",
        "reference",
        "DiagnosticReport.subject",
        "Group Device Patient Location",
    ),
    # --- RiskAssessment (e.g. a nodule's malignancy risk; carries R4's number parameter) ---
    _p("RiskAssessment", "condition", "reference", "RiskAssessment.condition", "Condition"),
    _p(
        "RiskAssessment",
        "date",
        "date",
        "(RiskAssessment.occurrence as dateTime)",
        sp_id="clinical-date",
    ),
    _p(
        "RiskAssessment",
        "encounter",
        "reference",
        "RiskAssessment.encounter",
        "Encounter EpisodeOfCare",
        sp_id="clinical-encounter",
    ),
    _p(
        "RiskAssessment",
        "identifier",
        "token",
        "RiskAssessment.identifier",
        sp_id="clinical-identifier",
    ),
    _p("RiskAssessment", "method", "token", "RiskAssessment.method"),
    _p(
        "RiskAssessment",
        "patient",
        "reference",
        "RiskAssessment.subject.where(resolve() is Patient)",
        "Patient",
        sp_id="clinical-patient",
    ),
    _p(
        "RiskAssessment",
        "performer",
        "reference",
        "RiskAssessment.performer",
        "Practitioner Device PractitionerRole",
    ),
    _p("RiskAssessment", "probability", "number", "RiskAssessment.prediction.probability"),
    _p("RiskAssessment", "risk", "token", "RiskAssessment.prediction.qualitativeRisk"),
    _p("RiskAssessment", "subject", "reference", "RiskAssessment.subject", "Group Patient"),
    # Subscription (R4 subscription.html; served for sandbox/fhir/subscriptions)
    _p("Subscription", "contact", "token", "Subscription.contact"),
    _p("Subscription", "criteria", "string", "Subscription.criteria"),
    _p("Subscription", "payload", "token", "Subscription.channel.payload"),
    _p("Subscription", "status", "token", "Subscription.status"),
    _p("Subscription", "type", "token", "Subscription.channel.type"),
    _p("Subscription", "url", "uri", "Subscription.channel.endpoint"),
)

#: The resource types the store serves, in CapabilityStatement order.
RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Condition",
    "Observation",
    "ImagingStudy",
    "Endpoint",
    "Encounter",
    "DiagnosticReport",
    "RiskAssessment",
    "Subscription",
)

#: ``{resource type: {code: SearchParam}}``, type-specific parameters only.
SEARCH_PARAMETERS: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
for _param in _TABLE:
    SEARCH_PARAMETERS[_param.base][_param.name] = _param


def search_param(resource_type: str, name: str) -> SearchParam | None:
    """Return the parameter *name* of *resource_type* (type-specific or Resource-level)."""
    found = SEARCH_PARAMETERS.get(resource_type, {}).get(name)
    return found if found is not None else COMMON_PARAMETERS.get(name)

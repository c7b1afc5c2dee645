/**
 * The panel's model of the FHIRcast context: pure functions, no DOM, no I/O.
 *
 * A FHIRcast 3.0.0 event notification (§2.5) carries `event.context`, a list of
 * `{key, resource}` items. This module reads the two anchors the panel shows:
 *
 * - Patient (`Patient-open`, `Patient-close`, §3.3): name and MRN (the identifier whose
 *   type is v2-0203 `MR`);
 * - ImagingStudy (`ImagingStudy-open`, `ImagingStudy-close`, §3.5): the Study Instance
 *   UID (identifier with system `urn:dicom:uid`, value `urn:oid:<uid>`, as the FHIR R4
 *   ImagingStudy notes require), the Accession Number (identifier of type v2-0203
 *   `ACSN`) and the description.
 *
 * Everything read here came from another application: the panel sets it as text only.
 */

/** One `{key, resource}` item of an event's context (FHIRcast §2.5). */
export interface IContextItem {
  key: string;
  resource?: Record<string, unknown>;
  reference?: Record<string, unknown>;
}

/** The `event` member of a notification. */
export interface IEventBody {
  'hub.topic': string;
  'hub.event': string;
  context: IContextItem[];
}

/** A FHIRcast event notification as a hub sends it on the websocket (§2.5). */
export interface INotification {
  timestamp: string;
  id: string;
  event: IEventBody;
}

/** What the panel shows of the current patient. */
export interface IPatientView {
  id: string;
  name: string;
  mrn: string;
}

/** What the panel shows of the current imaging study. */
export interface IStudyView {
  id: string;
  studyUid: string;
  accession: string;
  description: string;
  /** `Patient/<id>` of the study's subject, or `''` */
  subject: string;
}

/** The context the panel shows, updated by {@link applyEvent}. */
export interface IContextState {
  patient: IPatientView | null;
  study: IStudyView | null;
  /** Name of the last event applied, `''` before any */
  lastEvent: string;
  /** `timestamp` of the last event applied */
  timestamp: string;
}

/** The state before any event. */
export const EMPTY_CONTEXT: IContextState = {
  patient: null,
  study: null,
  lastEvent: '',
  timestamp: ''
};

const V2_0203 = 'http://terminology.hl7.org/CodeSystem/v2-0203';
const DICOM_UID_SYSTEM = 'urn:dicom:uid';

type Json = Record<string, unknown>;

function asObject(value: unknown): Json | null {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Json)
    : null;
}

function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function asString(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/** Whether an identifier's `type` is the v2-0203 code *code* (e.g. `MR`, `ACSN`). */
function hasTypeCode(identifier: Json, code: string): boolean {
  const type = asObject(identifier.type);
  if (!type) {
    return false;
  }
  return asArray(type.coding).some(item => {
    const coding = asObject(item);
    return (
      coding !== null &&
      asString(coding.code) === code &&
      (coding.system === undefined || asString(coding.system) === V2_0203)
    );
  });
}

/** The first item of *context* with *key*, as a resource, or `null`. */
export function contextResource(
  context: IContextItem[],
  key: string
): Json | null {
  for (const item of context) {
    if (item && item.key === key) {
      return asObject(item.resource);
    }
  }
  return null;
}

/**
 * A person's name for display: `text` if present, else "Family, Given Middle" of the
 * `official` name (or the first), as FHIR R4 HumanName defines the parts.
 */
export function displayName(names: unknown): string {
  const list = asArray(names)
    .map(asObject)
    .filter((n): n is Json => n !== null);
  const chosen = list.find(n => n.use === 'official') ?? list[0];
  if (!chosen) {
    return '';
  }
  const text = asString(chosen.text).trim();
  if (text) {
    return text;
  }
  const family = asString(chosen.family).trim();
  const given = asArray(chosen.given).map(asString).join(' ').trim();
  return [family, given].filter(Boolean).join(', ');
}

/** The patient as the panel shows it. */
export function patientView(resource: Json): IPatientView {
  const identifiers = asArray(resource.identifier)
    .map(asObject)
    .filter((i): i is Json => i !== null);
  const mrn =
    identifiers.find(i => hasTypeCode(i, 'MR')) ??
    identifiers.find(i => asString(i.value) !== '');
  return {
    id: asString(resource.id),
    name: displayName(resource.name),
    mrn: mrn ? asString(mrn.value) : ''
  };
}

/** The DICOM UID of a `urn:oid:` value (FHIR R4 ImagingStudy notes). */
export function oidValue(value: string): string {
  return value.startsWith('urn:oid:') ? value.slice('urn:oid:'.length) : value;
}

/** The imaging study as the panel shows it. */
export function studyView(resource: Json): IStudyView {
  const identifiers = asArray(resource.identifier)
    .map(asObject)
    .filter((i): i is Json => i !== null);
  const uid = identifiers.find(i => asString(i.system) === DICOM_UID_SYSTEM);
  const accession = identifiers.find(i => hasTypeCode(i, 'ACSN'));
  const subject = asObject(resource.subject);
  return {
    id: asString(resource.id),
    studyUid: uid ? oidValue(asString(uid.value)) : '',
    accession: accession ? asString(accession.value) : '',
    description: asString(resource.description),
    subject: subject ? asString(subject.reference) : ''
  };
}

function sameSubject(study: IStudyView, patient: IPatientView): boolean {
  return !study.subject || study.subject === `Patient/${patient.id}`;
}

/**
 * The context after *notification* (FHIRcast §3.3, §3.5).
 *
 * `Patient-open` replaces the patient and drops a study of another subject;
 * `ImagingStudy-open` sets the study (and the patient, when the event names one);
 * a close clears what it closes (closing the patient closes its study too). Other
 * events change nothing but are recorded as the last event.
 */
export function applyEvent(
  state: IContextState,
  notification: INotification
): IContextState {
  const name = asString(notification.event['hub.event']).toLowerCase();
  const context = asArray(notification.event.context) as IContextItem[];
  const next: IContextState = {
    ...state,
    lastEvent: asString(notification.event['hub.event']),
    timestamp: asString(notification.timestamp)
  };
  const patient = contextResource(context, 'patient');
  const study = contextResource(context, 'study');
  switch (name) {
    case 'patient-open':
      if (patient) {
        next.patient = patientView(patient);
        if (next.study && !sameSubject(next.study, next.patient)) {
          next.study = null;
        }
      }
      break;
    case 'patient-close':
      next.patient = null;
      next.study = null;
      break;
    case 'imagingstudy-open':
      if (study) {
        next.study = studyView(study);
      }
      if (patient) {
        next.patient = patientView(patient);
      }
      break;
    case 'imagingstudy-close':
      if (!study || !next.study || asString(study.id) === next.study.id) {
        next.study = null;
      }
      break;
    default:
      break;
  }
  return next;
}

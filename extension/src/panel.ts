/**
 * The "Imaging context" side panel: a view only. Every value it shows is set with
 * `textContent` (FHIRcast events come from other applications; never parsed as HTML).
 */

import { Signal, ISignal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { IContextState } from './context';
import { ConnectionState } from './fhircast';
import { IServerStatus, ServerState, describeStatus } from './status';

const FIELDS = [
  ['patient', 'Name', 'patient-name'],
  ['patient', 'MRN', 'patient-mrn'],
  ['study', 'Description', 'study-description'],
  ['study', 'Study Instance UID', 'study-uid'],
  ['study', 'Accession', 'study-accession']
] as const;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/** The panel's DOM and the two requests a user can make from it. */
export class ContextPanel extends Widget {
  constructor() {
    super();
    this.id = 'imagingkit-context';
    this.addClass('jp-ImagingkitContext');
    this.title.caption = 'Imaging context (FHIRcast)';
    this.title.label = 'Imaging';

    const root = this.node;
    root.appendChild(element('h2', 'jp-ImagingkitContext-title', 'Imaging context'));
    this._server = element('div', 'jp-ImagingkitContext-server', 'Checking imagingkit…');
    this._server.dataset.state = 'unknown';
    root.appendChild(this._server);

    const form = element('form', 'jp-ImagingkitContext-topic');
    const label = element('label', '', 'Topic');
    this._topic = element('input', 'jp-mod-styled');
    this._topic.type = 'text';
    this._topic.name = 'topic';
    this._topic.spellcheck = false;
    this._topic.setAttribute('aria-label', 'FHIRcast topic');
    label.appendChild(this._topic);
    const follow = element('button', 'jp-mod-styled jp-mod-accept', 'Follow');
    follow.type = 'submit';
    form.append(label, follow);
    form.addEventListener('submit', event => {
      event.preventDefault();
      const topic = this._topic.value.trim();
      if (topic) {
        this._topicRequested.emit(topic);
      }
    });
    root.appendChild(form);

    this._connection = element('div', 'jp-ImagingkitContext-connection', 'Not subscribed');
    this._connection.dataset.state = 'idle';
    root.appendChild(this._connection);

    for (const section of ['patient', 'study'] as const) {
      const box = element('section', `jp-ImagingkitContext-${section}`);
      box.appendChild(element('h3', '', section === 'patient' ? 'Patient' : 'Study'));
      const list = element('dl', '');
      for (const [owner, caption, field] of FIELDS) {
        if (owner !== section) {
          continue;
        }
        const value = element('dd', '');
        value.dataset.field = field;
        list.append(element('dt', '', caption), value);
        this._values.set(field, value);
      }
      box.appendChild(list);
      root.appendChild(box);
    }

    this._open = element('button', 'jp-mod-styled jp-ImagingkitContext-open', 'Open in viewer');
    this._open.type = 'button';
    this._open.disabled = true;
    this._open.addEventListener('click', () => this._openRequested.emit(undefined));
    root.appendChild(this._open);

    this._last = element('div', 'jp-ImagingkitContext-last', 'No context received yet');
    root.appendChild(this._last);
  }

  /** The user asked to follow another topic. */
  get topicRequested(): ISignal<this, string> {
    return this._topicRequested;
  }

  /** The user pressed "Open in viewer". */
  get openRequested(): ISignal<this, void> {
    return this._openRequested;
  }

  /** Show *topic* in the topic field. */
  setTopic(topic: string): void {
    this._topic.value = topic;
  }

  /** Show the server extension's state. */
  setServerStatus(status: IServerStatus | { state: ServerState; detail: string }): void {
    this._server.dataset.state = status.state;
    this._server.textContent =
      'mounts' in status ? describeStatus(status) : status.detail;
  }

  /** Show the subscription's state. */
  setConnection(state: ConnectionState, detail: string): void {
    this._connection.dataset.state = state;
    this._connection.textContent = detail;
  }

  /** Show *context*; "Open in viewer" is enabled when a study with a UID is open. */
  setContext(context: IContextState): void {
    const patient = context.patient;
    const study = context.study;
    const values: Record<string, string> = {
      'patient-name': patient ? patient.name || patient.id : '',
      'patient-mrn': patient ? patient.mrn : '',
      'study-description': study ? study.description : '',
      'study-uid': study ? study.studyUid : '',
      'study-accession': study ? study.accession : ''
    };
    for (const [field, node] of this._values) {
      const text = values[field] ?? '';
      node.textContent = text || '—';
      node.classList.toggle('jp-mod-empty', !text);
    }
    this.node.dataset.patient = patient ? 'open' : 'none';
    this.node.dataset.study = study ? 'open' : 'none';
    this._open.disabled = !(study && study.studyUid);
    this._last.textContent = context.lastEvent
      ? `Last event: ${context.lastEvent} at ${context.timestamp}`
      : 'No context received yet';
  }

  private _server: HTMLDivElement;
  private _topic: HTMLInputElement;
  private _connection: HTMLDivElement;
  private _open: HTMLButtonElement;
  private _last: HTMLDivElement;
  private _values = new Map<string, HTMLElement>();
  private _topicRequested = new Signal<this, string>(this);
  private _openRequested = new Signal<this, void>(this);
}

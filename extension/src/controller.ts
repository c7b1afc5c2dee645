/**
 * What the panel does: wait for the server extension, follow one FHIRcast topic, keep
 * the context, and open the current study in a viewer through the IID facade.
 */

import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { EMPTY_CONTEXT, IContextState, applyEvent } from './context';
import { ConnectionState, FhircastSubscriber } from './fhircast';
import {
  IServerStatus,
  MAX_POLLS,
  POLL_SECONDS,
  fetchStatus,
  hubUrl,
  viewerUrl
} from './status';

/** The panel's state and actions, independent of the DOM. */
export class ContextController {
  constructor(settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    this.settings = settings;
  }

  readonly settings: ServerConnection.ISettings;

  /** The server extension's status changed. */
  get statusChanged(): ISignal<this, IServerStatus> {
    return this._statusChanged;
  }

  /** The subscription's state changed. */
  get connectionChanged(): ISignal<this, { state: ConnectionState; detail: string }> {
    return this._connectionChanged;
  }

  /** The context changed (an event arrived, or the topic changed). */
  get contextChanged(): ISignal<this, IContextState> {
    return this._contextChanged;
  }

  get context(): IContextState {
    return this._context;
  }

  get topic(): string {
    return this._topic;
  }

  get status(): IServerStatus | null {
    return this._status;
  }

  /** Follow *topic* (unsubscribing from the previous one) once the server is ready. */
  async follow(topic: string): Promise<void> {
    topic = topic.trim();
    const current = this._subscriber;
    if (!topic || (topic === this._topic && current && current.state !== 'failed')) {
      return; // already following it (a failed subscription is tried again)
    }
    this._topic = topic;
    const previous = this._subscriber;
    this._subscriber = null;
    this.setContext(EMPTY_CONTEXT);
    if (previous) {
      await previous.dispose();
    }
    if (this._status?.state === 'ready') {
      this.subscribe();
    } else {
      this._connectionChanged.emit({
        state: 'idle',
        detail: `will follow topic ${topic} when imagingkit is ready`
      });
      void this.watchStatus();
    }
  }

  /** Poll the status document until the server extension is ready or failed (bounded). */
  async watchStatus(): Promise<void> {
    if (this._polling || this._disposed) {
      return;
    }
    this._polling = true;
    try {
      for (let poll = 0; poll < MAX_POLLS && !this._disposed; poll++) {
        const status = await fetchStatus(this.settings);
        this._status = status;
        this._statusChanged.emit(status);
        if (status.state === 'ready') {
          if (this._topic && !this._subscriber) {
            this.subscribe();
          }
          return;
        }
        if (status.state === 'failed' || status.state === 'missing') {
          return;
        }
        await new Promise(resolve => window.setTimeout(resolve, POLL_SECONDS * 1000));
      }
      if (!this._disposed && this._status?.state !== 'ready') {
        this._statusChanged.emit({
          state: 'unknown',
          detail:
            `imagingkit was not ready after ${(MAX_POLLS * POLL_SECONDS) / 60} minutes; ` +
            'reload the page to check again',
          version: '',
          mounts: []
        });
      }
    } finally {
      this._polling = false;
    }
  }

  /** The IID URL of the current study, or `null` when no study with a UID is open. */
  viewerUrl(): string | null {
    const study = this._context.study;
    return study && study.studyUid ? viewerUrl(this.settings, study.studyUid) : null;
  }

  /** Open the current study in a new browser tab; return whether one was opened. */
  openInViewer(): boolean {
    const url = this.viewerUrl();
    if (!url) {
      return false;
    }
    // noopener: the viewer's page gets no handle on JupyterLab's window
    window.open(url, '_blank', 'noopener');
    return true;
  }

  async dispose(): Promise<void> {
    this._disposed = true;
    const subscriber = this._subscriber;
    this._subscriber = null;
    if (subscriber) {
      await subscriber.dispose();
    }
  }

  private subscribe(): void {
    if (this._status && !this._status.mounts.includes('fhircast')) {
      this._connectionChanged.emit({
        state: 'failed',
        detail: 'this imagingkit server has no FHIRcast hub mounted'
      });
      return;
    }
    const subscriber = new FhircastSubscriber({
      hubUrl: hubUrl(this.settings),
      topic: this._topic,
      settings: this.settings,
      onEvent: notification => {
        if (this._subscriber === subscriber) {
          this.setContext(applyEvent(this._context, notification));
        }
      },
      onState: (state, detail) => {
        if (this._subscriber === subscriber) {
          this._connectionChanged.emit({ state, detail });
        }
      }
    });
    this._subscriber = subscriber;
    void subscriber.start();
  }

  private setContext(context: IContextState): void {
    this._context = context;
    this._contextChanged.emit(context);
  }

  private _topic = '';
  private _status: IServerStatus | null = null;
  private _subscriber: FhircastSubscriber | null = null;
  private _context: IContextState = EMPTY_CONTEXT;
  private _polling = false;
  private _disposed = false;
  private _statusChanged = new Signal<this, IServerStatus>(this);
  private _connectionChanged = new Signal<this, { state: ConnectionState; detail: string }>(this);
  private _contextChanged = new Signal<this, IContextState>(this);
}

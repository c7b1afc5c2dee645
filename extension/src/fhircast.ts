/**
 * A FHIRcast 3.0.0 subscriber for the browser, speaking to the hub that imagingkit's
 * Jupyter server extension serves at `{base_url}imagingkit/fhircast`.
 *
 * - discovery: `GET {hub}/.well-known/fhircast-configuration` (§2.7);
 * - subscription: a form `POST {hub}` with `hub.channel.type=websocket` (§2.4), sent
 *   through `ServerConnection.makeRequest`, so it carries Jupyter's token or XSRF
 *   header; the answer (202) names `hub.channel.endpoint`, the websocket to open;
 * - channel: the hub confirms (`hub.mode: subscribe`) or denies (`hub.mode: denied`)
 *   on the socket; every event notification is acknowledged with
 *   `{"id": <event id>, "status": 200}` (§2.5);
 * - unsubscription: `hub.mode=unsubscribe` with the endpoint (§2.4) when the topic
 *   changes or the panel closes.
 *
 * A lost socket is re-subscribed with exponential back-off, a bounded number of times.
 */

import { ServerConnection } from '@jupyterlab/services';

import { INotification } from './context';

/** Where the subscriber is. */
export type ConnectionState =
  | 'idle'
  | 'subscribing'
  | 'connected'
  | 'reconnecting'
  | 'denied'
  | 'failed'
  | 'closed';

/** The events the panel asks for (FHIRcast §3.3, §3.5, §2.5 SyncError). */
export const PANEL_EVENTS = [
  'Patient-open',
  'Patient-close',
  'ImagingStudy-open',
  'ImagingStudy-close',
  'SyncError'
];

/** How often, at most, a lost subscription is re-established before giving up. */
export const MAX_RECONNECTS = 12;
const MAX_BACKOFF_MS = 30_000;

export interface ISubscriberOptions {
  /** `hub.url`, e.g. `http://host/user/ada/imagingkit/fhircast` (no trailing slash) */
  hubUrl: string;
  topic: string;
  settings: ServerConnection.ISettings;
  /** Called with each event notification, after it was acknowledged */
  onEvent: (notification: INotification) => void;
  /** Called on each state change, with a human-readable detail */
  onState: (state: ConnectionState, detail: string) => void;
  /** `subscriber.name` sent to the hub (§2.4) */
  subscriberName?: string;
}

/** An error answer of the hub, with its status and text (the hub answers text/plain). */
export class HubError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

async function hubRequest(
  url: string,
  init: RequestInit,
  settings: ServerConnection.ISettings
): Promise<unknown> {
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  if (!response.ok) {
    throw new HubError(
      response.status,
      `${response.status} ${response.statusText}: ${text.trim().slice(0, 300)}`
    );
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new HubError(response.status, `the hub answered no JSON: ${text.slice(0, 120)}`);
  }
}

/**
 * The browser's websocket URL for an endpoint the hub returned: the hub builds it from
 * the request it saw, which behind a TLS-terminating proxy says `ws:` although the page
 * is `https:`; a secure page then needs `wss:` on the same host.
 */
export function channelUrl(endpoint: string, pageProtocol: string): string {
  if (pageProtocol === 'https:' && endpoint.startsWith('ws://')) {
    return `wss://${endpoint.slice('ws://'.length)}`;
  }
  return endpoint;
}

function suffix(detail: string | undefined): string {
  return detail ? `: ${detail}` : '';
}

/** Is *message* an event notification (§2.5), as opposed to a confirmation or denial? */
export function isNotification(message: unknown): message is INotification {
  if (message === null || typeof message !== 'object') {
    return false;
  }
  const m = message as Record<string, unknown>;
  const event = m.event as Record<string, unknown> | undefined;
  return (
    typeof m.id === 'string' &&
    event !== null &&
    typeof event === 'object' &&
    typeof event['hub.event'] === 'string'
  );
}

/** One subscription of one topic; {@link start} it, {@link dispose} it. */
export class FhircastSubscriber {
  constructor(private readonly options: ISubscriberOptions) {}

  /** The topic this subscriber follows. */
  get topic(): string {
    return this.options.topic;
  }

  /** The current state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** Discover the hub, subscribe and open the channel. */
  async start(): Promise<void> {
    if (this._disposed) {
      return;
    }
    this.setState('subscribing', `subscribing to topic ${this.topic}`);
    try {
      await this.discover();
      await this.subscribe();
    } catch (error) {
      this.onFailure(error);
    }
  }

  /** Unsubscribe (best effort) and close the channel; the subscriber cannot restart. */
  async dispose(): Promise<void> {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this._retryTimer);
    const endpoint = this._endpoint;
    const socket = this._socket;
    this._socket = null;
    this._endpoint = '';
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
    }
    if (endpoint) {
      try {
        await hubRequest(
          this.options.hubUrl,
          this.form({
            'hub.mode': 'unsubscribe',
            'hub.channel.endpoint': endpoint
          }),
          this.options.settings
        );
      } catch {
        // the hub forgets an unconnected subscription by itself (lease, connect timeout)
      }
    }
    if (socket && socket.readyState <= WebSocket.OPEN) {
      socket.close(1000, 'unsubscribed');
    }
    this.setState('closed', 'unsubscribed');
  }

  private async discover(): Promise<void> {
    const url = `${this.options.hubUrl}/.well-known/fhircast-configuration`;
    const config = (await hubRequest(url, { method: 'GET' }, this.options.settings)) as Record<
      string,
      unknown
    >;
    if (config.websocketSupport === false) {
      throw new HubError(0, 'the hub does not support websocket channels');
    }
    const supported = Array.isArray(config.eventsSupported)
      ? (config.eventsSupported as unknown[]).map(e => String(e).toLowerCase())
      : null;
    this._events = supported
      ? PANEL_EVENTS.filter(e => supported.includes(e.toLowerCase()))
      : PANEL_EVENTS;
    if (this._events.length === 0) {
      throw new HubError(0, 'the hub supports none of the Patient/ImagingStudy events');
    }
  }

  private form(fields: Record<string, string>): RequestInit {
    const body = new URLSearchParams({
      'hub.channel.type': 'websocket',
      'hub.topic': this.topic,
      ...fields
    });
    return {
      method: 'POST',
      body: body.toString(),
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' }
    };
  }

  private async subscribe(): Promise<void> {
    const answer = (await hubRequest(
      this.options.hubUrl,
      this.form({
        'hub.mode': 'subscribe',
        'hub.events': this._events.join(','),
        'subscriber.name': this.options.subscriberName ?? 'imagingkit JupyterLab panel'
      }),
      this.options.settings
    )) as Record<string, unknown>;
    const endpoint = answer['hub.channel.endpoint'];
    if (typeof endpoint !== 'string' || !/^wss?:\/\//.test(endpoint)) {
      throw new HubError(0, 'the hub returned no websocket hub.channel.endpoint');
    }
    if (this._disposed) {
      return;
    }
    this._endpoint = endpoint;
    this.connect(channelUrl(endpoint, window.location.protocol));
  }

  private connect(url: string): void {
    const socket = new WebSocket(url);
    this._socket = socket;
    socket.onmessage = message => this.onMessage(socket, message);
    socket.onclose = close => {
      if (this._socket !== socket || this._disposed) {
        return;
      }
      this._socket = null;
      this._endpoint = '';
      if (this._state === 'denied') {
        return;
      }
      this.onFailure(
        new HubError(0, `the channel closed (code ${close.code}${suffix(close.reason)})`)
      );
    };
  }

  private onMessage(socket: WebSocket, message: MessageEvent): void {
    if (this._socket !== socket || typeof message.data !== 'string') {
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(message.data);
    } catch {
      return;
    }
    if (isNotification(parsed)) {
      // §2.5: acknowledge every event, whether or not the panel shows it
      socket.send(JSON.stringify({ id: parsed.id, status: 200 }));
      this.options.onEvent(parsed);
      return;
    }
    const fields = parsed as Record<string, unknown>;
    const mode = fields !== null && typeof fields === 'object' ? fields['hub.mode'] : undefined;
    if (mode === 'subscribe') {
      this._attempts = 0;
      this.setState('connected', `following topic ${this.topic}`);
    } else if (mode === 'denied') {
      const reason = typeof fields['hub.reason'] === 'string' ? fields['hub.reason'] : '';
      this._endpoint = '';
      this.setState('denied', `the hub ended the subscription${suffix(reason)}`);
      // a lease that ran out or an unresponsive verdict is worth one more subscription
      this.scheduleRetry();
    }
  }

  private onFailure(error: unknown): void {
    if (this._disposed) {
      return;
    }
    const detail = error instanceof Error ? error.message : String(error);
    if (error instanceof HubError && error.status >= 400 && error.status < 500) {
      this.setState('failed', detail); // refused: retrying would be refused again
      return;
    }
    this.scheduleRetry(detail);
  }

  private scheduleRetry(detail?: string): void {
    if (this._disposed) {
      return;
    }
    if (this._attempts >= MAX_RECONNECTS) {
      this.setState('failed', `gave up after ${MAX_RECONNECTS} attempts${suffix(detail)}`);
      return;
    }
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this._attempts);
    this._attempts += 1;
    if (this._state !== 'denied') {
      this.setState(
        'reconnecting',
        `${detail ?? 'disconnected'}; retrying in ${Math.round(delay / 1000)} s`
      );
    }
    window.clearTimeout(this._retryTimer);
    this._retryTimer = window.setTimeout(() => {
      void this.start();
    }, delay);
  }

  private setState(state: ConnectionState, detail: string): void {
    this._state = state;
    this.options.onState(state, detail);
  }

  private _state: ConnectionState = 'idle';
  private _events: string[] = PANEL_EVENTS;
  private _endpoint = '';
  private _socket: WebSocket | null = null;
  private _attempts = 0;
  private _retryTimer = 0;
  private _disposed = false;
}

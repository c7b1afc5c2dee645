/**
 * The imagingkit server extension's status document and the URLs below it.
 *
 * `GET {base_url}imagingkit/` answers `{"imagingkit": version, "status":
 * "starting" | "ready" | "failed" | "stopping", "detail"?, "endpoints": {mount: url}}`
 * (imagingkit.jupyter.mount). While the sandbox is being prepared the components'
 * paths answer 503, so the panel waits for `ready` before subscribing.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The server extension's state as the panel knows it. */
export type ServerState = 'unknown' | 'starting' | 'ready' | 'failed' | 'stopping' | 'missing';

export interface IServerStatus {
  state: ServerState;
  /** A sentence for the user */
  detail: string;
  version: string;
  /** Mounted components, e.g. `["fhir", "dicom-web", "fhircast", "iid", "viewer"]` */
  mounts: string[];
}

const KNOWN_STATES = ['starting', 'ready', 'failed', 'stopping'];

/** Seconds between polls while the server extension starts. */
export const POLL_SECONDS = 2;
/** Polls before the panel stops waiting (15 minutes: a cold default-size sandbox). */
export const MAX_POLLS = 450;

/** `{base_url}imagingkit` (no trailing slash) for these settings. */
export function imagingkitUrl(settings: ServerConnection.ISettings): string {
  return URLExt.join(settings.baseUrl, 'imagingkit');
}

/** `hub.url` of the FHIRcast hub mounted by the server extension. */
export function hubUrl(settings: ServerConnection.ISettings): string {
  return URLExt.join(imagingkitUrl(settings), 'fhircast');
}

/**
 * The IHE IID request (RAD-106) that opens *studyUid* in the configured viewer; the
 * facade answers with a redirect to that viewer's own deep link.
 */
export function viewerUrl(settings: ServerConnection.ISettings, studyUid: string): string {
  const query = new URLSearchParams({ requestType: 'STUDY', studyUID: studyUid });
  return `${URLExt.join(imagingkitUrl(settings), 'iid', 'IHEInvokeImageDisplay')}?${query}`;
}

/** Read the status document once; network errors and odd answers become a state too. */
export async function fetchStatus(settings: ServerConnection.ISettings): Promise<IServerStatus> {
  const url = `${imagingkitUrl(settings)}/`;
  let response: Response;
  try {
    const init: RequestInit = { method: 'GET', cache: 'no-store' };
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    return {
      state: 'unknown',
      detail: `the Jupyter server did not answer (${String(error)})`,
      version: '',
      mounts: []
    };
  }
  if (response.status === 404) {
    return {
      state: 'missing',
      detail:
        'the imagingkit server extension is not enabled on this Jupyter server ' +
        '(jupyter server extension enable imagingkit.jupyter)',
      version: '',
      mounts: []
    };
  }
  let body: Record<string, unknown> = {};
  try {
    body = (await response.json()) as Record<string, unknown>;
  } catch {
    // leave body empty: reported below
  }
  const state = typeof body.status === 'string' ? body.status : '';
  const endpoints = body.endpoints && typeof body.endpoints === 'object' ? body.endpoints : {};
  const status: IServerStatus = {
    state: (KNOWN_STATES.includes(state) ? state : 'unknown') as ServerState,
    detail: typeof body.detail === 'string' ? body.detail : '',
    version: typeof body.imagingkit === 'string' ? body.imagingkit : '',
    mounts: Object.keys(endpoints as object)
  };
  if (!response.ok && status.state === 'unknown') {
    status.detail = `the status document answered ${response.status} ${response.statusText}`;
  }
  return status;
}

/** The sentence the panel shows for *status*. */
export function describeStatus(status: IServerStatus): string {
  switch (status.state) {
    case 'starting':
      return `imagingkit is starting: ${status.detail || 'preparing its data'}…`;
    case 'ready':
      return `imagingkit ${status.version} is ready (${status.mounts.join(', ')})`;
    case 'failed':
      return `imagingkit could not start: ${status.detail}`;
    case 'stopping':
      return 'imagingkit is shutting down';
    default:
      return status.detail || 'imagingkit status unknown';
  }
}

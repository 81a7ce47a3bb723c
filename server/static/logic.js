// logic.js -- the explorer's pure parts: hash routes, neuron lists, query
// requests, histogram bins. No DOM, no fetch, no imports, so the browser test
// can also load it straight into node.

const AGGS = ['sum', 'mean', 'max', 'min'];
const METRICS = ['l2', 'l1', 'linf', 'cosine'];
export const PAGE_SIZE = 48;
export const DEFAULT_K = 10;
export { AGGS, METRICS };

// ---- routes ----
// #/                                            pick a model, dataset, layer
// #/m/{model}/d/{ds}/l/{layer}?page=P            browse the dataset (P from 1, as shown)
// #/m/.../l/{layer}/input/{id}?neurons=..        one input, its top neurons
// #/m/.../l/{layer}/neuron/{n}?input=ID          one neuron: histogram + top inputs
// #/m/.../l/{layer}/topk?neurons=..&k=&agg=&labels=
// #/m/.../l/{layer}/knn?target=ID&neurons=..&k=&metric=&labels=
//   both query views also take predicted=0,6 and misclassified=1 (filters)
// #/m/{model}/d/{ds}[/l/{layer}]/predictions    accuracy + confusion matrix
// Browse and input views take the listing's filters label=L&predicted=P&
// misclassified=1; input, query and neuron views take heat=METHOD|off.
// Names are URI-encoded segments; the query string holds only numbers and
// enum words, so a route reloads (or is shared) to exactly the same view.

export function parseRoute(hash) {
  const h = (hash || '').replace(/^#/, '');
  const q = h.indexOf('?');
  const path = q < 0 ? h : h.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : h.slice(q + 1));
  const segs = path.split('/').filter((s) => s !== '').map((s) => {
    try { return decodeURIComponent(s); } catch { return s; }
  });
  const r = { view: 'home', model: null, dataset: null, layer: null, params };
  let i = 0;
  const take = (key) => {
    if (segs[i] === key && i + 1 < segs.length) { i += 2; return segs[i - 1]; }
    return null;
  };
  r.model = take('m');
  if (!r.model) return r;
  r.view = 'model';
  r.dataset = take('d');
  if (!r.dataset) return r;
  r.layer = take('l');
  // Predictions belong to (model, dataset); a layer in the route only keeps
  // the side panel and where the confusion cells lead.
  if (segs[i] === 'predictions' && i + 1 === segs.length) { r.view = 'predictions'; return r; }
  if (!r.layer) return r;
  r.view = 'browse';
  const rest = segs.slice(i);
  if (rest[0] === 'input' && rest.length === 2 && /^\d+$/.test(rest[1])) {
    r.view = 'input';
    r.input = Number(rest[1]);
  } else if (rest[0] === 'neuron' && rest.length === 2 && /^\d+$/.test(rest[1])) {
    r.view = 'neuron';
    r.neuron = Number(rest[1]);
  } else if ((rest[0] === 'topk' || rest[0] === 'knn') && rest.length === 1) {
    r.view = rest[0];
  } else if (rest.length) {
    r.view = 'unknown';
  }
  return r;
}

export function layerPath(model, dataset, layer) {
  const e = encodeURIComponent;
  return `#/m/${e(model)}/d/${e(dataset)}/l/${e(layer)}`;
}

function withQuery(base, params) {
  const parts = [];
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '' || (Array.isArray(v) && !v.length)) continue;
    parts.push(`${k}=${Array.isArray(v) ? v.join(',') : String(v)}`);
  }
  return parts.length ? `${base}?${parts.join('&')}` : base;
}

// The listing's filters as URL parameters (absent ones left out).
function filterParams(f) {
  if (!f) return {};
  return {
    label: f.label !== null && f.label !== undefined ? f.label : undefined,
    predicted: f.predicted !== null && f.predicted !== undefined ? f.predicted : undefined,
    misclassified: f.misclassified ? 1 : undefined,
  };
}

// page: 0-based here, 1-based in the URL (the number the pager shows).
// filter: {label, predicted, misclassified} (browseFilter's), optional.
export function browseHash(ctx, page, filter) {
  return withQuery(layerPath(ctx.model, ctx.dataset, ctx.layer), { ...filterParams(filter), page: page ? page + 1 : undefined });
}
export function predictionsHash(ctx) {
  const e = encodeURIComponent;
  return ctx.layer ? `${layerPath(ctx.model, ctx.dataset, ctx.layer)}/predictions` : `#/m/${e(ctx.model)}/d/${e(ctx.dataset)}/predictions`;
}

// A browse/input URL's listing filter; bad values are dropped (a filter the
// URL cannot say is no filter). Labels may be negative (int32).
export function browseFilter(params) {
  const int = (k) => { const t = params.get(k); return t !== null && /^-?\d+$/.test(t) ? Number(t) : null; };
  const m = params.get('misclassified');
  return { label: int('label'), predicted: int('predicted'), misclassified: m === '1' || m === 'true' };
}
export function filterActive(f) {
  return !!f && (f.label !== null || f.predicted !== null || f.misclassified);
}
// The listing request's query string: GET /v1/datasets/{ds}/inputs?...
// model asks for its predictions with each input (and is needed by the
// predicted / misclassified filters).
export function listingQuery(offset, limit, filter, model) {
  const parts = [`offset=${offset}`, `limit=${limit}`];
  const f = filter || {};
  if (f.label !== null && f.label !== undefined) parts.push(`label=${f.label}`);
  if (model) parts.push(`model=${encodeURIComponent(model)}`);
  if (f.predicted !== null && f.predicted !== undefined) parts.push(`predicted=${f.predicted}`);
  if (f.misclassified) parts.push('misclassified=true');
  return parts.join('&');
}

// The parameters an input view carries besides its neurons (the grid's
// filter and page, the heatmap), read from its URL so rewriting the
// neuron list keeps them.
export function inputExtras(params) {
  const f = browseFilter(params);
  const page = params.get('page');
  const heat = params.get('heat');
  return {
    ...filterParams(f),
    page: page !== null && /^\d+$/.test(page) && Number(page) >= 1 ? Number(page) : undefined,
    heat: heat !== null && /^[a-z]+$/.test(heat) ? heat : undefined,
  };
}

// Sets (or, with value null/undefined, removes) one parameter of a hash
// route, leaving the others in their order.
export function setHashParam(hash, key, value) {
  const h = hash || '#/';
  const q = h.indexOf('?');
  const base = q < 0 ? h : h.slice(0, q);
  const parts = (q < 0 ? [] : h.slice(q + 1).split('&')).filter((p) => p && p.split('=')[0] !== key);
  if (value !== null && value !== undefined && value !== '') parts.push(`${key}=${value}`);
  return parts.length ? `${base}?${parts.join('&')}` : base;
}
// The 0-based page of a browse URL (its page=P counts from 1), or `dflt`.
export function pageFromParams(params, pages, dflt) {
  const t = params.get('page');
  if (t === null || !/^\d+$/.test(t) || Number(t) < 1) return dflt;
  return Math.min(Number(t), pages) - 1;
}
export function inputHash(ctx, id, neurons, extras) {
  return withQuery(`${layerPath(ctx.model, ctx.dataset, ctx.layer)}/input/${id}`, { neurons, ...(extras || {}) });
}
export function neuronHash(ctx, n, input) {
  return withQuery(`${layerPath(ctx.model, ctx.dataset, ctx.layer)}/neuron/${n}`, { input });
}
// q: {kind:'topk'|'knn', neurons, k, agg, metric, labels, predicted, misclassified, target}
export function queryHash(ctx, q) {
  const base = `${layerPath(ctx.model, ctx.dataset, ctx.layer)}/${q.kind}`;
  const filters = { labels: q.labels, predicted: q.predicted, misclassified: q.misclassified ? 1 : undefined };
  if (q.kind === 'knn')
    return withQuery(base, { target: q.target, neurons: q.neurons, k: q.k, metric: q.metric, ...filters });
  return withQuery(base, { neurons: q.neurons, k: q.k, agg: q.agg, ...filters });
}

// ---- numbers in URLs and fields ----

// "3, 17 42" -> [3, 17, 42]; null on anything that is not a list of
// non-negative integers.
export function parseIntList(s) {
  const t = (s || '').trim();
  if (!t) return [];
  const parts = t.split(/[\s,;]+/).filter(Boolean);
  const out = [];
  for (const p of parts) {
    if (!/^\d+$/.test(p)) return null;
    out.push(Number(p));
  }
  return out;
}

// Labels may be negative in principle (int32).
export function parseLabelList(s) {
  const t = (s || '').trim();
  if (!t) return [];
  const out = [];
  for (const p of t.split(/[\s,;]+/).filter(Boolean)) {
    if (!/^-?\d+$/.test(p)) return null;
    out.push(Number(p));
  }
  return out;
}

// Classes as typed: numbers and/or class names ("0, 6" or "Shirt, Coat";
// names match case-insensitively), separated by commas or semicolons (a
// name may hold spaces: "Ankle boot"); numbers alone may also be separated
// by spaces. Returns the class numbers, or null on anything else.
export function parseClassList(s, classes) {
  const t = (s || '').trim();
  if (!t) return [];
  const byName = new Map((classes || []).map((c, i) => [String(c).trim().toLowerCase(), i]));
  const out = [];
  for (const tok of t.split(/[,;]+/).map((x) => x.trim()).filter(Boolean)) {
    if (byName.has(tok.toLowerCase())) { out.push(byName.get(tok.toLowerCase())); continue; }
    const nums = parseLabelList(tok);
    if (nums === null) return null;
    out.push(...nums);
  }
  return [...new Set(out)];
}

// What a thumbnail says about its class: the true class (its name, or
// "label N" when the dataset has no names), the predicted one when known,
// and whether they differ.
export function className(label, classes) {
  if (label === null || label === undefined) return '';
  return classes && classes[label] !== undefined ? String(classes[label]) : `label ${label}`;
}
export function classCaption(label, predicted, classes) {
  const known = predicted !== null && predicted !== undefined;
  const pname = known ? (classes && classes[predicted] !== undefined ? String(classes[predicted]) : String(predicted)) : '';
  return {
    label: className(label, classes),
    predicted: known ? `pred ${pname}` : '',
    wrong: known && label !== null && label !== undefined && predicted !== label,
  };
}

// ---- neurons: flat row-major index <-> coordinates in the layer's shape ----

export function flatten(coord, shape) {
  let f = 0;
  for (let d = 0; d < shape.length; d++) f = f * shape[d] + coord[d];
  return f;
}

export function unflatten(flat, shape) {
  const c = new Array(shape.length);
  let rem = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    c[d] = rem % shape[d];
    rem = Math.floor(rem / shape[d]);
  }
  return c;
}

export function neuronLabel(flat, shape) {
  return shape && shape.length > 1 ? `${flat} [${unflatten(flat, shape).join(',')}]` : String(flat);
}

// Parses what a user types: flat indices ("3, 17") and/or coordinates
// ("[5,3,3] [12,0,6]"), checked against the layer (shape, neuron count).
// Returns {neurons: [flat...]} (duplicates dropped, order kept) or {error}.
export function parseNeurons(text, shape, count) {
  const s = (text || '').trim();
  if (!s) return { neurons: [] };
  const out = [];
  const seen = new Set();
  const add = (f) => { if (!seen.has(f)) { seen.add(f); out.push(f); } };
  const re = /\[([^\]]*)\]|(-?\d+(?:\.\d+)?)|([^\s,;])/g;
  let m;
  while ((m = re.exec(s)) !== null) {
    if (m[1] !== undefined) {
      const parts = m[1].split(/[\s,]+/).filter(Boolean);
      if (!parts.every((p) => /^\d+$/.test(p)))
        return { error: `[${m[1]}] is not a coordinate: use non-negative integers, e.g. [${shape.map(() => 0).join(',')}]` };
      const c = parts.map(Number);
      if (c.length !== shape.length)
        return { error: `[${m[1]}] has ${c.length} coordinate${c.length === 1 ? '' : 's'}; this layer's neurons have ${shape.length} ([${shape.join(',')}])` };
      for (let d = 0; d < c.length; d++)
        if (c[d] >= shape[d])
          return { error: `[${m[1]}]: coordinate ${d} is ${c[d]}, must be below ${shape[d]} (shape [${shape.join(',')}])` };
      add(flatten(c, shape));
    } else if (m[2] !== undefined) {
      if (!/^\d+$/.test(m[2])) return { error: `'${m[2]}' is not a neuron index (0..${count - 1})` };
      const f = Number(m[2]);
      if (f >= count) return { error: `neuron ${f} is out of range: this layer has neurons 0..${count - 1}` };
      add(f);
    } else {
      return { error: `unexpected '${m[3]}': type indices like "3, 17" or coordinates like "[${shape.map(() => 0).join(',')}]"` };
    }
  }
  return { neurons: out };
}

// A URL's neuron list against the layer: the ones it has, and the others
// (shown as a warning rather than dropping the whole list).
export function splitNeurons(list, count) {
  const valid = [], dropped = [];
  for (const n of list || []) (n < count ? valid : dropped).push(n);
  return { valid: [...new Set(valid)], dropped };
}

// Whether a model takes a dataset's inputs: the same number of elements per
// input (the daemon's rule; [N,H,W] datasets are [1,H,W]).
export function fitsModel(model, dataset) {
  if (!model || !model.input_shape || !dataset || !dataset.shape) return true;
  const n = (s) => s.reduce((a, b) => a * b, 1);
  return n(model.input_shape) === n(dataset.shape);
}

// ---- axes ----

// About `n` round values covering [lo, hi] (steps of 1, 2 or 5 x 10^k).
export function niceTicks(lo, hi, n = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, n);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.7) || 10 * mag;
  const out = [];
  for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) out.push(i === 0 ? 0 : Number((i * step).toPrecision(12)));
  return out;
}

// Powers of ten from 1 up to the first one >= max: the ticks of a log axis
// (which has no 0).
export function logTicks(max) {
  const out = [1];
  while (out[out.length - 1] < max) out.push(out[out.length - 1] * 10);
  return out;
}

// ---- query requests: built from a route, the exact body sent to the API ----

function pick(v, allowed, dflt) {
  return allowed.includes(v) ? v : dflt;
}

// Reads a query view's parameters; returns {q} or {error}. ctx = route.
export function queryFromParams(kind, params) {
  const neurons = parseIntList(params.get('neurons'));
  if (neurons === null) return { error: `neurons=${params.get('neurons')} is not a list of neuron indices` };
  const kText = params.get('k');
  const k = kText === null ? DEFAULT_K : Number(kText);
  if (!Number.isInteger(k) || k < 1) return { error: `k=${kText} must be an integer >= 1` };
  const labels = parseLabelList(params.get('labels'));
  if (labels === null) return { error: `labels=${params.get('labels')} is not a list of integer labels` };
  const predicted = parseLabelList(params.get('predicted'));
  if (predicted === null) return { error: `predicted=${params.get('predicted')} is not a list of classes` };
  const mis = params.get('misclassified');
  const q = { kind, neurons, k, labels, predicted, misclassified: mis === '1' || mis === 'true' };
  if (kind === 'knn') {
    const t = params.get('target');
    if (t === null || !/^\d+$/.test(t)) return { error: 'a kNN view needs target=<input id>' };
    q.target = Number(t);
    q.metric = pick(params.get('metric'), METRICS, 'l2');
  } else {
    q.agg = pick(params.get('agg'), AGGS, 'sum');
  }
  return { q };
}

export function queryBody(ctx, q) {
  const body = { model: ctx.model, dataset: ctx.dataset, layer: ctx.layer, neurons: q.neurons.slice(), k: q.k };
  if (q.kind === 'knn') {
    body.target = q.target;
    body.metric = q.metric;
  } else {
    body.agg = q.agg;
  }
  // The daemon ANDs the filters: true label, predicted class, misclassified.
  const filter = {};
  if (q.labels && q.labels.length) filter.labels = q.labels.slice();
  if (q.predicted && q.predicted.length) filter.predicted = q.predicted.slice();
  if (q.misclassified) filter.misclassified = true;
  if (Object.keys(filter).length) body.filter = filter;
  return body;
}

// ---- heatmaps: GET .../inputs/{id}/attribution.png ----
// The page's method choices; smoothgrad is the gradient averaged over noisy
// copies (samples=16), which is less speckled. channel only exists for a
// layer of [C,H,W] outputs.
export const HEAT_LABELS = { gradient: 'gradient', smoothgrad: 'SmoothGrad', gradcam: 'Grad-CAM', channel: 'channel map' };
export function heatMethods(shape) {
  return shape && shape.length === 3 ? ['gradient', 'smoothgrad', 'gradcam', 'channel'] : ['gradient', 'smoothgrad', 'gradcam'];
}
// A view's heat=METHOD: the method, null for off ("off" or absent without a
// default), or {error} for a method this layer has not.
export function heatFromParams(params, shape, dflt = null) {
  const t = params.get('heat');
  if (t === null || t === '') return { method: dflt };
  if (t === 'off') return { method: null };
  if (!heatMethods(shape).includes(t))
    return { method: null, error: t === 'channel' ? `heat=channel needs a layer of [C,H,W] outputs (this one is [${(shape || []).join('×')}])` : `heat=${t} is not one of ${heatMethods(shape).join(', ')}` };
  return { method: t };
}
// g: {model, layer, neurons, agg}. The heatmap over input id's thumbnail.
export function attributionPath(dataset, id, g, method, size) {
  const e = encodeURIComponent;
  const m = method === 'smoothgrad' ? 'gradient&samples=16' : method;
  return `/v1/datasets/${e(dataset)}/inputs/${e(id)}/attribution.png?model=${e(g.model)}&layer=${e(g.layer)}` +
    `&neurons=${g.neurons.join(',')}&agg=${g.agg || 'sum'}&method=${m}${size ? `&size=${size}` : ''}`;
}

// ---- the confusion matrix (rows: true label, columns: predicted) ----
// Per cell its count, its share of the row (recall for the diagonal) and a
// colour strength 0..1: the diagonal against the largest diagonal count,
// the errors against the largest error, so the mistakes stay visible next
// to the (much larger) correct counts.
export function confusionCells(confusion) {
  const n = confusion.length;
  const rowTotals = confusion.map((row) => row.reduce((a, b) => a + b, 0));
  const colTotals = Array.from({ length: n }, (_, p) => confusion.reduce((a, row) => a + (row[p] || 0), 0));
  let maxDiag = 0, maxOff = 0, correct = 0, worst = null;
  confusion.forEach((row, t) => row.forEach((v, p) => {
    if (t === p) { maxDiag = Math.max(maxDiag, v); correct += v; } else if (v > maxOff) { maxOff = v; worst = { t, p, count: v }; }
  }));
  const cells = confusion.map((row, t) => row.map((count, p) => ({
    t, p, count, diag: t === p,
    share: rowTotals[t] ? count / rowTotals[t] : 0,
    strength: count ? count / (t === p ? maxDiag : maxOff) : 0,
  })));
  const total = rowTotals.reduce((a, b) => a + b, 0);
  return {
    n, cells, rowTotals, colTotals, total, correct, worst,
    recall: rowTotals.map((r, t) => (r ? confusion[t][t] / r : null)),
    precision: colTotals.map((c, p) => (c ? confusion[p][p] / c : null)),
  };
}

// ---- histogram of one neuron from its index entry ----
// partitions: [{partition, lower, upper, count}] (lower/upper null when
// empty). Each partition's count is spread evenly over [lower, upper] (a point
// mass when lower == upper) into `nbins` equal-width bins; the MAI
// (partition 0) is kept apart so it can be drawn in its own colour. When
// maiValues holds the whole MAI (its exact values), it is binned exactly.
export function histogramBins(partitions, nbins, maiValues) {
  const parts = partitions.filter((p) => p.count > 0 && p.lower !== null && p.upper !== null &&
    Number.isFinite(p.lower) && Number.isFinite(p.upper));
  if (!parts.length) return null;
  let lo = Math.min(...parts.map((p) => p.lower));
  let hi = Math.max(...parts.map((p) => p.upper));
  if (hi === lo) { lo -= 0.5; hi += 0.5; }
  const width = (hi - lo) / nbins;
  const bins = Array.from({ length: nbins }, (_, i) => ({ lo: lo + i * width, hi: lo + (i + 1) * width, mai: 0, rest: 0 }));
  const binOf = (v) => Math.min(nbins - 1, Math.max(0, Math.floor((v - lo) / width)));
  const exactMai = Array.isArray(maiValues) && parts.some((p) => p.partition === 0 && p.count === maiValues.length);
  if (exactMai) for (const v of maiValues) bins[binOf(v)].mai += 1;
  for (const p of parts) {
    if (p.partition === 0 && exactMai) continue;
    const key = p.partition === 0 ? 'mai' : 'rest';
    const a = binOf(p.lower), b = binOf(p.upper);
    if (a === b || p.upper === p.lower) {
      bins[a][key] += p.count;
      continue;
    }
    // Spread uniformly over the value range [lower, upper].
    const span = p.upper - p.lower;
    for (let i = a; i <= b; i++) {
      const ov = Math.min(bins[i].hi, p.upper) - Math.max(bins[i].lo, p.lower);
      if (ov > 0) bins[i][key] += (p.count * ov) / span;
    }
  }
  const total = parts.reduce((s, p) => s + p.count, 0);
  return { lo, hi, bins, total, exactMai };
}

export function fmt(v, digits = 4) {
  if (v === null || v === undefined) return '–';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(digits).replace(/\.?0+$/, '') || '0';
}

export function fmtBytes(b) {
  if (!Number.isFinite(b)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${i ? b.toFixed(1) : b} ${u[i]}`;
}

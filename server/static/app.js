// app.js -- the neuron explorer: state, hash routing and views. Every view
// is drawn from the URL alone (plus caches), so a copied URL reopens it.
import { api, ApiError, imageUrl, getToken, setToken } from './api.js';
import * as L from './logic.js';
import { barChart, histogram } from './charts.js';

const $ = (sel, root = document) => root.querySelector(sel);

// h('div', {class: 'x', onclick: fn}, child, 'text', ...) -> element
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const TOP_NEURONS = 20;     // bars in an input's chart
const MAI_SHOWN = 24;       // top inputs next to a neuron's histogram
const MAI_EXACT = 5000;     // fetch the MAI's values up to this size: its histogram part is then exact
const LABEL_FETCHES = 6;    // concurrent label look-ups while browsing

const S = {
  models: null,             // GET /v1/models
  datasets: null,           // GET /v1/datasets
  indexes: [],              // GET /v1/indexes
  route: null,
  seq: 0,                   // bumped per render: late answers of an old view are dropped
  abort: null,              // aborts the old view's query
  selKey: '',               // model|dataset|layer the selection belongs to
  selection: [],            // flat neuron ids, in the order chosen
  predictions: [],          // GET /v1/predictions: which (model, dataset) have them
  form: { k: L.DEFAULT_K, agg: 'sum', metric: 'l2', labels: '', predicted: '', misclassified: false },
  labels: new Map(),        // `${ds}/${id}` -> label (or null)
  preds: new Map(),         // `${model}|${ds}/${id}` -> predicted class
  heat: null,               // the view's heatmap method, null when off (from its URL)
  heatMethod: 'gradient',   // the method last chosen: offered when heatmaps are off
  heatErrs: new Set(),      // `${seq}|${method}`: a failed heatmap's message is fetched once per view
  acts: new Map(),          // `${model}|${ds}|${layer}|${id}` -> activations rows
  polls: new Set(),         // job ids being watched
};

// ---------------------------------------------------------------- errors

function showError(err, context) {
  if (err && err.name === 'AbortError') return;
  const box = $('#errors');
  const msg = err instanceof ApiError ? err.toString() : String(err && err.message ? err.message : err);
  const text = context ? `${context}: ${msg}` : msg;
  for (const old of box.children) if (old.dataset.text === text) return;
  const item = h('div', { class: 'error', dataset: { text, code: err && err.code ? err.code : '' } },
    h('span', {}, text),
    h('button', { type: 'button', class: 'close', 'aria-label': 'dismiss', onclick: () => item.remove() }, '×'));
  if (err instanceof ApiError && err.status === 401) item.append(tokenForm(() => item.remove()));
  box.append(item);
  console.warn(text);
}

// A daemon with --token-file answers 401 to POST/PUT/DELETE without the
// token: ask for it once, keep it for the tab, and redo the view.
function tokenForm(done) {
  const input = h('input', { type: 'password', placeholder: 'bearer token', 'aria-label': 'API token', value: getToken() });
  return h('form', {
    class: 'token', onsubmit: (ev) => {
      ev.preventDefault();
      setToken(input.value.trim());
      done();
      render();
    },
  }, input, h('button', { type: 'submit' }, 'use token'));
}

function errorBlock(err, what) {
  const msg = err instanceof ApiError ? err.toString() : String(err && err.message ? err.message : err);
  const box = h('div', { class: 'error inline', dataset: { code: err && err.code ? err.code : '' } }, h('span', {}, `${what}: ${msg}`));
  if (err instanceof ApiError && err.status === 401) box.append(tokenForm(() => {}));
  return box;
}

// ---------------------------------------------------------------- catalog

async function loadCatalog() {
  const [models, datasets, indexes, preds] = await Promise.allSettled([api.models(), api.datasets(), api.indexes(), api.predictionsList()]);
  if (models.status === 'fulfilled') S.models = models.value; else { S.models = S.models || []; showError(models.reason, 'loading models'); }
  if (datasets.status === 'fulfilled') S.datasets = datasets.value; else { S.datasets = S.datasets || []; showError(datasets.reason, 'loading datasets'); }
  if (indexes.status === 'fulfilled') S.indexes = indexes.value; else showError(indexes.reason, 'loading indexes');
  if (preds.status === 'fulfilled') S.predictions = preds.value; else showError(preds.reason, 'loading predictions');
}

async function refreshPredictions() {
  try { S.predictions = await api.predictionsList(); } catch (e) { showError(e, 'loading predictions'); }
}

// The selected model's predictions over the dataset (GET /v1/predictions's
// entry), and whether thumbnails can show them.
function predsOf(c) {
  return S.predictions.find((p) => p.model === c.model && p.dataset === c.dataset) || null;
}
function predsReady(c) {
  const p = predsOf(c);
  return !!(p && p.state === 'ready');
}

async function refreshIndexes() {
  try { S.indexes = await api.indexes(); } catch (e) { showError(e, 'loading indexes'); }
}

async function health() {
  const el = $('#health');
  try {
    const hs = await api.health();
    el.textContent = `● ${hs.status} · v${hs.version} · ${hs.device}`;
    el.className = 'health ok';
  } catch (e) {
    el.textContent = '● daemon unreachable';
    el.className = 'health bad';
    showError(e, 'health');
  }
}

// The (model, dataset, layer) of a route, resolved against the catalog.
function resolve(r) {
  const c = { model: r.model, dataset: r.dataset, layer: r.layer };
  c.m = r.model ? (S.models || []).find((m) => m.name === r.model) : null;
  c.ds = r.dataset ? (S.datasets || []).find((d) => d.name === r.dataset) : null;
  c.ly = c.m && c.m.layers && r.layer ? c.m.layers.find((l) => l.name === r.layer) : null;
  c.problem = null;
  if (r.model && !c.m) c.problem = `model '${r.model}' is not registered`;
  else if (c.m && !c.m.layers) c.problem = `model '${r.model}' is registered but unavailable (${c.m.path}); register it again`;
  else if (r.dataset && !c.ds) c.problem = `dataset '${r.dataset}' does not exist`;
  else if (c.m && c.ds && !L.fitsModel(c.m, c.ds))
    c.problem = `dataset '${r.dataset}' has inputs [${c.ds.shape.join('×')}]; model '${r.model}' takes [${c.m.input_shape.join('×')}]`;
  else if (r.layer && !c.ly) c.problem = `model '${r.model}' has no layer '${r.layer}'`;
  c.ok = !!(c.m && c.ds && c.ly && !c.problem);
  return c;
}

function indexOf(c) {
  const mine = S.indexes.filter((ix) => ix.model === c.model && ix.dataset === c.dataset && ix.layer === c.layer &&
    (ix.kind === undefined || ix.kind === 'npi'));
  const best = (state) => mine.filter((ix) => ix.state === state).sort((a, b) => b.id - a.id)[0];
  return best('ready') || best('building') || best('failed') || null;
}

// ---------------------------------------------------------------- picker

function option(value, text, selected, disabled) {
  return h('option', { value, selected: selected || undefined, disabled: disabled || undefined }, text);
}

function fillPicker(r) {
  const sm = $('#sel-model'), sd = $('#sel-dataset'), sl = $('#sel-layer');
  sm.replaceChildren(option('', '— model —', !r.model));
  for (const m of S.models || [])
    sm.append(option(m.name, m.layers ? m.name : `${m.name} (unavailable)`, m.name === r.model, !m.layers));
  const m = (S.models || []).find((x) => x.name === r.model);
  sd.replaceChildren(option('', '— dataset —', !r.dataset));
  // A dataset the model cannot take is listed, marked, and not selectable.
  for (const d of S.datasets || []) {
    const fits = L.fitsModel(m, d);
    const o = option(d.name, fits ? `${d.name} (${d.count})` : `${d.name} (${d.count}) ⚠ inputs [${d.shape.join('×')}] do not fit`,
      d.name === r.dataset, !fits);
    if (!fits) { o.title = `model ${m.name} takes inputs [${m.input_shape.join('×')}]`; o.dataset.fits = 'no'; }
    sd.append(o);
  }
  sl.replaceChildren(option('', '— layer —', !r.layer));
  for (const l of (m && m.layers) || [])
    sl.append(option(l.name, `${l.name} [${l.shape.join('×')}]`, l.name === r.layer));
  sd.disabled = !r.model;
  sl.disabled = !r.model;
}

function onPick(ev) {
  let model = $('#sel-model').value, dataset = $('#sel-dataset').value, layer = $('#sel-layer').value;
  if (ev.target.id === 'sel-model') {
    const m = (S.models || []).find((x) => x.name === model);
    if (!m || !m.layers || !m.layers.some((l) => l.name === layer)) layer = '';
  }
  const e = encodeURIComponent;
  if (!model) location.hash = '#/';
  else if (!dataset) location.hash = `#/m/${e(model)}`;
  else if (!layer) location.hash = `#/m/${e(model)}/d/${e(dataset)}`;
  else location.hash = L.layerPath(model, dataset, layer);
}

// ---------------------------------------------------------------- layer bar + index builds

function renderLayerbar(c) {
  const bar = $('#layerbar');
  if (!c.ok) { bar.hidden = true; return; }
  bar.hidden = false;
  $('#layer-name').textContent = c.layer;
  $('#layer-shape').textContent = `[${c.ly.shape.join(', ')}]`;
  $('#layer-neurons').textContent = String(c.ly.neurons);
  $('#dataset-count').textContent = `${c.ds.count} in ${c.dataset}`;
  const ix = indexOf(c);
  const state = $('#index-state'), info = $('#index-info'), btn = $('#build-index'), pw = $('#progress-wrap');
  state.dataset.state = ix ? ix.state : 'none';
  state.textContent = ix ? ix.state : 'none';
  btn.hidden = !!(ix && ix.state !== 'failed');
  btn.textContent = ix && ix.state === 'failed' ? 'Rebuild index' : 'Build index';
  btn.disabled = false;
  pw.hidden = !(ix && ix.state === 'building');
  if (!ix) {
    info.textContent = 'no index yet: queries still work (the first one builds it), or build it now';
  } else if (ix.state === 'ready') {
    const pct = ix.full_materialization_bytes ? ` (${(100 * ix.bytes / ix.full_materialization_bytes).toFixed(1)}% of ${L.fmtBytes(ix.full_materialization_bytes)} full)` : '';
    info.textContent = `#${ix.id} · ${L.fmtBytes(ix.bytes)}${pct} · ${ix.partitions} partitions · MAI ${(100 * ix.mai_ratio).toFixed(1)}%` +
      (ix.build_s ? ` · built in ${L.fmt(ix.build_s, 1)} s` : '');
  } else if (ix.state === 'building') {
    info.textContent = `#${ix.id}, job ${ix.job}`;
    watchJob(ix.job);
  } else {
    info.textContent = `#${ix.id} failed${ix.error ? ': ' + ix.error : ''}`;
  }
  renderPredsBadge(c);
}

function renderPredsBadge(c) {
  const p = predsOf(c);
  const st = $('#preds-state'), link = $('#preds-link');
  st.dataset.state = p ? p.state : 'none';
  st.textContent = !p ? 'none' : p.state === 'ready' && typeof p.accuracy === 'number' ? `${(100 * p.accuracy).toFixed(2)}% accurate` : p.state;
  link.href = L.predictionsHash(c);
  link.textContent = p && p.state === 'ready' ? 'confusion matrix' : 'compute';
  if (p && p.state === 'computing' && p.job) watchPredJob(p.job, c.model, c.dataset);
}

async function buildIndex() {
  const c = resolve(S.route);
  if (!c.ok) return;
  const btn = $('#build-index');
  btn.disabled = true;
  try {
    const r = await api.buildIndex(c.model, c.dataset, c.layer);
    await refreshIndexes();
    renderLayerbar(resolve(S.route));
    watchJob(r.job);
  } catch (e) {
    btn.disabled = false;
    showError(e, `building the index of ${c.layer}`);
  }
}

// Polls a build job until it ends; the progress bar follows it while the
// job's layer is the one on screen.
async function watchJob(job) {
  if (S.polls.has(job)) return;
  S.polls.add(job);
  try {
    for (;;) {
      let j;
      try {
        j = await api.job(job);
      } catch (e) {
        showError(e, `watching job ${job}`);
        return;
      }
      const c = resolve(S.route || {});
      const ix = c.ok ? indexOf(c) : null;
      if (ix && ix.job === job) {
        const p = $('#progress'), t = $('#progress-text');
        $('#progress-wrap').hidden = false;
        p.max = j.total || 1;
        p.value = j.done || 0;
        const pct = j.total ? Math.floor((100 * j.done) / j.total) : 0;
        t.textContent = j.state === 'queued' ? 'queued…'
          : `${j.done} / ${j.total} inputs · ${pct}%` + (j.eta_s !== null && j.eta_s !== undefined && j.state === 'running' ? ` · about ${Math.ceil(j.eta_s)} s left` : '');
        $('#index-state').dataset.progress = String(pct);
      }
      if (j.state === 'done' || j.state === 'failed') {
        if (j.state === 'failed') showError(new Error(j.error || 'unknown error'), `index build (job ${job}) failed`);
        await refreshIndexes();
        const now = resolve(S.route || {});
        renderLayerbar(now);
        // The neuron view shows "no index" until now: draw it again.
        if (now.ok && S.route.view === 'neuron') render();
        return;
      }
      await new Promise((res) => setTimeout(res, 300));
    }
  } finally {
    S.polls.delete(job);
  }
}

// ---------------------------------------------------------------- thumbnails

function labelKey(ds, id) { return `${ds}/${id}`; }
function predKey(c, id) { return `${c.model}|${c.dataset}/${id}`; }

// Keeps what an answer says about an input's classes (label; predicted when
// the model's predictions came with it).
function remember(c, id, x) {
  if (x.label !== undefined) S.labels.set(labelKey(c.dataset, id), x.label);
  else if (!S.labels.has(labelKey(c.dataset, id))) S.labels.set(labelKey(c.dataset, id), null);
  if (x.predicted !== undefined && x.predicted !== null) S.preds.set(predKey(c, id), x.predicted);
}

// Writes a thumbnail's class line from the caches: the true class, and the
// predicted one (marked when wrong) when the model has predictions.
function paintClasses(c, fig) {
  const id = fig.dataset.input;
  const lab = S.labels.get(labelKey(c.dataset, id));
  const pred = S.preds.get(predKey(c, id));
  const cc = L.classCaption(lab === undefined ? null : lab, pred, c.ds.classes);
  const le = $('.label', fig), pe = $('.pred', fig);
  le.textContent = cc.label;
  if (lab !== undefined && lab !== null) { le.title = `true class: label ${lab}`; fig.dataset.label = lab; }
  pe.textContent = cc.predicted;
  pe.title = cc.predicted ? `the model predicts class ${pred}${cc.wrong ? ' (misclassified)' : ''}` : '';
  pe.classList.toggle('wrong', cc.wrong);
  if (pred !== undefined) fig.dataset.predicted = pred;
  fig.classList.toggle('misclassified', cc.wrong);
}

// An image that can switch to its heatmap (attribution.png of the view's
// group): a per-image toggle over it; the view's global switch sets them all.
function heatImg(c, id, size, attrs) {
  const img = h('img', { ...attrs, class: ((attrs && attrs.class) || '') + ' heatable', src: imageUrl(c.dataset, id, size === 112 ? undefined : size) });
  img.dataset.input = id;
  img.dataset.size = size;
  img.dataset.plain = img.getAttribute('src');
  img.dataset.local = '';
  img.addEventListener('error', () => heatFailed(c, img));
  return img;
}
function heatToggle(c, img) {
  return h('button', {
    type: 'button', class: 'heat-toggle', 'aria-pressed': 'false', title: 'heatmap of this input: where the group fires',
    onclick: () => { img.dataset.local = img.dataset.heat ? 'off' : 'on'; applyHeat(c, img.closest('.imgbox')); },
  }, '◐');
}

function thumb(c, id, { caption, highlight, rank, label, predicted, heat, href } = {}) {
  if (label !== undefined) remember(c, id, { label, predicted });
  const img = heat
    ? heatImg(c, id, 112, { alt: `input ${id}`, width: 112, height: 112, loading: 'lazy', decoding: 'async' })
    : h('img', { src: imageUrl(c.dataset, id), alt: `input ${id}`, width: 112, height: 112, loading: 'lazy', decoding: 'async' });
  const fig = h('figure', { class: 'thumb' + (highlight ? ' current' : ''), dataset: { input: id } },
    h('div', { class: 'imgbox' },
      h('a', { href: href || L.inputHash(c, id), title: `open input ${id}` }, img),
      heat ? heatToggle(c, img) : null),
    h('figcaption', {},
      rank !== undefined ? h('span', { class: 'rank' }, `${rank}.`) : null,
      h('span', { class: 'id' }, `#${id}`),
      h('span', { class: 'label' }),
      h('span', { class: 'pred' }),
      caption ? h('span', { class: 'score' }, caption) : null));
  paintClasses(c, fig);
  return fig;
}

// Fills in labels (and predictions) of thumbnails that lack them, a few
// requests at a time: the listing at offset=id, which carries both.
async function fillLabels(c, figs, seq) {
  const ready = predsReady(c);
  const todo = figs.filter((f) => !S.labels.has(labelKey(c.dataset, f.dataset.input)) ||
    (ready && !S.preds.has(predKey(c, f.dataset.input))));
  let next = 0;
  const worker = async () => {
    while (next < todo.length && seq === S.seq) {
      const f = todo[next++];
      const id = Number(f.dataset.input);
      try {
        const x = (await api.inputs(c.dataset, id, 1, null, ready ? c.model : null)).inputs[0];
        if (x && x.id === id) remember(c, id, x);
        paintClasses(c, f);
      } catch (e) {
        showError(e, 'loading labels');
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: LABEL_FETCHES }, worker));
}

// ---------------------------------------------------------------- heatmaps

// The view's default: a conv neuron's view shows where its channel fires.
function defaultHeat(c, r) {
  return r.view === 'neuron' && c.ly.shape.length === 3 ? 'channel' : null;
}

// The group a view's heatmaps are of: a neuron view's neuron, a query's
// group (with its top-k agg), else the selection.
function heatGroup(c) {
  const r = S.route;
  let neurons = S.selection, agg = 'sum';
  if (r.view === 'neuron') neurons = [r.neuron];
  else if (r.view === 'topk' || r.view === 'knn') {
    const p = L.queryFromParams(r.view, r.params);
    if (p.q && p.q.neurons.length) { neurons = p.q.neurons; if (p.q.agg) agg = p.q.agg; }
  }
  return { model: c.model, layer: c.layer, neurons: neurons.filter((n) => n < c.ly.neurons), agg };
}

// Points every heatable image under root at its heatmap or its thumbnail:
// its own toggle when used, else the view's switch.
function applyHeat(c, root = document) {
  const g = heatGroup(c);
  const method = S.heat || S.heatMethod;
  for (const img of root.querySelectorAll('img.heatable')) {
    const local = img.dataset.local;
    const on = (local ? local === 'on' : !!S.heat) && g.neurons.length > 0;
    const src = on ? L.attributionPath(c.dataset, img.dataset.input, g, method, Number(img.dataset.size)) : img.dataset.plain;
    if (img.getAttribute('src') !== src) img.setAttribute('src', src);
    img.dataset.heat = on ? method : '';
    img.closest('.imgbox').classList.toggle('heat', on);
    const btn = $('.heat-toggle', img.closest('.imgbox'));
    if (btn) {
      btn.setAttribute('aria-pressed', on ? 'true' : 'false');
      btn.disabled = !g.neurons.length;
      btn.title = g.neurons.length ? `${on ? 'hide' : 'show'} the ${L.HEAT_LABELS[method]} heatmap of this input` : 'select neurons first';
    }
  }
  const box = $('#heat-on');
  if (box && root === document) {
    box.checked = !!S.heat;
    box.disabled = !g.neurons.length;
    $('#heat-hint').textContent = !g.neurons.length ? 'select neurons first'
      : `${g.neurons.length === 1 ? `neuron ${L.neuronLabel(g.neurons[0], c.ly.shape)}` : `${g.neurons.length} neurons`} (${g.agg})`;
  }
}

// The global switch (and method) of a view's heatmaps; kept in its URL.
function heatControls(c) {
  const methods = L.heatMethods(c.ly.shape);
  const cur = S.heat || (methods.includes(S.heatMethod) ? S.heatMethod : 'gradient');
  const box = h('input', { type: 'checkbox', id: 'heat-on', checked: !!S.heat || undefined, onchange: () => setHeat(c, box.checked ? sel.value : null) });
  const sel = h('select', {
    id: 'heat-method', 'aria-label': 'heatmap method',
    title: 'gradient: d(group)/d(pixel) · SmoothGrad: averaged over 16 noisy copies · Grad-CAM: at the deepest conv layer up to this one' +
      (methods.includes('channel') ? ' · channel map: the activation maps of the group\'s channels' : ''),
    onchange: () => { S.heatMethod = sel.value; if (box.checked) setHeat(c, sel.value); },
  }, methods.map((m) => option(m, L.HEAT_LABELS[m], m === cur)));
  return h('span', { class: 'heatctl', id: 'heat-controls' },
    h('label', { class: 'inline' }, box, ' heatmaps'), sel, h('span', { class: 'muted', id: 'heat-hint' }));
}

function setHeat(c, method) {
  S.heat = method;
  if (method) S.heatMethod = method;
  for (const img of document.querySelectorAll('img.heatable')) img.dataset.local = '';
  const dflt = defaultHeat(c, S.route);
  const hash = L.setHashParam(location.hash, 'heat', method === dflt ? null : method || 'off');
  if (hash !== location.hash) history.replaceState(null, '', hash);
  applyHeat(c);
}

// A heatmap that does not load (a 4xx: the daemon says why) falls back to
// the thumbnail; its message goes to the error display, once per view.
async function heatFailed(c, img) {
  const method = img.dataset.heat;
  if (!method || method === 'failed') return;
  const url = img.getAttribute('src');
  img.dataset.heat = 'failed';
  img.setAttribute('src', img.dataset.plain);
  const key = `${S.seq}|${method}`;
  if (S.heatErrs.has(key)) return;
  S.heatErrs.add(key);
  try {
    const r = await fetch(url);
    const js = await r.json().catch(() => null);
    if (js && js.error) showError(new ApiError(r.status, js.error.code, js.error.message, url), `${L.HEAT_LABELS[method] || method} heatmap`);
    else showError(new Error(`${url} answered ${r.status}`), 'heatmap');
  } catch (e) {
    showError(e, 'heatmap');
  }
}

// ---------------------------------------------------------------- side: input card + query form

function currentInput(r) {
  if (r.view === 'input') return r.input;
  if (r.view === 'knn') { const t = r.params.get('target'); return t !== null && /^\d+$/.test(t) ? Number(t) : null; }
  const i = r.params.get('input');
  return i !== null && /^\d+$/.test(i) ? Number(i) : null;
}

function setSelection(c, neurons, { updateUrl = true } = {}) {
  S.selection = neurons.slice();
  const field = $('#neurons');
  if (field && document.activeElement !== field) field.value = S.selection.join(', ');
  drawChips(c);
  for (const g of document.querySelectorAll('#barchart .bar')) {
    const on = S.selection.includes(Number(g.dataset.neuron));
    g.classList.toggle('selected', on);
    g.setAttribute('aria-pressed', on ? 'true' : 'false');
  }
  // The input view's URL carries the selection, so a shared link keeps it.
  if (updateUrl && S.route && S.route.view === 'input') {
    const hash = L.inputHash(c, S.route.input, S.selection, L.inputExtras(L.parseRoute(location.hash).params));
    if (hash !== location.hash) history.replaceState(null, '', hash);
  }
  const count = $('#sel-count');
  if (count) count.textContent = S.selection.length ? `${S.selection.length} selected` : 'none selected';
  // The input view's heatmap is of the selection: follow it.
  if (S.route && S.route.view === 'input') applyHeat(c);
}

function toggleNeuron(c, n) {
  const i = S.selection.indexOf(n);
  const next = S.selection.slice();
  if (i >= 0) next.splice(i, 1); else next.push(n);
  $('#neurons-error').textContent = '';
  setSelection(c, next);
}

function drawChips(c) {
  const box = $('#chips');
  if (!box) return;
  const inp = currentInput(S.route);
  box.replaceChildren(...S.selection.map((n) => h('span', { class: 'chip', dataset: { neuron: n } },
    h('a', { href: L.neuronHash(c, n, inp === null ? undefined : inp), title: 'activation histogram and top inputs of this neuron' },
      L.neuronLabel(n, c.ly.shape)),
    h('button', { type: 'button', 'aria-label': `unselect neuron ${n}`, onclick: () => toggleNeuron(c, n) }, '×'))));
}

function inputCard(c, id, seq) {
  const card = h('section', { class: 'panel input-card', id: 'input-card', dataset: { input: id, ready: '0' } });
  const label = h('p', { class: 'muted', id: 'input-label' }, ' ');
  const chart = h('div', { id: 'barchart', class: 'chart' }, h('p', { class: 'muted' }, 'computing activations…'));
  const count = c.ds.count;
  // The grid link goes back to the (filtered) page the input was opened from.
  const f = L.browseFilter(S.route.params);
  const gridPage = L.filterActive(f) ? L.pageFromParams(S.route.params, Infinity, 0) : Math.floor(id / L.PAGE_SIZE);
  const nav = h('nav', { class: 'inputnav' },
    id > 0 ? h('a', { href: L.inputHash(c, id - 1), title: 'previous input' }, '‹ prev') : h('span', { class: 'muted' }, '‹ prev'),
    h('a', { href: L.browseHash(c, gridPage, f), id: 'grid-link' }, 'grid'),
    id + 1 < count ? h('a', { href: L.inputHash(c, id + 1), title: 'next input' }, 'next ›') : h('span', { class: 'muted' }, 'next ›'));
  const big = heatImg(c, id, 224, { class: 'big', alt: `input ${id}`, width: 112, height: 112 });
  card.append(
    h('div', { class: 'input-head' },
      h('div', { class: 'imgbox', id: 'card-image' }, h('a', { href: L.inputHash(c, id) }, big), heatToggle(c, big)),
      h('div', {}, h('h2', {}, `Input #${id}`), label, nav)),
    // The input view has no results: its heatmap switch sits here.
    S.route.view === 'input' ? h('div', { class: 'row heatrow' }, heatControls(c)) : '',
    h('h3', {}, `Most active neurons in ${c.layer}`),
    h('p', { class: 'hint' }, 'Click bars to select neurons. ',
      h('button', { type: 'button', class: 'link', id: 'select-top1', onclick: () => selectTop(c, id, 1) }, 'top 1'), ' · ',
      h('button', { type: 'button', class: 'link', id: 'select-top3', onclick: () => selectTop(c, id, 3) }, 'top 3'), ' · ',
      h('button', { type: 'button', class: 'link', id: 'select-top5', onclick: () => selectTop(c, id, 5) }, 'top 5')),
    chart);
  (async () => {
    const key = `${c.model}|${c.dataset}|${c.layer}|${id}`;
    const ready = predsReady(c);
    const [inp, rows, row] = await Promise.all([
      api.input(c.dataset, id).catch((e) => ({ error: e })),
      S.acts.has(key) ? S.acts.get(key) : api.activations(c.dataset, id, c.model, c.layer, TOP_NEURONS).catch((e) => ({ error: e })),
      // The model's prediction comes with the listing's row of this input.
      ready ? api.inputs(c.dataset, id, 1, null, c.model).then((l) => l.inputs[0] || {}).catch((e) => ({ error: e })) : null,
    ]);
    if (seq !== S.seq) return;
    if (inp.error) label.replaceChildren(errorBlock(inp.error, 'input'));
    else {
      remember(c, id, inp);
      const classes = c.ds.classes;
      const parts = [];
      if (inp.label !== undefined) {
        parts.push(h('span', { id: 'card-class' }, `label ${inp.label}${classes && classes[inp.label] !== undefined ? ` (${classes[inp.label]})` : ''}`), ' · ');
      }
      if (row && row.error) showError(row.error, 'loading the prediction');
      else if (row && row.predicted !== undefined) {
        remember(c, id, row);
        const wrong = inp.label !== undefined && row.predicted !== inp.label;
        parts.push(h('span', { id: 'card-pred', class: 'pred' + (wrong ? ' wrong' : ''), dataset: { predicted: row.predicted } },
          `predicted ${row.predicted}${classes && classes[row.predicted] !== undefined ? ` (${classes[row.predicted]})` : ''}${wrong ? ' ✗' : ' ✓'}`), ' · ');
      }
      parts.push(`shape [${inp.shape.join('×')}]`);
      label.replaceChildren(...parts);
    }
    if (rows.error) {
      chart.replaceChildren(errorBlock(rows.error, 'activations'));
    } else {
      S.acts.set(key, rows);
      const sel = new Set(S.selection);
      chart.replaceChildren(barChart(rows, { shape: c.ly.shape, selected: sel, onToggle: (n) => toggleNeuron(c, n) }),
        h('p', { class: 'hist-links', id: 'hist-links' }, 'Activation histogram of ',
          rows.slice(0, 5).map((row, i) => [i ? ' · ' : '', h('a', { href: L.neuronHash(c, row.neuron, id), class: 'hist-link' }, L.neuronLabel(row.neuron, c.ly.shape))])));
    }
    card.dataset.ready = '1';
  })();
  return card;
}

// The hint under the query form's prediction filters: they need the
// model's predictions over the dataset.
function predsHint(c) {
  const p = predsOf(c);
  if (p && p.state === 'ready') return null;
  return h('p', { class: 'hint', id: 'preds-hint' }, p && p.state === 'computing' ? 'Predictions are being computed: ' : 'These filters need the model\'s predictions: ',
    h('a', { href: L.predictionsHash(c) }, p && p.state === 'computing' ? 'progress' : 'compute them'), '.');
}

function selectTop(c, id, n) {
  const rows = S.acts.get(`${c.model}|${c.dataset}|${c.layer}|${id}`);
  if (!rows) return;
  $('#neurons-error').textContent = '';
  setSelection(c, rows.slice(0, n).map((r) => r.neuron));
}

function queryPanel(c, r) {
  const inp = currentInput(r);
  const shape = c.ly.shape;
  const example = shape.length > 1 ? `e.g. 3, 17 or [${shape.map((s) => Math.min(s - 1, 2)).join(',')}]` : 'e.g. 3, 17';
  const neurons = h('input', {
    id: 'neurons', type: 'text', value: S.selection.join(', '), placeholder: example, spellcheck: 'false',
    'aria-describedby': 'neurons-error',
    oninput: () => {
      const p = L.parseNeurons(neurons.value, shape, c.ly.neurons);
      $('#neurons-error').textContent = p.error || '';
      if (!p.error) setSelection(c, p.neurons);
    },
    onblur: () => { if (!$('#neurons-error').textContent) neurons.value = S.selection.join(', '); },
  });
  const k = h('input', {
    id: 'k', type: 'number', min: 1, max: c.ds.count, step: 1, value: S.form.k, 'aria-describedby': 'k-error',
    onchange: () => { S.form.k = Number(k.value); $('#k-error').textContent = ''; },
  });
  const agg = h('select', { id: 'agg', onchange: () => { S.form.agg = agg.value; } },
    L.AGGS.map((a) => option(a, a, a === S.form.agg)));
  const metric = h('select', { id: 'metric', onchange: () => { S.form.metric = metric.value; } },
    L.METRICS.map((m) => option(m, m, m === S.form.metric)));
  const classes = c.ds.classes;
  const classErr = (what) => `${what}: class numbers${classes ? ' or names' : ''} separated by commas`;
  const classEx = classes ? `e.g. 0, 6 or ${classes[6] !== undefined ? classes[6] : classes[0]}` : 'e.g. 0, 6';
  const labels = h('input', {
    id: 'labels', type: 'text', value: S.form.labels, placeholder: c.ds.labels === false ? 'dataset has no labels' : `${classEx} (empty: all)`,
    disabled: c.ds.labels === false || undefined,
    oninput: () => {
      S.form.labels = labels.value;
      $('#labels-error').textContent = L.parseClassList(labels.value, classes) === null ? classErr('labels') : '';
    },
  });
  const predicted = h('input', {
    id: 'predicted', type: 'text', value: S.form.predicted, placeholder: `${classEx} (empty: all)`,
    oninput: () => {
      S.form.predicted = predicted.value;
      $('#predicted-error').textContent = L.parseClassList(predicted.value, classes) === null ? classErr('predicted') : '';
    },
  });
  const mis = h('input', { type: 'checkbox', id: 'misclassified', checked: S.form.misclassified || undefined, onchange: () => { S.form.misclassified = mis.checked; } });
  const run = (kind) => {
    const p = L.parseNeurons(neurons.value, shape, c.ly.neurons);
    if (p.error) { $('#neurons-error').textContent = p.error; neurons.focus(); return; }
    if (!p.neurons.length) {
      $('#neurons-error').textContent = 'select at least one neuron: click bars in the chart, or type indices or coordinates';
      neurons.focus();
      return;
    }
    const kv = Number(k.value);
    if (!Number.isInteger(kv) || kv < 1) { $('#k-error').textContent = 'k must be an integer ≥ 1'; k.focus(); return; }
    if (kv > c.ds.count) { $('#k-error').textContent = `k is at most ${c.ds.count} (the dataset's inputs)`; k.focus(); return; }
    $('#k-error').textContent = '';
    const labs = L.parseClassList(labels.value, classes);
    if (labs === null) { $('#labels-error').textContent = classErr('labels'); labels.focus(); return; }
    const preds = L.parseClassList(predicted.value, classes);
    if (preds === null) { $('#predicted-error').textContent = classErr('predicted'); predicted.focus(); return; }
    setSelection(c, p.neurons, { updateUrl: false });
    S.form = { k: kv, agg: agg.value, metric: metric.value, labels: labels.value, predicted: predicted.value, misclassified: mis.checked };
    const q = { kind, neurons: p.neurons, k: kv, agg: agg.value, metric: metric.value, labels: labs, predicted: preds, misclassified: mis.checked };
    if (kind === 'knn') q.target = inp;
    let hash = L.queryHash(c, q);
    if (kind === 'topk' && inp !== null) hash = L.setHashParam(hash, 'input', inp);
    // Heatmaps that are on stay on for the new answer (a neuron view's
    // channel maps are that view's default, not a choice).
    if (S.heat && r.view !== 'neuron') hash = L.setHashParam(hash, 'heat', S.heat);
    if (hash === location.hash) render(); else location.hash = hash;
  };
  return h('section', { class: 'panel query', id: 'query-panel' },
    h('h2', {}, 'Neuron group'),
    h('label', { class: 'field' }, h('span', {}, 'Neurons ', h('span', { id: 'sel-count', class: 'muted' }, S.selection.length ? `${S.selection.length} selected` : 'none selected')), neurons),
    h('div', { id: 'neurons-error', class: 'field-error', role: 'status' }),
    h('div', { id: 'chips', class: 'chips' }),
    h('p', { class: 'hint' }, 'A chip opens that neuron\'s activation histogram and top inputs.'),
    h('h2', {}, 'Query'),
    h('div', { class: 'row' },
      h('label', { class: 'field' }, h('span', {}, 'k'), k),
      h('label', { class: 'field' }, h('span', {}, 'top-k agg'), agg),
      h('label', { class: 'field' }, h('span', {}, 'kNN metric'), metric)),
    h('div', { id: 'k-error', class: 'field-error', role: 'status' }),
    h('label', { class: 'field' }, h('span', {}, 'True label'), labels),
    h('div', { id: 'labels-error', class: 'field-error', role: 'status' }),
    h('label', { class: 'field' }, h('span', {}, 'Predicted class'), predicted),
    h('div', { id: 'predicted-error', class: 'field-error', role: 'status' }),
    h('label', { class: 'inline check' }, mis, ' misclassified only (prediction ≠ label)'),
    predsHint(c),
    h('div', { class: 'row buttons' },
      h('button', { type: 'button', id: 'run-topk', class: 'primary', onclick: () => run('topk') }, 'Top-k'),
      h('button', {
        type: 'button', id: 'run-knn', class: 'primary', onclick: () => run('knn'), disabled: inp === null || undefined,
        title: inp === null ? 'open an input first: kNN finds its neighbours' : `the k inputs nearest to #${inp} over the selected neurons`,
      }, inp === null ? 'kNN (open an input)' : `kNN around #${inp}`)),
    h('p', { class: 'hint' }, 'Top-k: the inputs that activate the group most. kNN: the inputs closest to the opened input in the group\'s activation space.'));
}

function renderSide(c, r, seq) {
  const side = $('#side');
  const inp = currentInput(r);
  const parts = [];
  if (inp !== null && inp < c.ds.count) parts.push(inputCard(c, inp, seq));
  parts.push(queryPanel(c, r));
  side.replaceChildren(...parts);
  drawChips(c);
}

// ---------------------------------------------------------------- views

function pager(c, page, pages, filter) {
  const go = (p) => L.browseHash(c, p, filter);
  const field = h('input', {
    type: 'number', min: 1, max: pages, value: page + 1, 'aria-label': 'page', class: 'pagefield',
    onchange: () => {
      const p = Math.min(pages, Math.max(1, Math.floor(Number(field.value) || 1)));
      location.hash = go(p - 1);
    },
  });
  const link = (p, text, label) => (p >= 0 && p < pages && p !== page
    ? h('a', { href: go(p), 'aria-label': label, class: 'pagebtn' }, text)
    : h('span', { class: 'pagebtn muted', 'aria-disabled': 'true' }, text));
  return h('nav', { class: 'pager' },
    link(0, '«', 'first page'), link(page - 1, '‹', 'previous page'),
    h('span', {}, 'page ', field, ` of ${pages}`),
    link(page + 1, '›', 'next page'), link(pages - 1, '»', 'last page'));
}

function describeFilter(c, f) {
  const parts = [];
  if (f.label !== null) parts.push(`true ${L.className(f.label, c.ds.classes)}`);
  if (f.predicted !== null) parts.push(`predicted ${L.className(f.predicted, c.ds.classes)}`);
  if (f.misclassified) parts.push('misclassified');
  return parts.join(' · ');
}

// The grid's filters (the listing's): true label, predicted class,
// misclassified only. A change opens page 1 of the new listing.
function browseFilters(c, f) {
  const ready = predsReady(c);
  const classes = c.ds.classes;
  const go = (nf) => { location.hash = L.browseHash(c, 0, nf); };
  const needs = ready ? undefined : 'needs the model\'s predictions over this dataset';
  // With class names a list to pick from, else a class number.
  const choice = (id, value, onchange, disabled, title) => (classes
    ? h('select', { id, disabled, title, onchange: (ev) => onchange(ev.target.value === '' ? null : Number(ev.target.value)) },
      option('', 'all', value === null), classes.map((n, i) => option(String(i), `${i} ${n}`, value === i)))
    : h('input', {
      id, type: 'number', step: 1, value: value === null ? '' : value, placeholder: 'all', disabled, title, class: 'classfield',
      onchange: (ev) => onchange(/^-?\d+$/.test(ev.target.value.trim()) ? Number(ev.target.value) : null),
    }));
  const mis = h('input', {
    type: 'checkbox', id: 'filter-mis', checked: f.misclassified || undefined, title: needs,
    disabled: (!ready && !f.misclassified) || undefined, onchange: () => go({ ...f, misclassified: mis.checked }),
  });
  return h('div', { class: 'filters row', id: 'browse-filters' },
    h('label', { class: 'field' }, h('span', {}, 'true label'),
      choice('filter-label', f.label, (v) => go({ ...f, label: v }), c.ds.labels === false || undefined)),
    h('label', { class: 'field' }, h('span', {}, 'predicted'),
      choice('filter-predicted', f.predicted, (v) => go({ ...f, predicted: v }), (!ready && f.predicted === null) || undefined, needs)),
    h('label', { class: 'inline check', title: needs }, mis, ' misclassified only'),
    L.filterActive(f) ? h('a', { href: L.browseHash(c, 0), id: 'filter-clear' }, 'clear filters') : null,
    ready ? h('a', { href: L.predictionsHash(c), class: 'muted' }, 'confusion matrix')
      : h('a', { href: L.predictionsHash(c), class: 'muted', id: 'filters-preds' }, 'compute predictions to filter by them'));
}

async function viewBrowse(c, r, seq) {
  const content = $('#content');
  const f = L.browseFilter(r.params);
  const ready = predsReady(c);
  const cur = r.view === 'input' ? r.input : null;
  const hint = h('p', { class: 'hint' }, r.view === 'browse'
    ? 'Open an input to see its most active neurons, select some, then run top-k or kNN.'
    : `Input #${cur} is outlined; open another one, or use the selected neurons on the left.`);
  if (!L.filterActive(f)) {
    const count = c.ds.count;
    const pages = Math.max(1, Math.ceil(count / L.PAGE_SIZE));
    const page = L.pageFromParams(r.params, pages, cur !== null ? Math.min(pages - 1, Math.floor(cur / L.PAGE_SIZE)) : 0);
    const first = page * L.PAGE_SIZE, last = Math.min(count, first + L.PAGE_SIZE);
    const figs = [];
    for (let id = first; id < last; id++) figs.push(thumb(c, id, { highlight: id === cur }));
    content.append(
      h('div', { class: 'viewhead' },
        h('h2', {}, `${c.dataset}: inputs ${first}–${last - 1} of ${count}`),
        pager(c, page, pages)),
      browseFilters(c, f), hint,
      h('div', { class: 'grid', id: 'browse', dataset: { page, state: 'done' } }, figs));
    // One request for the page's labels and predictions (the listing), not one per input.
    try {
      const listing = await api.inputs(c.dataset, first, last - first, null, ready ? c.model : null);
      if (seq !== S.seq) return;
      for (const x of listing.inputs) {
        remember(c, x.id, x);
        const fig = figs[x.id - first];
        if (fig) paintClasses(c, fig);
      }
    } catch (e) {
      showError(e, 'loading labels');
    }
    return;
  }
  // Filtered: the listing says which inputs match, and how many.
  const page = L.pageFromParams(r.params, Infinity, 0);
  const title = h('h2', {}, `${c.dataset}: ${describeFilter(c, f)}`);
  const head = h('div', { class: 'viewhead' }, title);
  const grid = h('div', { class: 'grid', id: 'browse', dataset: { page, state: 'loading' } }, h('p', { class: 'muted' }, 'loading…'));
  content.append(head, browseFilters(c, f), hint, grid);
  let listing;
  try {
    // predicted / misclassified need the model; its predictions are shown whenever there are some.
    const model = ready || f.predicted !== null || f.misclassified ? c.model : null;
    listing = await api.inputs(c.dataset, page * L.PAGE_SIZE, L.PAGE_SIZE, f, model);
  } catch (e) {
    if (seq !== S.seq) return;
    grid.dataset.state = 'failed';
    grid.replaceChildren(errorBlock(e, 'listing the inputs'));
    return;
  }
  if (seq !== S.seq) return;
  const pages = Math.max(1, Math.ceil(listing.total / L.PAGE_SIZE));
  title.textContent = `${c.dataset}: ${listing.total} input${listing.total === 1 ? '' : 's'} · ${describeFilter(c, f)}`;
  head.append(pager(c, Math.min(page, pages - 1), pages, f));
  const extras = { ...L.inputExtras(r.params), page: page ? page + 1 : undefined, heat: undefined };
  const figs = listing.inputs.map((x) => thumb(c, x.id, {
    label: x.label === undefined ? null : x.label, predicted: x.predicted, highlight: x.id === cur,
    href: L.inputHash(c, x.id, undefined, extras),
  }));
  grid.dataset.total = listing.total;
  grid.dataset.state = 'done';
  if (figs.length) grid.replaceChildren(...figs);
  else if (listing.total) grid.replaceChildren(h('p', { class: 'muted' }, `page ${page + 1} is past the last one (${pages}): `, h('a', { href: L.browseHash(c, pages - 1, f) }, 'go there')));
  else grid.replaceChildren(h('p', { class: 'muted', id: 'browse-empty' }, 'no input matches these filters'));
}

function statsBlock(stats) {
  const order = ['method', 'index', 'index_id', 'inputs_computed', 'fraction_computed', 'cache_hits', 'inputs_fetched', 'rounds', 'elapsed_ms', 'inference_ms', 'cell_ms'];
  const keys = [...order.filter((k) => k in stats), ...Object.keys(stats).filter((k) => !order.includes(k))];
  const show = (k, v) => {
    if (k === 'fraction_computed' && typeof v === 'number') return `${(100 * v).toFixed(2)}%`;
    if (k.endsWith('_ms') && typeof v === 'number') return `${v.toFixed(1)} ms`;
    return L.fmt(v);
  };
  return h('dl', { class: 'stats', id: 'stats' },
    keys.map((k) => [h('dt', {}, k.replace(/_/g, ' ')), h('dd', { dataset: { key: k } }, show(k, stats[k]))]));
}

async function viewQuery(c, r, seq) {
  const content = $('#content');
  const parsed = L.queryFromParams(r.view, r.params);
  if (parsed.error) { content.append(errorBlock(new Error(parsed.error), 'this URL')); return; }
  const q = parsed.q;
  const bad = q.neurons.find((n) => n >= c.ly.neurons);
  if (!q.neurons.length) { content.append(errorBlock(new Error('no neurons: add neurons=3,17 or select some'), 'this URL')); return; }
  if (bad !== undefined) {
    content.append(errorBlock(new Error(`neuron ${bad} is out of range: layer ${c.layer} has 0..${c.ly.neurons - 1}; the others stay selected, run the query again`), 'this URL'));
    return;
  }
  const body = L.queryBody(c, q);
  const group = q.neurons.map((n) => L.neuronLabel(n, c.ly.shape)).join(', ');
  const title = q.kind === 'knn'
    ? `${q.k} nearest neighbours of input #${q.target} (${q.metric})`
    : `Top-${q.k} inputs (${q.agg})`;
  const status = h('p', { class: 'muted', id: 'query-status' }, 'running…');
  const results = h('div', { class: 'grid', id: 'results', dataset: { state: 'running' } });
  const names = (list) => list.map((x) => L.className(x, c.ds.classes)).join(', ');
  const filters = [q.labels.length ? `true ${names(q.labels)}` : '', q.predicted.length ? `predicted ${names(q.predicted)}` : '',
    q.misclassified ? 'misclassified only' : ''].filter(Boolean);
  content.append(
    h('div', { class: 'viewhead' }, h('h2', {}, title), heatControls(c),
      h('p', { class: 'muted', id: 'query-filters' }, `layer ${c.layer} · neurons ${group}` + (filters.length ? ` · ${filters.join(' · ')}` : '')),
      h('p', { class: 'hist-links' }, 'Histograms: ', q.neurons.slice(0, 12).map((n, i) => [i ? ' · ' : '',
        h('a', { href: L.neuronHash(c, n, q.kind === 'knn' ? q.target : undefined), class: 'hist-link' }, L.neuronLabel(n, c.ly.shape))]))),
    status, results);
  let res;
  try {
    res = await (q.kind === 'knn' ? api.knn(body, { signal: S.abort.signal }) : api.topk(body, { signal: S.abort.signal }));
  } catch (e) {
    if (e.name === 'AbortError' || seq !== S.seq) return;
    status.replaceWith(errorBlock(e, 'query failed'));
    results.dataset.state = 'failed';
    return;
  }
  if (seq !== S.seq) return;
  const key = q.kind === 'knn' ? 'distance' : 'score';
  // The answer carries each input's label and (with predictions) its predicted class.
  const figs = res.results.map((x, i) => thumb(c, x.input, {
    rank: i + 1, label: x.label === undefined ? null : x.label, predicted: x.predicted, caption: `${key} ${L.fmt(x[key], 4)}`,
    highlight: q.kind === 'knn' && x.input === q.target, heat: true,
  }));
  results.replaceChildren(...figs);
  applyHeat(c);
  results.dataset.ids = res.results.map((x) => x.input).join(',');
  results.dataset.state = 'done';
  const wrong = res.results.filter((x) => x.predicted !== undefined && x.label !== undefined && x.predicted !== x.label).length;
  status.textContent = (res.results.length < q.k
    ? `${res.results.length} inputs (fewer than k: the filter leaves only these)` : `${res.results.length} inputs`) +
    (res.results.some((x) => x.predicted !== undefined) ? ` · ${wrong} misclassified by ${c.model}` : '');
  if (res.stats) status.after(statsBlock(res.stats));
  // A query over a layer without an index builds one: show it.
  if (res.stats && res.stats.index !== 'used') refreshIndexes().then(() => renderLayerbar(resolve(S.route)));
  const curl = `curl -s -X POST ${location.origin}/v1/query/${q.kind} -d '${JSON.stringify(body)}'`;
  content.append(h('details', { class: 'request' }, h('summary', {}, 'request'),
    h('pre', {}, JSON.stringify(body, null, 1)), h('pre', {}, curl)));
}

async function viewNeuron(c, r, seq) {
  const content = $('#content');
  const n = r.neuron;
  const inp = currentInput(r);
  if (n >= c.ly.neurons) {
    content.append(errorBlock(new Error(`neuron ${n} is out of range: layer ${c.layer} has 0..${c.ly.neurons - 1}`), 'this URL'));
    return;
  }
  const selected = S.selection.includes(n);
  const head = h('div', { class: 'viewhead' },
    h('h2', {}, `Neuron ${L.neuronLabel(n, c.ly.shape)} of ${c.layer}`),
    h('div', { class: 'row' },
      h('button', {
        type: 'button', id: 'neuron-select',
        onclick: (ev) => { toggleNeuron(c, n); ev.target.textContent = S.selection.includes(n) ? 'unselect' : 'select'; },
      }, selected ? 'unselect' : 'select'),
      h('a', { class: 'button', href: L.queryHash(c, { kind: 'topk', neurons: [n], k: S.form.k, agg: 'sum', labels: [] }) }, `top-${S.form.k} of this neuron`)));
  const body = h('div', { class: 'neuron', id: 'neuron-view', dataset: { state: 'loading' } }, h('p', { class: 'muted' }, 'loading…'));
  content.append(head, body);
  const ix = indexOf(c);
  const noIndex = (why) => {
    body.dataset.state = 'none';
    body.replaceChildren(h('p', { class: 'noindex' }, 'no index'),
      h('p', { class: 'hint' }, why || `Layer ${c.layer} has no index yet: build it (above) to see this neuron's activation distribution.`));
  };
  if (!ix || ix.state === 'failed') { noIndex(); return; }
  if (ix.state === 'building') {
    body.dataset.state = 'building';
    body.replaceChildren(h('p', { class: 'muted' }, `The index of ${c.layer} is being built; this view fills in when it is ready.`));
    return;
  }
  let entry, value = null;
  try {
    [entry, value] = await Promise.all([
      api.indexNeuron(ix.id, n, MAI_EXACT),
      inp !== null && inp < c.ds.count
        ? api.activationsOf(c.dataset, inp, c.model, c.layer, [n]).then((a) => (a[0] ? a[0].value : null)).catch(() => null)
        : null,
    ]);
  } catch (e) {
    if (seq !== S.seq) return;
    if (e instanceof ApiError && e.status === 404) { noIndex(`The daemon has no index entry for this neuron (${e.message}).`); return; }
    body.dataset.state = 'failed';
    body.replaceChildren(errorBlock(e, 'index entry'));
    return;
  }
  if (seq !== S.seq) return;
  const parts = entry.partitions || [];
  const total = parts.reduce((s, p) => s + p.count, 0);
  const vals = parts.filter((p) => p.count > 0 && p.lower !== null);
  const lo = vals.length ? Math.min(...vals.map((p) => p.lower)) : null;
  const hi = vals.length ? Math.max(...vals.map((p) => p.upper)) : null;
  const mark = value !== null ? { value, label: `input #${inp}` } : null;
  const chart = h('div', { class: 'chart', id: 'histogram' });
  const hb = L.histogramBins(parts, 40, (entry.mai || []).map((m) => m.value));
  const sorted = hb ? hb.bins.map((b) => b.mai + b.rest).filter((x) => x > 0).sort((a, b) => a - b) : [];
  let log = sorted.length > 2 && sorted[sorted.length - 1] > 10 * sorted[Math.floor(sorted.length / 2)];
  const logBox = h('input', { type: 'checkbox', id: 'hist-log', checked: log || undefined, onchange: () => { log = logBox.checked; draw(); } });
  const draw = () => chart.replaceChildren(histogram(entry, { mark, log }));
  draw();
  const table = h('table', { class: 'parts' },
    h('thead', {}, h('tr', {}, h('th', {}, 'partition'), h('th', {}, 'lower'), h('th', {}, 'upper'), h('th', {}, 'inputs'))),
    h('tbody', {}, parts.map((p) => h('tr', { class: p.partition === 0 ? 'mai' : '' },
      h('td', {}, p.partition === 0 ? '0 (MAI)' : String(p.partition)), h('td', {}, L.fmt(p.lower)), h('td', {}, L.fmt(p.upper)), h('td', {}, String(p.count))))));
  const mai = (entry.mai || []).slice(0, MAI_SHOWN);
  const figs = mai.map((m, i) => thumb(c, m.input, { rank: i + 1, caption: `value ${L.fmt(m.value, 4)}`, highlight: m.input === inp, heat: true }));
  // A conv neuron's channel map: where on each top input its channel fires.
  const spatial = c.ly.shape.length === 3;
  const channel = spatial ? L.unflatten(n, c.ly.shape)[0] : null;
  body.replaceChildren(
    h('div', { class: 'neuron-grid' },
      h('div', { class: 'panel' },
        h('h3', {}, 'Activation distribution'),
        h('p', { class: 'muted' }, `${total} inputs · ${parts.length} partitions (partition 0 = the MAI, ${entry.mai_count !== undefined ? entry.mai_count : mai.length} inputs) · range ${L.fmt(lo)} .. ${L.fmt(hi)}` +
          (value !== null ? ` · input #${inp}: ${L.fmt(value)}` : '')),
        chart,
        h('label', { class: 'inline' }, logBox, ' log scale'),
        h('p', { class: 'hint' }, 'Drawn from the index: each partition\'s inputs spread evenly over its [lower, upper] bounds; ' +
          (hb && hb.exactMai ? 'the MAI (exact values) in its own colour.' : 'the MAI in its own colour.')),
        h('details', {}, h('summary', {}, 'partitions'), table)),
      h('div', {},
        h('h3', {}, `Top ${mai.length} inputs (from the MAI)`),
        h('div', { class: 'row heatrow' }, heatControls(c)),
        spatial ? h('p', { class: 'hint', id: 'channel-hint' }, `Channel map: where channel ${channel} (this neuron's, [${c.ly.shape.slice(1).join('×')}] over the image) fires on each input; ◐ switches one image.`) : null,
        h('div', { class: 'grid', id: 'mai' }, figs))));
  applyHeat(c);
  body.dataset.state = 'ready';
  await fillLabels(c, figs, seq);
}

// ---------------------------------------------------------------- predictions

function computePanel(c, entry) {
  const computing = !!(entry && entry.state === 'computing');
  const btn = h('button', {
    type: 'button', id: 'preds-compute', class: 'primary', disabled: computing || undefined,
    onclick: () => computePredictions(c, btn),
  }, 'Compute predictions');
  return h('div', { class: 'panel', id: 'preds-compute-panel' },
    h('p', {}, computing ? `Computing the predictions of ${c.model} over ${c.dataset}…`
      : `Not computed yet: one forward pass of ${c.model} over the ${c.ds.count} inputs of ${c.dataset}, kept by the daemon.`),
    h('div', { class: 'row' }, btn,
      h('div', { class: 'progress-wrap', id: 'preds-progress-wrap', hidden: !computing || undefined },
        h('progress', { id: 'preds-progress', max: 1, value: 0 }), h('span', { id: 'preds-progress-text', class: 'muted' }))),
    entry && entry.state === 'failed' ? h('p', { class: 'field-error' }, `the last computation failed${entry.error ? ': ' + entry.error : ''}`) : null);
}

async function computePredictions(c, btn) {
  btn.disabled = true;
  try {
    const res = await api.computePredictions(c.model, c.dataset);
    await refreshPredictions();
    if (res.state === 'ready') { render(); return; }
    $('#preds-progress-wrap').hidden = false;
    $('#predictions').dataset.state = 'computing';
    watchPredJob(res.job, c.model, c.dataset);
  } catch (e) {
    btn.disabled = false;
    showError(e, `computing the predictions of ${c.model} over ${c.dataset}`);
  }
}

// Polls a predictions job; its progress shows while the view is on screen,
// and the view is drawn again (now with the matrix) when it ends.
async function watchPredJob(job, model, dataset) {
  const tag = `predictions/${job}`;
  if (S.polls.has(tag)) return;
  S.polls.add(tag);
  try {
    for (;;) {
      let j;
      try {
        j = await api.job(job);
      } catch (e) {
        showError(e, `watching job ${job}`);
        return;
      }
      const here = () => S.route && S.route.model === model && S.route.dataset === dataset;
      if (here() && $('#preds-progress')) {
        const p = $('#preds-progress');
        $('#preds-progress-wrap').hidden = false;
        p.max = j.total || 1;
        p.value = j.done || 0;
        const pct = j.total ? Math.floor((100 * j.done) / j.total) : 0;
        $('#preds-progress-text').textContent = j.state === 'queued' ? 'queued…' : `${j.done} / ${j.total} inputs · ${pct}%`;
        $('#predictions').dataset.progress = String(pct);
      }
      if (j.state === 'done' || j.state === 'failed') {
        if (j.state === 'failed') showError(new Error(j.error || 'unknown error'), `predictions (job ${job}) failed`);
        await refreshPredictions();
        // Predictions cached from before (a deleted set) are not these.
        const prefix = `${model}|${dataset}/`;
        for (const k of [...S.preds.keys()]) if (k.startsWith(prefix)) S.preds.delete(k);
        if (here()) {
          if (S.route.view === 'predictions') render();
          else { const now = resolve(S.route); if (now.ok) renderPredsBadge(now); }
        }
        return;
      }
      await new Promise((res) => setTimeout(res, 300));
    }
  } finally {
    S.polls.delete(tag);
  }
}

function classesEditor(c) {
  const cur = c.ds.classes || [];
  const text = h('textarea', { id: 'classes-text', rows: 10, spellcheck: 'false', placeholder: 'one class name per line, label 0 first' });
  text.value = cur.join('\n');
  const save = async () => {
    const names = text.value.split('\n').map((x) => x.trim());
    while (names.length && !names[names.length - 1]) names.pop();
    try {
      const d = await api.setClasses(c.dataset, names);
      S.datasets = (S.datasets || []).map((x) => (x.name === d.name ? d : x));
      render();
    } catch (e) {
      showError(e, 'setting the class names');
    }
  };
  return h('details', { class: 'panel', id: 'classes-editor', open: !c.ds.classes || undefined },
    h('summary', {}, c.ds.classes ? `Class names of ${c.dataset} (${cur.length})` : `Class names of ${c.dataset}: none yet`),
    h('p', { class: 'hint' }, 'One per line, label 0 first. Thumbnails, the matrix, the filters and the query form show (and take) them.'),
    text,
    h('div', { class: 'row buttons' }, h('button', { type: 'button', id: 'classes-save', onclick: save }, 'Save class names')));
}

const pct = (v, d = 1) => (v === null || v === undefined ? '–' : `${(100 * v).toFixed(d)}%`);

async function viewPredictions(c, r, seq) {
  const content = $('#content');
  const body = h('div', { id: 'predictions', dataset: { state: 'loading' } }, h('p', { class: 'muted' }, 'loading…'));
  content.append(h('div', { class: 'viewhead' }, h('h2', {}, `Predictions of ${c.model} over ${c.dataset}`),
    h('p', { class: 'muted' }, 'Each input\'s predicted class (the argmax of the model\'s output) against its label.')), body);
  let p;
  try {
    p = await api.predictions(c.model, c.dataset);
  } catch (e) {
    if (seq !== S.seq) return;
    if (e instanceof ApiError && e.code === 'predictions_missing') {
      if (!predsOf(c) || predsOf(c).state === 'ready') await refreshPredictions();
      if (seq !== S.seq) return;
      const entry = predsOf(c);
      body.dataset.state = entry && entry.state === 'computing' ? 'computing' : 'none';
      body.replaceChildren(computePanel(c, entry), classesEditor(c));
      if (entry && entry.state === 'computing' && entry.job) watchPredJob(entry.job, c.model, c.dataset);
      return;
    }
    body.dataset.state = 'failed';
    body.replaceChildren(errorBlock(e, 'predictions'));
    return;
  }
  if (seq !== S.seq) return;
  const cm = L.confusionCells(p.confusion || []);
  const classes = p.classes || c.ds.classes;
  const name = (i) => L.className(i, classes).replace(/^label /, '');
  // Cells open the browse grid at the route's layer, else at the predictions' one.
  const layer = r.layer || (c.m.layers.some((l) => l.name === p.layer) ? p.layer : c.m.layers[c.m.layers.length - 1].name);
  const ctx = { model: c.model, dataset: c.dataset, layer };
  const open = (f) => L.browseHash(ctx, 0, { label: null, predicted: null, misclassified: false, ...f });
  const shade = (cell) => {
    if (!cell.count) return null;
    const a = cell.diag ? 0.12 + 0.7 * cell.strength : 0.08 + 0.8 * cell.strength;
    return `background: rgba(${cell.diag ? '26, 127, 55' : '180, 35, 24'}, ${a.toFixed(3)});${a > 0.5 ? ' color: #fff;' : ''}`;
  };
  const head = (i, cls) => h('th', { class: cls, scope: cls === 'col' ? 'col' : 'row', title: `class ${i}: ${name(i)}` },
    h('span', { class: 'cnum' }, String(i)), ' ', name(i));
  const table = h('table', { class: 'confusion', id: 'confusion' },
    h('thead', {}, h('tr', {},
      h('th', { class: 'corner' }, 'true ↓ · predicted →'),
      cm.cells.map((_, j) => head(j, 'col')),
      h('th', { class: 'sum' }, 'inputs'), h('th', { class: 'sum' }, 'recall'))),
    h('tbody', {}, cm.cells.map((row, t) => h('tr', {},
      h('th', { class: 'row', scope: 'row' }, h('a', { href: open({ label: t }), title: `every input labelled ${name(t)}` }, h('span', { class: 'cnum' }, String(t)), ' ', name(t))),
      row.map((cell) => h('td', {
        class: cell.diag ? 'diag' : 'off', style: shade(cell),
        dataset: { true: t, pred: cell.p, count: cell.count },
        title: `${cell.count} ${name(t)} predicted as ${name(cell.p)} (${pct(cell.share)} of ${name(t)})`,
      }, cell.count ? h('a', { href: open({ label: t, predicted: cell.p }) }, String(cell.count)) : h('span', { class: 'zero' }, '0'))),
      h('td', { class: 'sum' }, String(cm.rowTotals[t])),
      h('td', { class: 'sum' }, pct(cm.recall[t]))))),
    h('tfoot', {}, h('tr', {},
      h('th', { class: 'row', scope: 'row' }, 'precision'),
      cm.precision.map((v) => h('td', { class: 'sum' }, pct(v))),
      h('td', { class: 'sum' }, String(cm.total)), h('td', { class: 'sum' }, pct(p.accuracy, 2)))));
  const wrong = cm.total - cm.correct;
  body.replaceChildren(
    h('div', { class: 'panel' },
      h('p', { id: 'preds-summary' },
        h('b', { id: 'preds-accuracy', dataset: { accuracy: p.accuracy } }, pct(p.accuracy, 2)),
        ` accurate: ${cm.correct} of ${cm.total} inputs predicted as labelled (layer ${p.layer}) · `,
        h('a', { href: open({ misclassified: true }), id: 'preds-misclassified' }, `${wrong} misclassified`),
        cm.worst ? [' · most confused: ', h('a', { href: open({ label: cm.worst.t, predicted: cm.worst.p }) }, `${name(cm.worst.t)} → ${name(cm.worst.p)} (${cm.worst.count})`)] : null,
        p.confusion_outside ? ` · ${p.confusion_outside} inputs have a label or prediction outside 0..${cm.n - 1} (not in the matrix)` : null),
      h('p', { class: 'hint' }, 'Rows: the true label; columns: the predicted class. Green: correct, red: mistakes (each shaded against the largest of its kind). A cell opens the inputs it counts.'),
      h('div', { class: 'chart' }, table)),
    classesEditor(c));
  body.dataset.state = 'ready';
}

// ---------------------------------------------------------------- views (home)

function viewHome(c) {
  const content = $('#content');
  const e = encodeURIComponent;
  if (c.problem) content.append(errorBlock(new Error(c.problem), 'this URL'));
  const models = S.models || [], datasets = S.datasets || [];
  content.append(h('div', { class: 'viewhead' }, h('h2', {}, 'Choose a model, a dataset and a layer')));
  if (!models.length || !datasets.length) {
    content.append(h('div', { class: 'panel' },
      h('p', {}, !models.length ? 'No model is registered yet. ' : '', !datasets.length ? 'No dataset is imported yet. ' : '', 'For example:'),
      h('pre', {}, [
        !models.length ? `curl -X POST ${location.origin}/v1/models -d '{"name":"cnn","path":"/path/to/models/fmnist_cnn.pt"}'` : '',
        !datasets.length ? `curl -X POST ${location.origin}/v1/datasets -d '{"name":"fmnist","path":"/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz","labels_path":"/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz","scale":0.00392156862745098,"mean":0.2860,"std":0.3530}'` : '',
      ].filter(Boolean).join('\n'))));
  }
  const cols = h('div', { class: 'cards' });
  cols.append(h('div', { class: 'panel' }, h('h3', {}, 'Models'),
    models.length ? h('ul', {}, models.map((m) => h('li', {},
      h('a', { href: `#/m/${e(m.name)}${c.ds ? `/d/${e(c.ds.name)}` : datasets.length === 1 ? `/d/${e(datasets[0].name)}` : ''}` }, m.name),
      m.layers ? h('span', { class: 'muted' }, ` · input [${(m.input_shape || []).join('×')}] · layers: `) : h('span', { class: 'muted' }, ' · unavailable'),
      m.layers ? m.layers.map((l, i) => [i ? ', ' : '',
        (c.ds || datasets.length === 1)
          ? h('a', { href: L.layerPath(m.name, (c.ds || datasets[0]).name, l.name) }, l.name)
          : h('span', {}, l.name)]) : null))) : h('p', { class: 'muted' }, 'none')));
  cols.append(h('div', { class: 'panel' }, h('h3', {}, 'Datasets'),
    datasets.length ? h('ul', {}, datasets.map((d) => h('li', {},
      c.m ? h('a', { href: `#/m/${e(c.m.name)}/d/${e(d.name)}` }, d.name) : h('b', {}, d.name),
      h('span', { class: 'muted' }, ` · ${d.count} inputs [${d.shape.join('×')}] ${d.dtype}${d.labels ? ' · labelled' : ''}`)))) : h('p', { class: 'muted' }, 'none')));
  cols.append(h('div', { class: 'panel' }, h('h3', {}, 'Indexes'),
    S.indexes.length ? h('table', { class: 'parts' },
      h('thead', {}, h('tr', {}, ['id', 'layer', 'state', 'size'].map((x) => h('th', {}, x)))),
      h('tbody', {}, S.indexes.map((ix) => h('tr', {},
        h('td', {}, String(ix.id)),
        h('td', {}, h('a', { href: L.layerPath(ix.model, ix.dataset, ix.layer) }, `${ix.model} / ${ix.dataset} / ${ix.layer}`)),
        h('td', {}, ix.state),
        h('td', {}, ix.state === 'ready' ? L.fmtBytes(ix.bytes) : '–')))))
      : h('p', { class: 'muted' }, 'none yet')));
  const preds = S.predictions;
  const mine = c.m && c.ds && !c.problem && !preds.some((p) => p.model === c.model && p.dataset === c.dataset);
  cols.append(h('div', { class: 'panel', id: 'home-predictions' }, h('h3', {}, 'Predictions'),
    preds.length ? h('ul', {}, preds.map((p) => h('li', {},
      h('a', { href: L.predictionsHash(p) }, `${p.model} / ${p.dataset}`),
      h('span', { class: 'muted' }, p.state === 'ready' ? ` · ${pct(p.accuracy, 2)} accurate` : ` · ${p.state}`)))) : h('p', { class: 'muted' }, 'none yet'),
    mine ? h('p', {}, h('a', { href: L.predictionsHash(c) }, `compute ${c.model}'s predictions over ${c.dataset}`)) : null));
  content.append(cols);
}

// ---------------------------------------------------------------- render

async function render() {
  const seq = ++S.seq;
  if (S.abort) S.abort.abort();
  S.abort = new AbortController();
  const r = L.parseRoute(location.hash);
  S.route = r;
  if (S.models === null) await loadCatalog();
  if (seq !== S.seq) return;
  fillPicker(r);
  const content = $('#content'), side = $('#side');
  content.dataset.view = r.view;
  content.dataset.ready = '0';
  content.replaceChildren();
  side.replaceChildren();
  const c = resolve(r);
  document.title = c.ok ? `${c.layer} · ${c.model} · ${c.dataset} · deepeverest` : 'deepeverest · neuron explorer';
  renderLayerbar(c);
  document.body.classList.toggle('has-side', c.ok);
  // Predictions need only the model and the dataset.
  if (r.view === 'predictions' && !c.ok && c.m && c.ds && !c.problem) {
    document.title = `predictions · ${c.model} · ${c.dataset} · deepeverest`;
    try { await viewPredictions(c, r, seq); } catch (e) { if (seq === S.seq) showError(e); }
    if (seq === S.seq) content.dataset.ready = '1';
    return;
  }
  if (!c.ok) {
    viewHome(c);
    content.dataset.ready = '1';
    return;
  }
  const key = `${c.model}|${c.dataset}|${c.layer}`;
  if (S.selKey !== key) { S.selKey = key; S.selection = []; }
  // Views that name their neurons set the selection from the URL.
  let neurons = null;
  if (r.view === 'input' || r.view === 'topk' || r.view === 'knn') {
    const split = L.splitNeurons(L.parseIntList(r.params.get('neurons')), c.ly.neurons);
    if (split.valid.length) neurons = split.valid;
    if (split.dropped.length && r.view === 'input')
      showError(new Error(`neuron${split.dropped.length > 1 ? 's' : ''} ${split.dropped.join(', ')} out of range (layer ${c.layer} has 0..${c.ly.neurons - 1}): left out`), 'this URL');
  }
  if (neurons) S.selection = neurons;
  if (r.view === 'topk' || r.view === 'knn') {
    const p = L.queryFromParams(r.view, r.params);
    if (p.q) {
      S.form.k = p.q.k;
      if (p.q.agg) S.form.agg = p.q.agg;
      if (p.q.metric) S.form.metric = p.q.metric;
      S.form.labels = p.q.labels.join(', ');
      S.form.predicted = p.q.predicted.join(', ');
      S.form.misclassified = p.q.misclassified;
    }
  }
  // The heatmap switch is the URL's (with a default per view).
  const heat = L.heatFromParams(r.params, c.ly.shape, defaultHeat(c, r));
  if (heat.error) showError(new Error(heat.error), 'this URL');
  S.heat = r.view === 'browse' ? null : heat.method;
  renderSide(c, r, seq);
  applyHeat(c);
  if (r.view === 'input' && !neurons && S.selection.length) {
    history.replaceState(null, '', L.inputHash(c, r.input, S.selection, L.inputExtras(r.params)));
  }
  try {
    if (r.view === 'browse' || r.view === 'input') {
      if (r.view === 'input' && r.input >= c.ds.count) {
        content.append(errorBlock(new Error(`input ${r.input} does not exist: ${c.dataset} has 0..${c.ds.count - 1}`), 'this URL'));
      } else {
        await viewBrowse(c, r, seq);
      }
    } else if (r.view === 'topk' || r.view === 'knn') {
      await viewQuery(c, r, seq);
    } else if (r.view === 'neuron') {
      await viewNeuron(c, r, seq);
    } else if (r.view === 'predictions') {
      await viewPredictions(c, r, seq);
    } else {
      content.append(errorBlock(new Error(`no such view: ${location.hash}`), 'this URL'),
        h('p', {}, h('a', { href: L.layerPath(c.model, c.dataset, c.layer) }, 'browse the dataset')));
    }
  } catch (e) {
    if (seq === S.seq) showError(e);
  }
  if (seq === S.seq) content.dataset.ready = '1';
}

async function boot() {
  $('#picker').addEventListener('change', onPick);
  $('#picker').addEventListener('submit', (e) => e.preventDefault());
  $('#refresh').addEventListener('click', async () => {
    S.acts.clear();
    await loadCatalog();
    health();
    render();
  });
  $('#build-index').addEventListener('click', buildIndex);
  window.addEventListener('hashchange', () => render());
  health();
  await render();
}

// Exposed for the browser test and for poking around in the console.
window.explorer = { S, render, L };
boot();

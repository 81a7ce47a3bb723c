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
  form: { k: L.DEFAULT_K, agg: 'sum', metric: 'l2', labels: '' },
  labels: new Map(),        // `${ds}/${id}` -> label (or null)
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
  const [models, datasets, indexes] = await Promise.allSettled([api.models(), api.datasets(), api.indexes()]);
  if (models.status === 'fulfilled') S.models = models.value; else { S.models = S.models || []; showError(models.reason, 'loading models'); }
  if (datasets.status === 'fulfilled') S.datasets = datasets.value; else { S.datasets = S.datasets || []; showError(datasets.reason, 'loading datasets'); }
  if (indexes.status === 'fulfilled') S.indexes = indexes.value; else showError(indexes.reason, 'loading indexes');
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

function thumb(c, id, { caption, highlight, rank, label } = {}) {
  const lab = label !== undefined ? label : S.labels.get(labelKey(c.dataset, id));
  if (label !== undefined) S.labels.set(labelKey(c.dataset, id), label);
  const fig = h('figure', { class: 'thumb' + (highlight ? ' current' : ''), dataset: { input: id } },
    h('a', { href: L.inputHash(c, id), title: `open input ${id}` },
      h('img', { src: imageUrl(c.dataset, id), alt: `input ${id}`, width: 112, height: 112, loading: 'lazy', decoding: 'async' })),
    h('figcaption', {},
      rank !== undefined ? h('span', { class: 'rank' }, `${rank}.`) : null,
      h('span', { class: 'id' }, `#${id}`),
      h('span', { class: 'label' }, lab === undefined ? '' : lab === null ? '' : `label ${lab}`),
      caption ? h('span', { class: 'score' }, caption) : null));
  return fig;
}

// Fills in labels of thumbnails that lack them, a few requests at a time.
async function fillLabels(c, figs, seq) {
  const todo = figs.filter((f) => !S.labels.has(labelKey(c.dataset, f.dataset.input)));
  let next = 0;
  const worker = async () => {
    while (next < todo.length && seq === S.seq) {
      const f = todo[next++];
      const id = f.dataset.input;
      try {
        const inp = await api.input(c.dataset, id);
        const lab = inp.label === undefined ? null : inp.label;
        S.labels.set(labelKey(c.dataset, id), lab);
        if (lab !== null) $('.label', f).textContent = `label ${lab}`;
      } catch (e) {
        showError(e, 'loading labels');
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: LABEL_FETCHES }, worker));
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
    const hash = L.inputHash(c, S.route.input, S.selection);
    if (hash !== location.hash) history.replaceState(null, '', hash);
  }
  const count = $('#sel-count');
  if (count) count.textContent = S.selection.length ? `${S.selection.length} selected` : 'none selected';
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
  const nav = h('nav', { class: 'inputnav' },
    id > 0 ? h('a', { href: L.inputHash(c, id - 1), title: 'previous input' }, '‹ prev') : h('span', { class: 'muted' }, '‹ prev'),
    h('a', { href: L.browseHash(c, Math.floor(id / L.PAGE_SIZE)) }, 'grid'),
    id + 1 < count ? h('a', { href: L.inputHash(c, id + 1), title: 'next input' }, 'next ›') : h('span', { class: 'muted' }, 'next ›'));
  card.append(
    h('div', { class: 'input-head' },
      h('a', { href: L.inputHash(c, id) }, h('img', { class: 'big', src: imageUrl(c.dataset, id, 224), alt: `input ${id}`, width: 112, height: 112 })),
      h('div', {}, h('h2', {}, `Input #${id}`), label, nav)),
    h('h3', {}, `Most active neurons in ${c.layer}`),
    h('p', { class: 'hint' }, 'Click bars to select neurons. ',
      h('button', { type: 'button', class: 'link', id: 'select-top1', onclick: () => selectTop(c, id, 1) }, 'top 1'), ' · ',
      h('button', { type: 'button', class: 'link', id: 'select-top3', onclick: () => selectTop(c, id, 3) }, 'top 3'), ' · ',
      h('button', { type: 'button', class: 'link', id: 'select-top5', onclick: () => selectTop(c, id, 5) }, 'top 5')),
    chart);
  (async () => {
    const key = `${c.model}|${c.dataset}|${c.layer}|${id}`;
    const [inp, rows] = await Promise.all([
      api.input(c.dataset, id).catch((e) => ({ error: e })),
      S.acts.has(key) ? S.acts.get(key) : api.activations(c.dataset, id, c.model, c.layer, TOP_NEURONS).catch((e) => ({ error: e })),
    ]);
    if (seq !== S.seq) return;
    if (inp.error) label.replaceChildren(errorBlock(inp.error, 'input'));
    else {
      if (inp.label !== undefined) S.labels.set(labelKey(c.dataset, id), inp.label);
      label.textContent = `${inp.label !== undefined ? `label ${inp.label} · ` : ''}shape [${inp.shape.join('×')}]`;
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
  const labels = h('input', {
    id: 'labels', type: 'text', value: S.form.labels, placeholder: c.ds.labels === false ? 'dataset has no labels' : 'e.g. 0, 6 (empty: all)',
    disabled: c.ds.labels === false || undefined,
    oninput: () => {
      S.form.labels = labels.value;
      $('#labels-error').textContent = L.parseLabelList(labels.value) === null ? 'labels: integers separated by commas' : '';
    },
  });
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
    const labs = L.parseLabelList(labels.value);
    if (labs === null) { $('#labels-error').textContent = 'labels: integers separated by commas'; labels.focus(); return; }
    setSelection(c, p.neurons, { updateUrl: false });
    S.form = { k: kv, agg: agg.value, metric: metric.value, labels: labels.value };
    const q = { kind, neurons: p.neurons, k: kv, agg: agg.value, metric: metric.value, labels: labs };
    if (kind === 'knn') q.target = inp;
    let hash = L.queryHash(c, q);
    if (kind === 'topk' && inp !== null) hash += (hash.includes('?') ? '&' : '?') + `input=${inp}`;
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
    h('label', { class: 'field' }, h('span', {}, 'Label filter'), labels),
    h('div', { id: 'labels-error', class: 'field-error', role: 'status' }),
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

function pager(c, page, pages) {
  const go = (p) => L.browseHash(c, p);
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

async function viewBrowse(c, r, seq) {
  const content = $('#content');
  const count = c.ds.count;
  const pages = Math.max(1, Math.ceil(count / L.PAGE_SIZE));
  const cur = r.view === 'input' ? r.input : null;
  const page = L.pageFromParams(r.params, pages, cur !== null ? Math.min(pages - 1, Math.floor(cur / L.PAGE_SIZE)) : 0);
  const first = page * L.PAGE_SIZE, last = Math.min(count, first + L.PAGE_SIZE);
  const figs = [];
  for (let id = first; id < last; id++) figs.push(thumb(c, id, { highlight: id === cur }));
  content.append(
    h('div', { class: 'viewhead' },
      h('h2', {}, `${c.dataset}: inputs ${first}–${last - 1} of ${count}`),
      pager(c, page, pages)),
    h('p', { class: 'hint' }, r.view === 'browse'
      ? 'Open an input to see its most active neurons, select some, then run top-k or kNN.'
      : `Input #${cur} is outlined; open another one, or use the selected neurons on the left.`),
    h('div', { class: 'grid', id: 'browse', dataset: { page } }, figs));
  // One request for the page's labels (the listing), not one per input.
  try {
    const listing = await api.inputs(c.dataset, first, last - first);
    if (seq !== S.seq) return;
    for (const x of listing.inputs) {
      const lab = x.label === undefined ? null : x.label;
      S.labels.set(labelKey(c.dataset, x.id), lab);
      const f = figs[x.id - first];
      if (f && lab !== null) $('.label', f).textContent = `label ${lab}`;
    }
  } catch (e) {
    showError(e, 'loading labels');
  }
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
  content.append(
    h('div', { class: 'viewhead' }, h('h2', {}, title),
      h('p', { class: 'muted' }, `layer ${c.layer} · neurons ${group}` + (q.labels.length ? ` · labels ${q.labels.join(', ')}` : '')),
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
  const figs = res.results.map((x, i) => thumb(c, x.input, {
    rank: i + 1, label: x.label === undefined ? null : x.label, caption: `${key} ${L.fmt(x[key], 4)}`,
    highlight: q.kind === 'knn' && x.input === q.target,
  }));
  results.replaceChildren(...figs);
  results.dataset.ids = res.results.map((x) => x.input).join(',');
  results.dataset.state = 'done';
  status.textContent = res.results.length < q.k
    ? `${res.results.length} inputs (fewer than k: the filter leaves only these)` : `${res.results.length} inputs`;
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
  const figs = mai.map((m, i) => thumb(c, m.input, { rank: i + 1, caption: `value ${L.fmt(m.value, 4)}`, highlight: m.input === inp }));
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
        h('div', { class: 'grid', id: 'mai' }, figs))));
  body.dataset.state = 'ready';
  await fillLabels(c, figs, seq);
}

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
    }
  }
  renderSide(c, r, seq);
  if (r.view === 'input' && !neurons && S.selection.length) {
    history.replaceState(null, '', L.inputHash(c, r.input, S.selection));
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

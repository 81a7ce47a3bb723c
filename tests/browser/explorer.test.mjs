// explorer.test.mjs -- drives the neuron explorer in headless Chromium against
// a running daemon (started by run.sh: DE_URL) and checks that what the page
// shows is what the API answers to the same request, sent here with fetch.
// Prints "N passed, M failed" last; exit status 1 on any failure.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.DE_URL;
const ROOT = process.env.DE_ROOT;
const OUT = process.env.DE_OUT;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!BASE || !ROOT || !OUT) {
  console.error('run through tests/browser/run.sh (needs DE_URL, DE_ROOT, DE_OUT)');
  console.log('0%: Checks: 1, Failures: 1, Errors: 0\n0 passed, 1 failed');
  process.exit(1);
}
const MODEL = 'cnn', DATASET = 'fmnist', LAYER = 'fc1';
const FM = '/usr/share/datasets/fashion-mnist';
const K = 12;

// ---- tiny runner: steps run in order, each counted once ----
let passed = 0, failed = 0;
const t00 = Date.now();
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)\n    ${String(e && e.stack || e).split('\n').slice(0, 8).join('\n    ')}`);
  }
}

async function apiCall(method, path, body) {
  const r = await fetch(BASE + path, {
    method, headers: body ? { 'Content-Type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  const js = await r.json();
  if (!r.ok) throw new Error(`${method} ${path} -> ${r.status} ${JSON.stringify(js)}`);
  return js;
}

// ---- the pure module, straight into node (no DOM, no imports) ----
const logicSrc = readFileSync(join(ROOT, 'server/static/logic.js'), 'utf8');
const Lg = await import('data:text/javascript;base64,' + Buffer.from(logicSrc).toString('base64'));

await step('logic: neuron lists, coordinates and routes', () => {
  const shape = [16, 7, 7];
  for (const f of [0, 1, 48, 49, 783, 16 * 49 - 1]) assert.equal(Lg.flatten(Lg.unflatten(f, shape), shape), f);
  assert.deepEqual(Lg.unflatten(5 * 49 + 3 * 7 + 3, shape), [5, 3, 3]);
  assert.deepEqual(Lg.parseNeurons('3, 17', shape, 784).neurons, [3, 17]);
  assert.deepEqual(Lg.parseNeurons('[5,3,3] [12,0,6]', shape, 784).neurons, [5 * 49 + 24, 12 * 49 + 6]);
  assert.deepEqual(Lg.parseNeurons('3 [0,0,3] 4', shape, 784).neurons, [3, 4], 'duplicates dropped');
  assert.match(Lg.parseNeurons('[5,3]', shape, 784).error, /3 \(\[16,7,7\]\)|has 2 coordinates/);
  assert.match(Lg.parseNeurons('[5,7,0]', shape, 784).error, /below 7/);
  assert.match(Lg.parseNeurons('784', shape, 784).error, /out of range/);
  assert.match(Lg.parseNeurons('x', shape, 784).error, /unexpected/);
  const ctx = { model: 'a b', dataset: 'ds', layer: 'features.3.0' };
  const q = { kind: 'topk', neurons: [3, 17], k: 7, agg: 'max', labels: [0, 6], predicted: [], misclassified: false };
  const r = Lg.parseRoute(Lg.queryHash(ctx, q));
  assert.equal(r.model, 'a b');
  assert.equal(r.layer, 'features.3.0');
  assert.equal(r.view, 'topk');
  assert.deepEqual(Lg.queryFromParams('topk', r.params).q, q);
  const kq = { kind: 'knn', target: 9, neurons: [1], k: 5, metric: 'linf', labels: [], predicted: [], misclassified: false };
  assert.deepEqual(Lg.queryFromParams('knn', Lg.parseRoute(Lg.queryHash(ctx, kq)).params).q, kq);
  assert.deepEqual(Lg.queryBody(ctx, q), { model: 'a b', dataset: 'ds', layer: 'features.3.0', neurons: [3, 17], k: 7, agg: 'max', filter: { labels: [0, 6] } });
  assert.equal(Lg.parseRoute('#/m/x/d/y/l/z/input/42').input, 42);
  assert.equal(Lg.parseRoute('#/m/x/d/y/l/z/neuron/5').neuron, 5);
  // The histogram keeps every input: bins sum to the partitions' counts.
  const parts = [{ partition: 0, lower: 5, upper: 9, count: 10 }, { partition: 1, lower: 1, upper: 5, count: 45 },
    { partition: 2, lower: 0, upper: 0, count: 45 }, { partition: 3, lower: null, upper: null, count: 0 }];
  const hb = Lg.histogramBins(parts, 20);
  const sum = hb.bins.reduce((s, b) => s + b.mai + b.rest, 0);
  assert.ok(Math.abs(sum - 100) < 1e-9, `bins hold ${sum}`);
  assert.equal(hb.bins[0].rest >= 45, true);
  assert.ok(Math.abs(hb.bins.reduce((s, b) => s + b.mai, 0) - 10) < 1e-9);
});

await step('logic: prediction filters, class names, heatmap URLs, the confusion matrix', () => {
  const ctx = { model: 'cnn', dataset: 'fm nist', layer: 'fc1' };
  // Query filters round-trip through the hash, and reach the body ANDed.
  const kq = { kind: 'knn', target: 4, neurons: [2, 5], k: 8, metric: 'cosine', labels: [6], predicted: [0, 2], misclassified: true };
  const kh = Lg.queryHash(ctx, kq);
  assert.equal(kh, '#/m/cnn/d/fm%20nist/l/fc1/knn?target=4&neurons=2,5&k=8&metric=cosine&labels=6&predicted=0,2&misclassified=1');
  assert.deepEqual(Lg.queryFromParams('knn', Lg.parseRoute(kh).params).q, kq);
  assert.deepEqual(Lg.queryBody(ctx, kq), { model: 'cnn', dataset: 'fm nist', layer: 'fc1', neurons: [2, 5], k: 8, target: 4, metric: 'cosine',
    filter: { labels: [6], predicted: [0, 2], misclassified: true } });
  assert.deepEqual(Lg.queryBody(ctx, { ...kq, labels: [], predicted: [], misclassified: false }).filter, undefined);
  assert.ok(Lg.METRICS.includes('cosine'));
  assert.match(Lg.queryFromParams('topk', new URLSearchParams('neurons=1&predicted=x')).error, /predicted=x/);
  // The predictions view, with or without a layer.
  for (const c of [ctx, { model: 'cnn', dataset: 'fm nist' }]) {
    const r = Lg.parseRoute(Lg.predictionsHash(c));
    assert.equal(r.view, 'predictions');
    assert.equal(r.dataset, 'fm nist');
    assert.equal(r.layer, c.layer || null);
  }
  // Browse filters: URL <-> filter <-> the listing's query string.
  const f = { label: 6, predicted: 0, misclassified: false };
  const bh = Lg.browseHash(ctx, 1, f);
  assert.equal(bh, '#/m/cnn/d/fm%20nist/l/fc1?label=6&predicted=0&page=2');
  const br = Lg.parseRoute(bh);
  assert.equal(br.view, 'browse');
  assert.deepEqual(Lg.browseFilter(br.params), f);
  assert.equal(Lg.pageFromParams(br.params, Infinity, 0), 1);
  assert.equal(Lg.filterActive(f), true);
  assert.equal(Lg.filterActive(Lg.browseFilter(new URLSearchParams('page=3'))), false);
  assert.deepEqual(Lg.browseFilter(new URLSearchParams('label=x&misclassified=true')), { label: null, predicted: null, misclassified: true });
  assert.equal(Lg.listingQuery(48, 48, f, 'cnn'), 'offset=48&limit=48&label=6&model=cnn&predicted=0');
  assert.equal(Lg.listingQuery(0, 1, null, null), 'offset=0&limit=1');
  assert.equal(Lg.listingQuery(0, 5, { label: null, predicted: null, misclassified: true }, 'a b'), 'offset=0&limit=5&model=a%20b&misclassified=true');
  // An input view keeps its grid's filter, page and heatmap when its neurons change.
  const ih = Lg.inputHash(ctx, 40, [3], Lg.inputExtras(new URLSearchParams('label=6&predicted=0&page=2&heat=gradcam&neurons=9')));
  assert.equal(ih, '#/m/cnn/d/fm%20nist/l/fc1/input/40?neurons=3&label=6&predicted=0&page=2&heat=gradcam');
  assert.equal(Lg.setHashParam(ih, 'heat', 'off'), '#/m/cnn/d/fm%20nist/l/fc1/input/40?neurons=3&label=6&predicted=0&page=2&heat=off');
  assert.equal(Lg.setHashParam('#/x?heat=gradient', 'heat', null), '#/x');
  assert.equal(Lg.setHashParam('#/x', 'input', 0), '#/x?input=0');
  // Classes typed as numbers or names (names may hold spaces).
  const names = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
  assert.deepEqual(Lg.parseClassList('0, 6', names), [0, 6]);
  assert.deepEqual(Lg.parseClassList('0 6', null), [0, 6]);
  assert.deepEqual(Lg.parseClassList('ankle boot, Shirt; 2', names), [9, 6, 2]);
  assert.deepEqual(Lg.parseClassList('', names), []);
  assert.equal(Lg.parseClassList('Shirt', null), null);
  assert.equal(Lg.parseClassList('Blouse', names), null);
  assert.deepEqual(Lg.classCaption(6, 0, names), { label: 'Shirt', predicted: 'pred T-shirt/top', wrong: true });
  assert.deepEqual(Lg.classCaption(6, 6, null), { label: 'label 6', predicted: 'pred 6', wrong: false });
  assert.deepEqual(Lg.classCaption(3, undefined, names), { label: 'Dress', predicted: '', wrong: false });
  // Heatmaps: channel maps only for [C,H,W] layers; the PNG's URL.
  assert.deepEqual(Lg.heatMethods([64]), ['gradient', 'smoothgrad', 'gradcam']);
  assert.ok(Lg.heatMethods([64, 7, 7]).includes('channel'));
  assert.deepEqual(Lg.heatFromParams(new URLSearchParams('heat=gradcam'), [64]), { method: 'gradcam' });
  assert.deepEqual(Lg.heatFromParams(new URLSearchParams(''), [64, 7, 7], 'channel'), { method: 'channel' });
  assert.deepEqual(Lg.heatFromParams(new URLSearchParams('heat=off'), [64, 7, 7], 'channel'), { method: null });
  assert.match(Lg.heatFromParams(new URLSearchParams('heat=channel'), [64]).error, /\[C,H,W\]/);
  const g = { model: 'cnn', layer: 'fc1', neurons: [3, 17], agg: 'max' };
  assert.equal(Lg.attributionPath('fm nist', 5, g, 'gradcam', 112),
    '/v1/datasets/fm%20nist/inputs/5/attribution.png?model=cnn&layer=fc1&neurons=3,17&agg=max&method=gradcam&size=112');
  assert.match(Lg.attributionPath('d', 5, g, 'smoothgrad'), /method=gradient&samples=16$/);
  // The confusion matrix: totals, recall / precision, shading per kind.
  const cm = Lg.confusionCells([[8, 2, 0], [1, 5, 4], [0, 0, 10]]);
  assert.deepEqual(cm.rowTotals, [10, 10, 10]);
  assert.deepEqual(cm.colTotals, [9, 7, 14]);
  assert.equal(cm.total, 30);
  assert.equal(cm.correct, 23);
  assert.deepEqual(cm.worst, { t: 1, p: 2, count: 4 });
  assert.deepEqual(cm.recall, [0.8, 0.5, 1]);
  assert.equal(cm.precision[2], 10 / 14);
  assert.equal(cm.cells[2][2].strength, 1);
  assert.equal(cm.cells[1][2].strength, 1);
  assert.equal(cm.cells[0][1].strength, 0.5);
  assert.equal(cm.cells[0][2].strength, 0);
  assert.equal(cm.cells[1][1].share, 0.5);
});

// ---- the daemon's data: the demo model and the Fashion-MNIST test set ----
let layerInfo = null;
await step('API setup: register the model and import Fashion-MNIST', async () => {
  const m = await apiCall('POST', '/v1/models', { name: MODEL, path: join(ROOT, 'models/fmnist_cnn.pt') });
  layerInfo = m.layers.find((l) => l.name === LAYER);
  assert.ok(layerInfo, `model has no layer ${LAYER}: ${m.layers.map((l) => l.name)}`);
  const d = await apiCall('POST', '/v1/datasets', {
    name: DATASET, path: `${FM}/t10k-images-idx3-ubyte.gz`, labels_path: `${FM}/t10k-labels-idx1-ubyte.gz`,
    format: 'idx', scale: 1 / 255, mean: 0.2860, std: 0.3530,
  });
  assert.equal(d.count, 10000);
  // A dataset the model cannot take ([3,4,4] inputs), to see it marked.
  const hdr = "{'descr': '|u1', 'fortran_order': False, 'shape': (6, 3, 4, 4), }"; // 6: splits over 1-3 shards
  const pad = hdr + ' '.repeat(64 - ((10 + hdr.length + 1) % 64)) + '\n';
  const npy = Buffer.concat([Buffer.from([0x93]), Buffer.from('NUMPY\x01\x00'), Buffer.from([pad.length & 255, pad.length >> 8]),
    Buffer.from(pad), Buffer.alloc(6 * 48)]);
  const r = await fetch(`${BASE}/v1/datasets/rgb`, { method: 'PUT', body: npy });
  assert.equal(r.status, 201, await r.text());
});

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const jsErrors = [];
const foreign = [];
async function newPage(width = 1366, height = 900) {
  const ctx = await browser.newContext({ viewport: { width, height } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => jsErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') jsErrors.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) foreign.push(r.url());
  });
  return page;
}
const shot = (page, name) => page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
const hash = (page) => page.evaluate(() => location.hash);
const imagesLoaded = (page, sel, n) => page.waitForFunction(([s, k]) => {
  const imgs = [...document.querySelectorAll(s)].slice(0, k);
  return imgs.length === k && imgs.every((i) => i.complete && i.naturalWidth > 0);
}, [sel, n], { timeout: 20000 });
const shownIds = (page, sel) => page.$$eval(sel, (figs) => figs.map((f) => Number(f.dataset.input)));

const page = await newPage();
let top = [];          // neurons chosen from input 0's chart
let label0 = null;

await step('page loads and lists the model and dataset', async () => {
  await page.goto(BASE + '/');
  await page.waitForSelector(`#sel-model option[value="${MODEL}"]`, { state: 'attached' });
  await page.waitForSelector(`#sel-dataset option[value="${DATASET}"]`, { state: 'attached' });
  assert.match(await page.textContent('#health'), /ok/);
  await shot(page, '01-home');
});

await step('choose model, dataset and layer fc1: shape, neurons, index state', async () => {
  await page.selectOption('#sel-model', MODEL);
  await page.waitForFunction(() => location.hash === '#/m/cnn');
  await page.selectOption('#sel-dataset', DATASET);
  await page.waitForSelector(`#sel-layer option[value="${LAYER}"]`, { state: 'attached' });
  await page.selectOption('#sel-layer', LAYER);
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1');
  assert.equal(await page.textContent('#layer-neurons'), String(layerInfo.neurons));
  assert.equal(await page.textContent('#layer-shape'), `[${layerInfo.shape.join(', ')}]`);
  assert.equal(await page.getAttribute('#index-state', 'data-state'), 'none');
  assert.equal(await page.isVisible('#build-index'), true);
  // The dataset of [3,4,4] inputs is offered, marked and not selectable.
  const rgb = await page.$eval('#sel-dataset option[value="rgb"]', (o) => ({ text: o.textContent, disabled: o.disabled }));
  assert.ok(rgb.disabled && /do not fit/.test(rgb.text), JSON.stringify(rgb));
  await page.goto(`${BASE}/#/m/cnn/d/rgb/l/fc1`);
  await page.waitForSelector('#content[data-ready="1"]');
  assert.match(await page.textContent('#content .error.inline'), /dataset 'rgb' has inputs \[3×4×4\]; model 'cnn' takes \[1×28×28\]/);
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1`);
  await page.waitForSelector('#content[data-view="browse"]');
  // Without an index, a neuron's view says so (no histogram to draw).
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/neuron/0`);
  await page.waitForSelector('#neuron-view[data-state="none"]');
  assert.match(await page.textContent('#neuron-view'), /no index/);
  await page.goBack();
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1');
  await page.waitForSelector('#content[data-view="browse"]');
});

await step('build the index from the page; progress until ready', async () => {
  await page.click('#build-index');
  // The bar shows while the job runs (a fast build may finish between polls).
  await page.waitForFunction(() => ['building', 'ready'].includes(document.querySelector('#index-state').dataset.state));
  const sawBuilding = await page.getAttribute('#index-state', 'data-state') === 'building';
  if (sawBuilding) await shot(page, '02-building');
  // Sample the progress bar until ready: it only moves forward, and matches the job.
  const seen = [];
  const t0 = Date.now();
  for (;;) {
    const s = await page.evaluate(() => ({
      state: document.querySelector('#index-state').dataset.state,
      shown: !document.querySelector('#progress-wrap').hidden,
      value: document.querySelector('#progress').value,
      max: document.querySelector('#progress').max,
    }));
    if (s.state === 'ready') break;
    assert.notEqual(s.state, 'failed', 'index build failed');
    assert.ok(Date.now() - t0 < 120000, 'index not ready after 120 s');
    if (s.shown) seen.push(s.value / s.max);
    await new Promise((r) => setTimeout(r, 100));
  }
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `progress went back: ${seen}`);
  if (seen.length) assert.ok(seen.every((f) => f >= 0 && f <= 1));
  await page.waitForSelector('#index-state[data-state="ready"]');
  const ixs = (await apiCall('GET', '/v1/indexes')).indexes.filter((i) => i.layer === LAYER && i.model === MODEL);
  assert.equal(ixs.length, 1);
  assert.equal(ixs[0].state, 'ready');
  assert.match(await page.textContent('#index-info'), new RegExp(`#${ixs[0].id}\\b`));
  assert.equal(await page.isVisible('#progress-wrap'), false);
  console.log(`    (progress seen while building: ${sawBuilding ? seen.map((f) => Math.round(100 * f) + '%').filter((x, i, a) => a.indexOf(x) === i).join(' ') : 'no, the build was too fast'})`);
});

await step('browse: a page of 48 thumbnails with labels', async () => {
  await page.waitForSelector('#content[data-ready="1"]');
  const ids = await shownIds(page, '#browse .thumb');
  assert.deepEqual(ids, Array.from({ length: 48 }, (_, i) => i));
  await imagesLoaded(page, '#browse .thumb img', 8);
  label0 = (await apiCall('GET', `/v1/datasets/${DATASET}/inputs/0`)).label;
  await page.waitForFunction((l) => document.querySelector('#browse .thumb[data-input="0"] .label').textContent === `label ${l}`, label0);
  await page.click('.pager a[aria-label="next page"]');
  // the URL counts pages as the pager shows them: the second page is page=2
  await page.waitForFunction(() => location.hash.endsWith('?page=2'));
  assert.equal((await shownIds(page, '#browse .thumb'))[0], 48);
  assert.equal(await page.$eval('.pagefield', (f) => f.value), '2');
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1?page=3`);
  await page.waitForFunction(() => document.querySelector('#browse .thumb')?.dataset.input === '96');
  assert.equal(await page.$eval('.pagefield', (f) => f.value), '3');
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1?page=2`);
  await page.waitForSelector('#browse .thumb[data-input="48"]');
  await page.click('.pager a[aria-label="previous page"]');
  await page.waitForSelector('#browse .thumb[data-input="0"]');
  await shot(page, '03-browse');
});

await step('open input 0: its top-20 neurons are the API\'s', async () => {
  await page.click('#browse .thumb[data-input="0"] a');
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1/input/0');
  await page.waitForSelector('#input-card[data-ready="1"]');
  const bars = await page.$$eval('#barchart .bar', (gs) => gs.map((g) => Number(g.dataset.neuron)));
  const api = await apiCall('GET', `/v1/datasets/${DATASET}/inputs/0/activations?model=${MODEL}&layer=${LAYER}&top=20`);
  assert.ok(Array.isArray(api));
  assert.deepEqual(bars, api.map((a) => a.neuron));
  assert.match(await page.textContent('#input-label'), new RegExp(`label ${label0}\\b`));
  await imagesLoaded(page, '#input-card img.big', 1);
  top = api.slice(0, 2).map((a) => a.neuron);
});

await step('select the top neurons by clicking bars', async () => {
  await page.click(`#barchart .bar[data-neuron="${top[0]}"]`);
  await page.click(`#barchart .bar[data-neuron="${top[1]}"]`);
  assert.equal(await page.inputValue('#neurons'), top.join(', '));
  assert.deepEqual(await page.$$eval('#barchart .bar.selected', (gs) => gs.map((g) => Number(g.dataset.neuron))), top);
  assert.deepEqual(await page.$$eval('#chips .chip', (cs) => cs.map((c) => Number(c.dataset.neuron))), top);
  assert.equal(await hash(page), `#/m/cnn/d/fmnist/l/fc1/input/0?neurons=${top.join(',')}`);
  // A typed list replaces it; a bad one is refused with a message, not sent.
  await page.fill('#neurons', `${layerInfo.neurons}`);
  assert.match(await page.textContent('#neurons-error'), /out of range/);
  await page.fill('#neurons', `[${top[0]}] ${top[1]}`);
  assert.equal(await page.textContent('#neurons-error'), '');
  await page.click('#k'); // blur: the field shows the canonical list
  assert.equal(await page.inputValue('#neurons'), top.join(', '));
  await shot(page, '04-input');
});

let topkHash = null;
await step('top-k: the ids shown are the API\'s, with scores and stats', async () => {
  await page.fill('#k', String(K));
  await page.selectOption('#agg', 'sum');
  await page.click('#run-topk');
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  topkHash = await hash(page);
  assert.equal(topkHash, `#/m/cnn/d/fmnist/l/fc1/topk?neurons=${top.join(',')}&k=${K}&agg=sum&input=0`);
  const shown = await shownIds(page, '#results .thumb');
  const api = await apiCall('POST', '/v1/query/topk', { model: MODEL, dataset: DATASET, layer: LAYER, neurons: top, k: K, agg: 'sum' });
  assert.deepEqual(shown, api.results.map((r) => r.input));
  const scores = await page.$$eval('#results .thumb .score', (s) => s.map((x) => Number(x.textContent.replace('score ', ''))));
  api.results.forEach((r, i) => assert.ok(Math.abs(scores[i] - r.score) <= 1e-3 * Math.max(1, Math.abs(r.score)), `score ${i}: ${scores[i]} vs ${r.score}`));
  for (const key of ['method', 'index', 'inputs_computed', 'elapsed_ms']) assert.ok(await page.isVisible(`#stats dd[data-key="${key}"]`), key);
  assert.equal(await page.textContent('#stats dd[data-key="index"]'), 'used');
  await imagesLoaded(page, '#results .thumb img', 6);
  await shot(page, '05-topk');
});

let knnHash = null, knnIds = null;
await step('kNN around input 0 with a label filter: the ids are the API\'s', async () => {
  await page.waitForSelector('#run-knn:not([disabled])');
  assert.match(await page.textContent('#run-knn'), /#0/);
  await page.selectOption('#metric', 'l1');
  await page.fill('#labels', String(label0));
  await page.click('#run-knn');
  await page.waitForFunction(() => location.hash.includes('/knn?'));
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  knnHash = await hash(page);
  assert.equal(knnHash, `#/m/cnn/d/fmnist/l/fc1/knn?target=0&neurons=${top.join(',')}&k=${K}&metric=l1&labels=${label0}`);
  knnIds = await shownIds(page, '#results .thumb');
  const api = await apiCall('POST', '/v1/query/knn', {
    model: MODEL, dataset: DATASET, layer: LAYER, neurons: top, k: K, target: 0, metric: 'l1', filter: { labels: [label0] },
  });
  assert.deepEqual(knnIds, api.results.map((r) => r.input));
  assert.ok(!knnIds.includes(0), 'the target itself is excluded');
  const labels = await page.$$eval('#results .thumb .label', (s) => s.map((x) => x.textContent));
  assert.ok(labels.every((l) => l === `label ${label0}`), labels.join('|'));
  assert.equal(await page.textContent('#stats dd[data-key="index"]'), 'used');
  await imagesLoaded(page, '#results .thumb img', 6);
  await shot(page, '06-knn');
});

await step('a shared kNN URL reloads to the same view in a fresh tab', async () => {
  const p2 = await newPage();
  await p2.goto(BASE + '/' + knnHash);
  await p2.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  assert.deepEqual(await shownIds(p2, '#results .thumb'), knnIds);
  assert.equal(await p2.inputValue('#sel-model'), MODEL);
  assert.equal(await p2.inputValue('#sel-dataset'), DATASET);
  assert.equal(await p2.inputValue('#sel-layer'), LAYER);
  assert.equal(await p2.inputValue('#neurons'), top.join(', '));
  assert.equal(await p2.inputValue('#k'), String(K));
  assert.equal(await p2.inputValue('#metric'), 'l1');
  assert.equal(await p2.inputValue('#labels'), String(label0));
  assert.equal(await p2.getAttribute('#input-card', 'data-input'), '0');
  // And a plain reload of the input view keeps the selection.
  await p2.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/input/0?neurons=${top.join(',')}`);
  await p2.reload();
  await p2.waitForSelector('#input-card[data-ready="1"]');
  assert.deepEqual(await p2.$$eval('#barchart .bar.selected', (gs) => gs.map((g) => Number(g.dataset.neuron))), top);
  await p2.context().close();
});

await step('back button returns to the top-k view', async () => {
  await page.goBack();
  await page.waitForFunction((h) => location.hash === h, topkHash);
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  const api = await apiCall('POST', '/v1/query/topk', { model: MODEL, dataset: DATASET, layer: LAYER, neurons: top, k: K, agg: 'sum' });
  assert.deepEqual(await shownIds(page, '#results .thumb'), api.results.map((r) => r.input));
});

await step('neuron view: histogram from the index and its top inputs (MAI)', async () => {
  await page.click(`#chips .chip[data-neuron="${top[0]}"] a`);
  await page.waitForFunction((n) => location.hash === `#/m/cnn/d/fmnist/l/fc1/neuron/${n}?input=0`, top[0]);
  await page.waitForFunction(() => ['ready', 'none', 'failed'].includes(document.querySelector('#neuron-view')?.dataset.state));
  const ix = (await apiCall('GET', '/v1/indexes')).indexes.find((i) => i.layer === LAYER && i.state === 'ready');
  const r = await fetch(`${BASE}/v1/indexes/${ix.id}/neurons/${top[0]}?mai=24`);
  if (r.status === 404) {
    assert.equal(await page.getAttribute('#neuron-view', 'data-state'), 'none');
    assert.match(await page.textContent('#neuron-view'), /no index/);
  } else {
    const entry = await r.json();
    assert.equal(await page.getAttribute('#neuron-view', 'data-state'), 'ready');
    assert.deepEqual(await shownIds(page, '#mai .thumb'), entry.mai.map((m) => m.input));
    const bars = await page.$$eval('#histogram svg rect', (rs) => rs.length);
    assert.ok(bars > 0, 'histogram has bars');
    assert.equal(await page.$$eval('#histogram svg line.mark', (l) => l.length), 1, 'input 0 is marked');
    const total = entry.partitions.reduce((s, p) => s + p.count, 0);
    assert.equal(total, 10000);
    assert.match(await page.textContent('#neuron-view'), new RegExp(`${total} inputs · ${entry.partitions.length} partitions`));
    await imagesLoaded(page, '#mai .thumb img', 6);
  }
  await shot(page, '07-neuron');
});

await step('histograms: reachable from the input card and the results; round ticks; a log axis has no 0', async () => {
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/input/0`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  const links = await page.$$eval('#hist-links a', (as) => as.map((a) => a.getAttribute('href')));
  assert.equal(links.length, 5);
  await page.click('#hist-links a');
  await page.waitForSelector('#neuron-view[data-state="ready"]');
  const xt = await page.$$eval('#histogram .xtick', (ts) => ts.map((t) => Number(t.textContent)));
  assert.ok(xt.length >= 4, `x ticks ${xt}`);
  const steps = xt.slice(1).map((v, i) => +(v - xt[i]).toPrecision(6));
  assert.ok(steps.every((d) => d === steps[0]), `evenly spaced x ticks ${xt}`);
  const yt = async () => page.$$eval('#histogram .ytick', (ts) => ts.map((t) => t.textContent));
  await page.uncheck('#hist-log').catch(() => {});
  assert.ok((await yt()).length >= 3, `linear y ticks ${await yt()}`);
  await page.check('#hist-log');
  const lt = await yt();
  assert.ok(!lt.includes('0') && lt[0] === '1' && lt.every((t) => /^10*$/.test(t)), `log y ticks ${lt}`);
  await shot(page, '07b-histogram');
});

await step('a URL with one neuron out of range keeps the others; the k error sits under k', async () => {
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/input/0?neurons=${top[0]},999,${top[1]}`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.deepEqual(await page.evaluate(() => window.explorer.S.selection), top.slice(0, 2));
  assert.match(await page.textContent('#errors'), /999 out of range/);
  await page.fill('#k', '0');
  await page.click('#run-topk');
  assert.match(await page.textContent('#k-error'), /k must be an integer/);
  assert.equal(await page.textContent('#neurons-error'), '');
  await page.fill('#k', String(K));
  await page.$$eval('#errors .close', (bs) => bs.forEach((b) => b.click()));
});

await step('API errors are shown with their code and message', async () => {
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/topk?neurons=${top[0]}&k=20000`);
  await page.waitForSelector('#results[data-state="failed"]', { state: 'attached' });
  assert.match(await page.textContent('#content .error.inline'), /422 k_too_large: .*k/);
  await page.goto(`${BASE}/#/m/nosuch/d/fmnist/l/fc1`);
  await page.waitForSelector('#content[data-ready="1"]');
  assert.match(await page.textContent('#content .error.inline'), /model 'nosuch' is not registered/);
  await shot(page, '08-error');
});

await step('a conv layer: coordinates typed, flattened as the daemon does; first query builds its index', async () => {
  const CONV = 'pool2';
  const info = (await apiCall('GET', `/v1/models/${MODEL}`)).layers.find((l) => l.name === CONV);
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/${CONV}/input/3`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.equal(await page.textContent('#layer-shape'), `[${info.shape.join(', ')}]`);
  const api = await apiCall('GET', `/v1/datasets/${DATASET}/inputs/3/activations?model=${MODEL}&layer=${CONV}&top=20`);
  const labels = await page.$$eval('#barchart .bar .label', (ts) => ts.map((t) => t.textContent));
  assert.deepEqual(labels, api.map((a) => `${a.neuron} [${a.coord.join(',')}]`));
  // Type the top neuron as coordinates and the second as a flat index.
  await page.fill('#neurons', `[${api[0].coord.join(', ')}] ${api[1].neuron}`);
  assert.equal(await page.textContent('#neurons-error'), '');
  await page.fill('#neurons', `[${api[0].coord.join(',')}] ${api[1].neuron}`);
  await page.fill('#k', '5');
  await page.click('#run-topk');
  await page.waitForSelector('#results[data-state="done"]', { timeout: 90000 });
  assert.equal(await hash(page), `#/m/cnn/d/fmnist/l/${CONV}/topk?neurons=${api[0].neuron},${api[1].neuron}&k=5&agg=sum&input=3`);
  const want = await apiCall('POST', '/v1/query/topk', { model: MODEL, dataset: DATASET, layer: CONV, neurons: [api[0].coord, api[1].coord], k: 5 });
  assert.deepEqual(await shownIds(page, '#results .thumb'), want.results.map((r) => r.input));
  const used = await page.textContent('#stats dd[data-key="index"]');
  assert.ok(['built', 'used', 'none'].includes(used), used);
  if (used === 'built') await page.waitForSelector('#index-state[data-state="ready"]', { timeout: 10000 });
  // Bad coordinates are refused in the page, with the shape named.
  await page.fill('#neurons', `[${info.shape[0]},0,0]`);
  assert.match(await page.textContent('#neurons-error'), new RegExp(`below ${info.shape[0]}`));
  await shot(page, '10-conv');
});

// ---- the interpretation workflow: class names, predictions, the confusion
// matrix, prediction filters, heatmaps ----
const CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
const FC1 = `${BASE}/#/m/cnn/d/fmnist/l/fc1`;
const listing = (q) => apiCall('GET', `/v1/datasets/${DATASET}/inputs?${q}`);
// What each shown thumbnail says: id, true class, predicted class, marked wrong.
const shownClasses = (page, sel) => page.$$eval(sel, (figs) => figs.map((f) => ({
  id: Number(f.dataset.input), label: f.querySelector('.label').textContent, pred: f.querySelector('.pred').textContent,
  wrong: f.classList.contains('misclassified'),
})));
// Every image under sel has loaded (naturalWidth > 0) from the daemon with a 200.
async function imagesOk(page, sel, n) {
  await imagesLoaded(page, sel, n);
  const srcs = await page.$$eval(sel, (imgs) => imgs.map((i) => i.getAttribute('src')));
  for (const src of srcs) {
    const r = await fetch(BASE + src);
    assert.equal(r.status, 200, `${src} -> ${r.status} ${r.status !== 200 ? await r.text() : ''}`);
    assert.equal(r.headers.get('content-type'), 'image/png', src);
    await r.arrayBuffer();
  }
  return srcs;
}
const heatSrc = (id, neurons, method, size = 112, layer = LAYER, agg = 'sum') =>
  `/v1/datasets/${DATASET}/inputs/${id}/attribution.png?model=${MODEL}&layer=${layer}&neurons=${neurons.join(',')}&agg=${agg}&method=${method}&size=${size}`;

await step('before predictions: the prediction filters answer 409 predictions_missing, shown in the page', async () => {
  await page.goto(`${FC1}/knn?target=0&neurons=${top.join(',')}&k=${K}&misclassified=1`);
  await page.waitForSelector('#results[data-state="failed"]', { state: 'attached' });
  assert.match(await page.textContent('#content .error.inline'), /409 predictions_missing/);
  await page.goto(`${FC1}?misclassified=1`);
  await page.waitForSelector('#browse[data-state="failed"]', { state: 'attached' });
  assert.match(await page.textContent('#browse .error.inline'), /409 predictions_missing/);
  // The layer bar says there are none and leads to the view that computes them.
  assert.equal(await page.getAttribute('#preds-state', 'data-state'), 'none');
  await page.click('#preds-link');
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1/predictions');
  await page.waitForSelector('#predictions[data-state="none"]');
  assert.equal(await page.isVisible('#preds-compute'), true);
});

await step('class names set from the page are the dataset\'s (PUT); a wrong count is refused with 422', async () => {
  assert.equal(await page.$eval('#classes-editor', (d) => d.open), true, 'the editor is open while there are no names');
  await page.fill('#classes-text', 'a\nb\nc');
  await page.click('#classes-save');
  await page.waitForSelector('#errors .error[data-code="invalid_classes"]');
  assert.match(await page.textContent('#errors'), /422 invalid_classes/);
  await page.$$eval('#errors .close', (bs) => bs.forEach((b) => b.click()));
  await page.fill('#classes-text', CLASSES.join('\n') + '\n');
  await page.click('#classes-save');
  await page.waitForFunction(() => /\(10\)/.test(document.querySelector('#classes-editor summary')?.textContent || ''));
  assert.deepEqual((await apiCall('GET', `/v1/datasets/${DATASET}`)).classes, CLASSES);
});

let conf = null;
await step('compute predictions from the page: progress, then accuracy and the confusion matrix are the API\'s', async () => {
  await page.click('#preds-compute');
  const seen = [];
  const t0 = Date.now();
  for (;;) {
    const st = await page.evaluate(() => ({
      state: document.querySelector('#predictions')?.dataset.state,
      shown: !!document.querySelector('#preds-progress-wrap') && !document.querySelector('#preds-progress-wrap').hidden,
      value: document.querySelector('#preds-progress')?.value, max: document.querySelector('#preds-progress')?.max,
    }));
    if (st.state === 'ready') break;
    assert.ok(Date.now() - t0 < 60000, 'predictions not ready after 60 s');
    if (st.shown && st.max) seen.push(st.value / st.max);
    await new Promise((r) => setTimeout(r, 50));
  }
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], `progress went back: ${seen}`);
  conf = await apiCall('GET', `/v1/predictions/${MODEL}/${DATASET}`);
  assert.equal(conf.confusion.length, 10);
  const cells = await page.$$eval('#confusion td[data-true]', (tds) => tds.map((td) => [Number(td.dataset.true), Number(td.dataset.pred), Number(td.textContent)]));
  assert.equal(cells.length, 100);
  const shown = Array.from({ length: 10 }, () => new Array(10).fill(null));
  for (const [t, p, v] of cells) shown[t][p] = v;
  assert.deepEqual(shown, conf.confusion);
  assert.equal(await page.textContent('#preds-accuracy'), `${(100 * conf.accuracy).toFixed(2)}%`);
  const heads = await page.$$eval('#confusion thead th.col', (ths) => ths.map((t) => t.textContent));
  assert.deepEqual(heads, CLASSES.map((c, i) => `${i} ${c}`));
  // The colour follows the count: the largest mistake is the reddest cell.
  const alpha = await page.$$eval('#confusion td.off', (tds) => tds.map((td) => [Number(td.textContent), td.style.background]));
  const max = Math.max(...alpha.map((a) => a[0]));
  assert.match(alpha.find((a) => a[0] === max)[1], /0\.88\)/);
  assert.equal(await page.getAttribute('#preds-state', 'data-state'), 'ready');
  assert.match(await page.textContent('#preds-state'), new RegExp(`${(100 * conf.accuracy).toFixed(2)}%`));
  const list = (await apiCall('GET', '/v1/predictions')).predictions.find((x) => x.model === MODEL && x.dataset === DATASET);
  assert.equal(list.state, 'ready');
  console.log(`    (accuracy ${conf.accuracy}; progress seen: ${seen.length ? seen.map((f) => Math.round(100 * f) + '%').filter((x, i, a) => a.indexOf(x) === i).join(' ') : 'no, it was too fast'})`);
  await shot(page, '11-confusion');
});

let cellHash = null, cellIds = null;
await step('a confusion cell opens the inputs it counts (label=t & predicted=p); its URL reopens them', async () => {
  // The largest mistake: true t predicted as p.
  let t = 0, p = 1;
  conf.confusion.forEach((row, i) => row.forEach((v, j) => { if (i !== j && v > conf.confusion[t][p]) { t = i; p = j; } }));
  await page.click(`#confusion td[data-true="${t}"][data-pred="${p}"] a`);
  cellHash = `#/m/cnn/d/fmnist/l/fc1?label=${t}&predicted=${p}`;
  await page.waitForFunction((h) => location.hash === h, cellHash);
  await page.waitForSelector('#browse[data-state="done"]');
  const want = await listing(`offset=0&limit=48&label=${t}&model=${MODEL}&predicted=${p}`);
  assert.equal(want.total, conf.confusion[t][p]);
  cellIds = await shownIds(page, '#browse .thumb');
  assert.deepEqual(cellIds, want.inputs.map((x) => x.id));
  assert.equal(Number(await page.getAttribute('#browse', 'data-total')), want.total);
  const cls = await shownClasses(page, '#browse .thumb');
  assert.ok(cls.every((x) => x.label === CLASSES[t] && x.pred === `pred ${CLASSES[p]}` && x.wrong), JSON.stringify(cls.slice(0, 3)));
  assert.equal(await page.inputValue('#filter-label'), String(t));
  assert.equal(await page.inputValue('#filter-predicted'), String(p));
  await imagesLoaded(page, '#browse .thumb img', 8);
  await shot(page, '12-confusion-cell');
  if (want.total > 48) {
    await page.click('.pager a[aria-label="next page"]');
    await page.waitForFunction((h) => location.hash === h + '&page=2', cellHash);
    await page.waitForSelector('#browse[data-state="done"]');
    const want2 = await listing(`offset=48&limit=48&label=${t}&model=${MODEL}&predicted=${p}`);
    assert.deepEqual(await shownIds(page, '#browse .thumb'), want2.inputs.map((x) => x.id));
    await page.goBack();
    await page.waitForFunction((h) => location.hash === h, cellHash);
    await page.waitForSelector('#browse[data-state="done"]');
  }
  // An input opened from the cell keeps the cell's grid around it.
  await page.click(`#browse .thumb[data-input="${cellIds[0]}"] a`);
  await page.waitForFunction((id) => location.hash.includes(`/input/${id}?`), cellIds[0]);
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.match(await hash(page), new RegExp(`label=${t}&predicted=${p}`));
  await page.waitForSelector('#browse[data-state="done"]');
  assert.deepEqual(await shownIds(page, '#browse .thumb'), cellIds);
  assert.equal(await page.getAttribute('#browse .thumb.current', 'data-input'), String(cellIds[0]));
  assert.equal(await page.textContent('#card-class'), `label ${t} (${CLASSES[t]})`);
  assert.equal(await page.getAttribute('#card-pred', 'data-predicted'), String(p));
  assert.match(await page.getAttribute('#card-pred', 'class'), /wrong/);
  // And the cell's URL reopens it in a fresh tab.
  const p2 = await newPage();
  await p2.goto(BASE + '/' + cellHash);
  await p2.waitForSelector('#browse[data-state="done"]');
  assert.deepEqual(await shownIds(p2, '#browse .thumb'), cellIds);
  await p2.context().close();
});

await step('browse filters: misclassified only, then by true label; each is the listing\'s', async () => {
  await page.goto(FC1);
  await page.waitForSelector('#browse[data-state="done"]');
  // The unfiltered grid shows predictions too (from the page's one listing request).
  const first = await listing(`offset=0&limit=48&model=${MODEL}`);
  await page.waitForFunction(() => document.querySelector('#browse .thumb[data-input="0"] .pred').textContent !== '');
  const cls0 = await shownClasses(page, '#browse .thumb');
  first.inputs.forEach((x, i) => {
    assert.equal(cls0[i].label, CLASSES[x.label]);
    assert.equal(cls0[i].pred, `pred ${CLASSES[x.predicted]}`);
    assert.equal(cls0[i].wrong, x.label !== x.predicted);
  });
  await page.check('#filter-mis');
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1?misclassified=1');
  await page.waitForSelector('#browse[data-state="done"]');
  const mis = await listing(`offset=0&limit=48&model=${MODEL}&misclassified=true`);
  assert.deepEqual(await shownIds(page, '#browse .thumb'), mis.inputs.map((x) => x.id));
  assert.equal(mis.total, conf.confusion.reduce((s, row, i) => s + row.reduce((a, v, j) => a + (i === j ? 0 : v), 0), 0));
  assert.ok((await shownClasses(page, '#browse .thumb')).every((x) => x.wrong));
  await page.selectOption('#filter-label', '4');
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1?label=4&misclassified=1');
  await page.waitForSelector('#browse[data-state="done"]');
  const coat = await listing(`offset=0&limit=48&label=4&model=${MODEL}&misclassified=true`);
  assert.deepEqual(await shownIds(page, '#browse .thumb'), coat.inputs.map((x) => x.id));
  assert.match(await page.textContent('#content h2'), new RegExp(`${coat.total} inputs · true Coat · misclassified`));
  await shot(page, '13-browse-filters');
  await page.click('#filter-clear');
  await page.waitForFunction(() => location.hash === '#/m/cnn/d/fmnist/l/fc1');
});

let misHash = null, misIds = null;
await step('kNN with "misclassified only" and cosine from the form: the API\'s answer, each thumbnail with its true and predicted class', async () => {
  await page.goto(`${FC1}/input/0?neurons=${top.join(',')}`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.ok((await page.$$eval('#metric option', (os) => os.map((o) => o.value))).includes('cosine'));
  await page.selectOption('#metric', 'cosine');
  await page.fill('#labels', '');
  await page.check('#misclassified');
  await page.click('#run-knn');
  misHash = `#/m/cnn/d/fmnist/l/fc1/knn?target=0&neurons=${top.join(',')}&k=${K}&metric=cosine&misclassified=1`;
  await page.waitForFunction((h) => location.hash === h, misHash);
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  const api = await apiCall('POST', '/v1/query/knn', {
    model: MODEL, dataset: DATASET, layer: LAYER, neurons: top, k: K, target: 0, metric: 'cosine', filter: { misclassified: true },
  });
  misIds = await shownIds(page, '#results .thumb');
  assert.deepEqual(misIds, api.results.map((r) => r.input));
  const cls = await shownClasses(page, '#results .thumb');
  api.results.forEach((r, i) => {
    assert.notEqual(r.predicted, r.label);
    assert.equal(cls[i].label, CLASSES[r.label], `result ${i}`);
    assert.equal(cls[i].pred, `pred ${CLASSES[r.predicted]}`, `result ${i}`);
    assert.equal(cls[i].wrong, true);
  });
  const dist = await page.$$eval('#results .thumb .score', (s) => s.map((x) => Number(x.textContent.replace('distance ', ''))));
  api.results.forEach((r, i) => assert.ok(Math.abs(dist[i] - r.distance) <= 1e-3 * Math.max(1e-3, Math.abs(r.distance)), `distance ${i}: ${dist[i]} vs ${r.distance}`));
  assert.match(await page.textContent('#query-status'), new RegExp(`${K} misclassified`));
  // Class names typed in the form become numbers in the URL and the body.
  await page.fill('#labels', 'Ankle boot');
  await page.fill('#predicted', 'sneaker');
  await page.uncheck('#misclassified');
  await page.click('#run-topk');
  await page.waitForFunction(() => location.hash.includes('/topk?'));
  assert.equal(await hash(page), `#/m/cnn/d/fmnist/l/fc1/topk?neurons=${top.join(',')}&k=${K}&agg=sum&labels=9&predicted=7&input=0`);
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  const tk = await apiCall('POST', '/v1/query/topk', { model: MODEL, dataset: DATASET, layer: LAYER, neurons: top, k: K, agg: 'sum', filter: { labels: [9], predicted: [7] } });
  assert.deepEqual(await shownIds(page, '#results .thumb'), tk.results.map((r) => r.input));
  assert.ok((await shownClasses(page, '#results .thumb')).every((x) => x.label === 'Ankle boot' && x.pred === 'pred Sneaker'));
  // A bad class name is refused in the page.
  await page.fill('#predicted', 'Blouse');
  await page.click('#run-topk');
  assert.match(await page.textContent('#predicted-error'), /class numbers or names/);
  await page.fill('#predicted', '');
  await page.fill('#labels', '');
  // Back to the misclassified kNN: a shared URL reopens it with the form filled.
  const p2 = await newPage();
  await p2.goto(BASE + '/' + misHash);
  await p2.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  assert.deepEqual(await shownIds(p2, '#results .thumb'), misIds);
  assert.equal(await p2.isChecked('#misclassified'), true);
  assert.equal(await p2.inputValue('#metric'), 'cosine');
  await p2.context().close();
  await page.goto(BASE + '/' + misHash);
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  await imagesLoaded(page, '#results .thumb img', 6);
  await shot(page, '14-knn-misclassified');
});

await step('heatmaps on every result: gradient and Grad-CAM attribution.png load (HTTP 200); one input toggles alone; the URL reopens them', async () => {
  const methods = await page.$$eval('#heat-method option', (os) => os.map((o) => o.value));
  assert.ok(methods.includes('gradient') && methods.includes('gradcam') && !methods.includes('channel'), `fc1 offers ${methods}`);
  await page.check('#heat-on');
  await page.waitForFunction(() => location.hash.endsWith('&heat=gradient'));
  let srcs = await imagesOk(page, '#results .thumb img', misIds.length);
  assert.deepEqual(srcs, misIds.map((id) => heatSrc(id, top, 'gradient')));
  // The opened input's card follows the switch (at its own size).
  assert.equal(await page.getAttribute('#card-image img', 'src'), heatSrc(0, top, 'gradient', 224));
  await imagesOk(page, '#card-image img', 1);
  await page.selectOption('#heat-method', 'gradcam');
  await page.waitForFunction(() => location.hash.endsWith('&heat=gradcam'));
  srcs = await imagesOk(page, '#results .thumb img', misIds.length);
  assert.deepEqual(srcs, misIds.map((id) => heatSrc(id, top, 'gradcam')));
  // Grad-CAM of fc1 is taken at conv4, the deepest [C,H,W] layer before it.
  const cam = await apiCall('GET', `/v1/datasets/${DATASET}/inputs/${misIds[0]}/attribution?model=${MODEL}&layer=${LAYER}&neurons=${top.join(',')}&method=gradcam`);
  assert.equal(cam.cam_layer, 'conv4');
  assert.deepEqual(cam.shape, [7, 7]);
  await shot(page, '15-heatmaps');
  // One result's own toggle switches it back alone.
  await page.click(`#results .thumb[data-input="${misIds[0]}"] .heat-toggle`);
  assert.match(await page.getAttribute(`#results .thumb[data-input="${misIds[0]}"] img`, 'src'), /\/image\.png$/);
  assert.equal(await page.getAttribute(`#results .thumb[data-input="${misIds[1]}"] img`, 'src'), heatSrc(misIds[1], top, 'gradcam'));
  await page.click(`#results .thumb[data-input="${misIds[0]}"] .heat-toggle`);
  assert.equal(await page.getAttribute(`#results .thumb[data-input="${misIds[0]}"] img`, 'src'), heatSrc(misIds[0], top, 'gradcam'));
  // The URL of this state reopens it in a fresh tab.
  const heatHash = await hash(page);
  assert.equal(heatHash, misHash + '&heat=gradcam');
  const p2 = await newPage();
  await p2.goto(BASE + '/' + heatHash);
  await p2.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  assert.equal(await p2.isChecked('#heat-on'), true);
  assert.equal(await p2.inputValue('#heat-method'), 'gradcam');
  assert.deepEqual(await imagesOk(p2, '#results .thumb img', misIds.length), misIds.map((id) => heatSrc(id, top, 'gradcam')));
  await p2.context().close();
  // Off again: the thumbnails; heat=channel on fc1 is refused in the error display.
  await page.uncheck('#heat-on');
  await page.waitForFunction((h) => location.hash === h, misHash);
  assert.ok((await page.$$eval('#results .thumb img', (is) => is.map((i) => i.getAttribute('src')))).every((s) => /\/image\.png$/.test(s)));
  await page.goto(BASE + '/' + misHash + '&heat=channel');
  await page.waitForSelector('#results[data-state="done"]', { timeout: 60000 });
  assert.match(await page.textContent('#errors'), /heat=channel needs a layer of \[C,H,W\] outputs/);
  await page.$$eval('#errors .close', (bs) => bs.forEach((b) => b.click()));
});

await step('input card heatmap follows the selection; a conv neuron\'s top inputs show its channel map', async () => {
  await page.goto(`${FC1}/input/0?neurons=${top[0]}`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  // The method last chosen (Grad-CAM, above) is offered again; take the gradient.
  assert.equal(await page.inputValue('#heat-method'), 'gradcam');
  await page.selectOption('#heat-method', 'gradient');
  await page.check('#heat-on');
  await page.waitForFunction(() => location.hash.endsWith('&heat=gradient'));
  assert.equal(await page.getAttribute('#card-image img', 'src'), heatSrc(0, [top[0]], 'gradient', 224));
  await imagesOk(page, '#card-image img', 1);
  // Selecting another neuron redraws the heatmap for the new group, URL included.
  await page.click(`#barchart .bar[data-neuron="${top[1]}"]`);
  assert.equal(await page.getAttribute('#card-image img', 'src'), heatSrc(0, top, 'gradient', 224));
  assert.equal(await hash(page), `#/m/cnn/d/fmnist/l/fc1/input/0?neurons=${top.join(',')}&heat=gradient`);
  await page.reload();
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.equal(await page.getAttribute('#card-image img', 'src'), heatSrc(0, top, 'gradient', 224));
  // A conv layer: the neuron view of pool2's most active neuron on input 3.
  const CONV = 'pool2';
  const info = (await apiCall('GET', `/v1/models/${MODEL}`)).layers.find((l) => l.name === CONV);
  const act = await apiCall('GET', `/v1/datasets/${DATASET}/inputs/3/activations?model=${MODEL}&layer=${CONV}&top=1`);
  const n = act[0].neuron, ch = act[0].coord[0];
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/${CONV}/neuron/${n}?input=3`);
  await page.waitForSelector('#neuron-view[data-state="ready"]', { timeout: 60000 });
  assert.ok((await page.$$eval('#heat-method option', (os) => os.map((o) => o.value))).includes('channel'));
  assert.equal(await page.inputValue('#heat-method'), 'channel');
  assert.match(await page.textContent('#channel-hint'), new RegExp(`channel ${ch}\\b`));
  const ix = (await apiCall('GET', '/v1/indexes')).indexes.find((i) => i.layer === CONV && i.state === 'ready');
  const entry = await apiCall('GET', `/v1/indexes/${ix.id}/neurons/${n}?mai=24`);
  const ids = entry.mai.map((m) => m.input);
  assert.deepEqual(await shownIds(page, '#mai .thumb'), ids);
  const srcs = await imagesOk(page, '#mai .thumb img', ids.length);
  assert.deepEqual(srcs, ids.map((id) => heatSrc(id, [n], 'channel', 112, CONV)));
  // The map is the channel's activation: [H,W] of the layer, its largest value where the neuron's channel fires most.
  const map = await apiCall('GET', `/v1/datasets/${DATASET}/inputs/${ids[0]}/attribution?model=${MODEL}&layer=${CONV}&neurons=${n}&method=channel`);
  assert.deepEqual(map.shape, info.shape.slice(1));
  assert.equal(map.values.length, info.shape[1] * info.shape[2]);
  assert.ok(map.max >= entry.mai[0].value - 1e-4, `channel max ${map.max} vs neuron value ${entry.mai[0].value}`);
  // The thumbnails still say their classes.
  await page.waitForFunction(() => [...document.querySelectorAll('#mai .thumb .pred')].every((p) => p.textContent !== ''));
  await shot(page, '16-channel-maps');
  // Off is kept in the URL (channel maps are this view's default).
  await page.uncheck('#heat-on');
  await page.waitForFunction((nn) => location.hash.endsWith(`/neuron/${nn}?input=3&heat=off`), n);
  assert.ok((await page.$$eval('#mai .thumb img', (is) => is.map((i) => i.getAttribute('src')))).every((s) => /\/image\.png$/.test(s)));
  await page.reload();
  await page.waitForSelector('#neuron-view[data-state="ready"]');
  assert.equal(await page.isChecked('#heat-on'), false);
  // The input card on a conv layer offers channel maps too.
  await page.goto(`${BASE}/#/m/cnn/d/fmnist/l/${CONV}/input/3?neurons=${n}&heat=channel`);
  await page.waitForSelector('#input-card[data-ready="1"]');
  assert.equal(await page.getAttribute('#card-image img', 'src'), heatSrc(3, [n], 'channel', 224, CONV));
  await imagesOk(page, '#card-image img', 1);
});

await step('laptop and narrow screens: one column below 900px', async () => {
  const p3 = await newPage(800, 1000);
  await p3.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/input/0`);
  await p3.waitForSelector('#input-card[data-ready="1"]');
  const side = await p3.locator('#side').boundingBox();
  const content = await p3.locator('#content').boundingBox();
  assert.ok(content.y >= side.y + side.height - 1, 'content below the side panel');
  const wide = await p3.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(wide <= 800, `no horizontal scroll (${wide}px)`);
  await shot(p3, '09-narrow');
  // The confusion matrix scrolls in its panel, not the page.
  await p3.goto(`${BASE}/#/m/cnn/d/fmnist/l/fc1/predictions`);
  await p3.waitForSelector('#predictions[data-state="ready"]');
  const wide2 = await p3.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(wide2 <= 800, `no horizontal scroll on the matrix view (${wide2}px)`);
  await p3.context().close();
});

await step('no JavaScript errors and no request leaves the daemon', async () => {
  assert.deepEqual(jsErrors.filter((e) => !/status of 4\d\d/.test(e)), []);
  assert.deepEqual(foreign, []);
});

await browser.close();
console.log(`(${((Date.now() - t00) / 1000).toFixed(1)} s; screenshots in ${OUT})`);
// A Check-style line too, so tests/run_all.sh counts this suite like the others.
console.log(`${passed + failed ? Math.floor((100 * passed) / (passed + failed)) : 0}%: Checks: ${passed + failed}, Failures: ${failed}, Errors: 0`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

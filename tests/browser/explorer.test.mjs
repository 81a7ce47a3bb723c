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
  const q = { kind: 'topk', neurons: [3, 17], k: 7, agg: 'max', labels: [0, 6] };
  const r = Lg.parseRoute(Lg.queryHash(ctx, q));
  assert.equal(r.model, 'a b');
  assert.equal(r.layer, 'features.3.0');
  assert.equal(r.view, 'topk');
  assert.deepEqual(Lg.queryFromParams('topk', r.params).q, q);
  const kq = { kind: 'knn', target: 9, neurons: [1], k: 5, metric: 'linf', labels: [] };
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
  const hdr = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 4, 4), }";
  const pad = hdr + ' '.repeat(64 - ((10 + hdr.length + 1) % 64)) + '\n';
  const npy = Buffer.concat([Buffer.from([0x93]), Buffer.from('NUMPY\x01\x00'), Buffer.from([pad.length & 255, pad.length >> 8]),
    Buffer.from(pad), Buffer.alloc(2 * 48)]);
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

// charts.js -- the two SVG charts: an input's most active neurons (horizontal
// bars, clickable) and a neuron's activation histogram.
import { fmt, histogramBins, logTicks, neuronLabel, niceTicks } from './logic.js';

const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// rows: [{neuron, coord, value}] as the activations endpoint returns them.
// selected: Set of flat neuron ids. onToggle(neuron) on click or Enter.
export function barChart(rows, { shape, selected, onToggle }) {
  const rowH = 19, labelW = 100, valueW = 52, width = 380;
  const plotW = width - labelW - valueW;
  const height = rows.length * rowH + 6;
  const vmax = Math.max(0, ...rows.map((r) => r.value));
  const vmin = Math.min(0, ...rows.map((r) => r.value));
  const span = vmax - vmin || 1;
  const x = (v) => labelW + ((v - vmin) / span) * plotW;
  const svg = el('svg', {
    class: 'barchart', viewBox: `0 0 ${width} ${height}`, role: 'group',
    'aria-label': 'most active neurons; click a bar to select that neuron',
  });
  if (vmin < 0) svg.append(el('line', { x1: x(0), x2: x(0), y1: 0, y2: height, class: 'axis' }));
  rows.forEach((r, i) => {
    const y = i * rowH + 3;
    const g = el('g', {
      class: 'bar' + (selected.has(r.neuron) ? ' selected' : ''),
      'data-neuron': r.neuron, tabindex: 0, role: 'button',
      'aria-pressed': selected.has(r.neuron) ? 'true' : 'false',
    });
    g.append(el('title', {}, `neuron ${neuronLabel(r.neuron, shape)}: ${r.value}\nclick to ${selected.has(r.neuron) ? 'unselect' : 'select'}`));
    g.append(el('rect', { x: 0, y, width, height: rowH - 2, class: 'hit' }));
    const x0 = x(Math.min(0, r.value)), x1 = x(Math.max(0, r.value));
    g.append(el('rect', { x: x0, y: y + 2, width: Math.max(1, x1 - x0), height: rowH - 6, class: 'fill' }));
    g.append(el('text', { x: labelW - 6, y: y + rowH / 2 + 2, class: 'label', 'text-anchor': 'end' },
      neuronLabel(r.neuron, shape)));
    g.append(el('text', { x: width - 4, y: y + rowH / 2 + 2, class: 'value', 'text-anchor': 'end' }, fmt(r.value, 3)));
    g.addEventListener('click', () => onToggle(r.neuron));
    g.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onToggle(r.neuron); }
    });
    svg.append(g);
  });
  return svg;
}

// entry: the index's neuron answer {partitions:[{partition,lower,upper,count}], mai:[...]}.
// mark: optional {value, label} drawn as a vertical line (the opened input).
export function histogram(entry, { mark, log } = {}) {
  const nb = 40;
  const h = histogramBins(entry.partitions, nb, (entry.mai || []).map((m) => m.value));
  const width = 520, height = 220, padL = 48, padR = 12, padT = 12, padB = 36;
  const svg = el('svg', { class: 'histogram', viewBox: `0 0 ${width} ${height}`, role: 'img' });
  if (!h) {
    svg.append(el('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle' }, 'no values'));
    return svg;
  }
  const cmax = Math.max(...h.bins.map((b) => b.mai + b.rest));
  // A log axis starts at 1 input (it has no 0); a linear one at 0.
  const yticks = log ? logTicks(cmax) : niceTicks(0, cmax, 4);
  const top = Math.max(cmax, yticks[yticks.length - 1] || 1);
  const ys = (c) => (log ? (c >= 1 ? Math.log10(c) : 0) : c);
  const ymax = ys(top) || 1;
  const pw = width - padL - padR, ph = height - padT - padB;
  const x = (v) => padL + ((v - h.lo) / (h.hi - h.lo)) * pw;
  const y = (c) => padT + ph - (ys(c) / ymax) * ph;
  svg.setAttribute('aria-label', `activation histogram over ${h.total} inputs, from ${fmt(h.lo)} to ${fmt(h.hi)}`);
  // grid and axes
  for (const t of yticks) {
    const ty = y(t);
    svg.append(el('line', { x1: padL, x2: padL + pw, y1: ty, y2: ty, class: 'gridline' }));
    svg.append(el('text', { x: padL - 4, y: ty + 3, 'text-anchor': 'end', class: 'tick ytick' }, fmt(t, 0)));
  }
  svg.append(el('line', { x1: padL, x2: padL + pw, y1: padT + ph, y2: padT + ph, class: 'axis' }));
  svg.append(el('line', { x1: padL, x2: padL, y1: padT, y2: padT + ph, class: 'axis' }));
  for (const v of niceTicks(h.lo, h.hi, 6)) {
    const tx = x(v);
    svg.append(el('line', { x1: tx, x2: tx, y1: padT + ph, y2: padT + ph + 4, class: 'axis' }));
    svg.append(el('text', { x: tx, y: padT + ph + 15, 'text-anchor': 'middle', class: 'tick xtick' }, fmt(v, 3)));
  }
  svg.append(el('text', { x: padL + pw / 2, y: height - 4, 'text-anchor': 'middle', class: 'tick' }, 'activation'));
  svg.append(el('text', {
    x: 12, y: padT + ph / 2, 'text-anchor': 'middle', class: 'tick',
    transform: `rotate(-90 12 ${padT + ph / 2})`,
  }, log ? 'inputs (log)' : 'inputs'));
  const bw = pw / nb;
  h.bins.forEach((b, i) => {
    const bx = padL + i * bw;
    if (b.rest > 0) {
      const r = el('rect', { x: bx + 0.5, y: y(b.rest), width: Math.max(1, bw - 1), height: padT + ph - y(b.rest), class: 'rest' });
      r.append(el('title', {}, `${fmt(b.lo, 3)} .. ${fmt(b.hi, 3)}: ~${Math.round(b.rest)} inputs`));
      svg.append(r);
    }
    if (b.mai > 0) {
      const y0 = y(b.rest), y1 = y(b.rest + b.mai);
      const r = el('rect', { x: bx + 0.5, y: y1, width: Math.max(1, bw - 1), height: Math.max(1, y0 - y1), class: 'mai' });
      r.append(el('title', {}, `${fmt(b.lo, 3)} .. ${fmt(b.hi, 3)}: ${h.exactMai ? '' : '~'}${Math.round(b.mai)} inputs in the MAI`));
      svg.append(r);
    }
  });
  if (mark && Number.isFinite(mark.value)) {
    const mx = Math.min(padL + pw, Math.max(padL, x(mark.value)));
    svg.append(el('line', { x1: mx, x2: mx, y1: padT, y2: padT + ph, class: 'mark' }));
    svg.append(el('text', { x: mx + (mx > padL + pw * 0.7 ? -4 : 4), y: padT + 10, class: 'mark-label', 'text-anchor': mx > padL + pw * 0.7 ? 'end' : 'start' },
      `${mark.label}: ${fmt(mark.value, 3)}`));
  }
  return svg;
}

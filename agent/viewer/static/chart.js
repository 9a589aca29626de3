// Two small inline-SVG charts under the timeline: tokens per step and seconds per step. One unit of
// the viewBox per step, stretched to the width; each series is one <path>, so a thousand steps cost a
// few elements, and moving the cursor touches one attribute.
import { h, svg, fmtTokens, fmtSeconds } from './common.js';

const HEIGHT = 40;
const maxOf = (values) => values.reduce((m, v) => (v > m ? v : m), 0);

/** The scale's top: the maximum, unless a few outliers (a 120 s timeout) would flatten every other
 *  bar; then four times the 90th percentile, and the outliers are drawn clipped at full height. */
function scaleTop(values) {
  const max = maxOf(values);
  const sorted = values.filter((v) => v > 0).sort((a, b) => a - b);
  if (sorted.length < 8) return { top: max, clipped: false };
  const p90 = sorted[Math.floor(0.9 * (sorted.length - 1))];
  return max > 4 * p90 && p90 > 0 ? { top: 4 * p90, clipped: true } : { top: max, clipped: false };
}

function barsPath(values, max, offsets) {
  let d = '';
  values.forEach((value, i) => {
    if (!value || value <= 0 || !max) return;
    const base = offsets ? HEIGHT - (Math.min(offsets[i], max) / max) * HEIGHT : HEIGHT;
    const top = Math.max(0, base - (value / max) * HEIGHT);
    d += `M${i + 0.12} ${base.toFixed(2)}V${top.toFixed(2)}h0.76V${base.toFixed(2)}z`;
  });
  return d;
}

function linePath(values, max) {
  let d = '';
  values.forEach((value, i) => {
    if (value == null || !max) return;
    const y = HEIGHT - (value / max) * (HEIGHT - 2) - 1;
    d += `${d ? 'L' : 'M'}${i + 0.5} ${y.toFixed(2)}`;
  });
  return d;
}

function chart(title, series, onPick, onHover) {
  const root = svg('svg', { class: 'chart-svg', viewBox: `0 0 1 ${HEIGHT}`, preserveAspectRatio: 'none', role: 'img' });
  const cursor = svg('rect', { class: 'chart-cursor', x: 0, y: 0, width: 1, height: HEIGHT });
  root.append(cursor);
  const paths = series.map((s) => {
    const path = svg('path', { class: s.cls });
    if (s.kind === 'line') path.setAttribute('vector-effect', 'non-scaling-stroke');
    root.append(path);
    return path;
  });
  const scale = h('span', { class: 'chart-scale' });
  const legend = series.map((s) => h('span', { class: `key key-${s.cls}` }, s.label));
  const el = h('div', { class: 'chart' }, h('div', { class: 'chart-head' }, h('span', { class: 'chart-title' }, title), legend, scale), root);
  let count = 0;
  const at = (event) => {
    const box = root.getBoundingClientRect();
    return Math.max(0, Math.min(count - 1, Math.floor(((event.clientX - box.left) / box.width) * count)));
  };
  root.addEventListener('click', (event) => { if (count) onPick(at(event)); });
  root.addEventListener('mousemove', (event) => { if (count) onHover(at(event)); });
  root.addEventListener('mouseleave', () => onHover(null));
  return { el, root, paths, cursor, scale, setCount(n) { count = n; } };
}

/** Build the charts into `container`; returns { update(steps), setCursor(index) }. */
export function createCharts(container, onPick, onHover) {
  const tokens = chart('Tokens', [
    { cls: 's-out', kind: 'bars', label: 'output' },
    { cls: 's-ctx', kind: 'line', label: 'context' },
  ], onPick, onHover);
  const time = chart('Seconds', [
    { cls: 's-model', kind: 'bars', label: 'model' },
    { cls: 's-cmd', kind: 'bars', label: 'command' },
  ], onPick, onHover);
  container.replaceChildren(tokens.el, time.el);

  return {
    update(steps) {
      const n = Math.max(steps.length, 1);
      for (const c of [tokens, time]) {
        c.root.setAttribute('viewBox', `0 0 ${n} ${HEIGHT}`);
        c.cursor.setAttribute('visibility', steps.length ? 'visible' : 'hidden');
        c.setCount(steps.length);
      }
      const out = steps.map((s) => s.completion_tokens || 0);
      const ctx = steps.map((s) => s.prompt_tokens ?? null);
      const maxOut = maxOf(out);
      const maxCtx = maxOf(ctx);
      tokens.paths[0].setAttribute('d', barsPath(out, maxOut));
      tokens.paths[1].setAttribute('d', linePath(ctx, maxCtx));
      tokens.scale.textContent = `max ${fmtTokens(maxOut)} out · ${fmtTokens(maxCtx)} context`;
      const model = steps.map((s) => s.model_latency_s || 0);
      const cmd = steps.map((s) => s.command_duration_s || 0);
      const totals = model.map((m, i) => m + cmd[i]);
      const { top, clipped } = scaleTop(totals);
      time.paths[0].setAttribute('d', barsPath(model, top));
      time.paths[1].setAttribute('d', barsPath(cmd, top, model));
      time.scale.textContent = clipped ? `scale ${fmtSeconds(top)} (clipped) · max ${fmtSeconds(maxOf(totals))}`
        : `max ${fmtSeconds(maxOf(totals))}`;
    },
    setCursor(index) {
      for (const c of [tokens, time]) c.cursor.setAttribute('x', String(Math.max(0, index)));
    },
  };
}

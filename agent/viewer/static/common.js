// Shared helpers for both pages. Everything that comes from a trajectory reaches the DOM through
// `h()` or `text()`, which only ever create text nodes: model output is never parsed as HTML.

/** Create an element. Children that are strings become text nodes; `text` sets textContent. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append children (nodes, strings as text, nested arrays; null/false skipped). */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A span with a class holding plain text: the unit of every highlighter. */
export function span(cls, content) {
  const el = document.createElement('span');
  if (cls) el.className = cls;
  el.textContent = content;
  return el;
}

/** Replace an element's children; unlike replaceChildren, null and false are skipped, not shown. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return el;
}

/** GET a JSON document from the API; throws with the server's message on failure. */
export async function getJSON(url) {
  const response = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

const INT = new Intl.NumberFormat('en-US');
export function fmtInt(n) {
  return n == null ? '–' : INT.format(n);
}

/** 1234 -> "1,234", 48210 -> "48.2k", 3400000 -> "3.40M": compact for table cells. */
export function fmtTokens(n) {
  if (n == null) return '–';
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return INT.format(n);
}

export function fmtSeconds(s) {
  if (s == null || Number.isNaN(s)) return '–';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace(/Z$/, ' UTC');
}

export const STATUS_TONE = {
  submitted: 'good', running: 'live', unfinished: 'muted', interrupted: 'muted',
  max_turns: 'warn', context_exceeded: 'warn', wall_clock: 'warn', reply_too_long: 'warn', error: 'bad',
};

export function statusPill(status) {
  const tone = STATUS_TONE[status] || 'muted';
  return h('span', { class: `pill pill-${tone}`, 'data-status': status }, String(status).replace(/_/g, ' '));
}

export function resolvedMark(resolved) {
  if (resolved === true) return h('span', { class: 'resolved resolved-yes', title: 'resolved' }, '✓ resolved');
  if (resolved === false) return h('span', { class: 'resolved resolved-no', title: 'not resolved' }, '✗ unresolved');
  return h('span', { class: 'resolved resolved-none', title: 'not evaluated' }, '–');
}

/** Light/dark theme: follows the system until the user picks one, then remembers it. */
export function setupTheme(button) {
  const KEY = 'cwm-viewer-theme';  // read before the first paint by theme.js
  button?.addEventListener('click', () => {
    const current = document.documentElement.dataset.theme
      || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
    const next = current === 'dark' ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    localStorage.setItem(KEY, next);
  });
}

/** True when a key event belongs to a text field (shortcuts must not steal typing). */
export function typingInto(event) {
  const t = event.target;
  return t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
}

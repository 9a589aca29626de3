// The run table: one row per trajectory file, sortable by any column, filtered by text and status.
// Sort and filter live in the URL's hash so a view can be shared or reloaded; the table refreshes
// itself every few seconds so running episodes move on their own.
import {
  h, clear, getJSON, fmtInt, fmtTokens, fmtSeconds, statusPill, resolvedMark, setupTheme, typingInto,
} from './common.js';

const COLUMNS = [
  { key: 'instance', label: 'Instance', type: 'text' },
  { key: 'status', label: 'Status', type: 'text' },
  { key: 'resolved', label: 'Resolved', type: 'bool' },
  { key: 'steps', label: 'Steps', type: 'num' },
  { key: 'total_tokens', label: 'Tokens', type: 'num' },
  { key: 'wall_s', label: 'Wall time', type: 'num' },
  { key: 'traces', label: 'Traces', type: 'num' },
  { key: 'model', label: 'Model', type: 'text' },
  { key: 'file', label: 'File', type: 'text' },
];
const REFRESH_MS = 4000;

const state = { rows: [], sort: 'instance', dir: 1, q: '', status: '', raw: '' };
const $ = (id) => document.getElementById(id);

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (COLUMNS.some((c) => c.key === p.get('sort'))) state.sort = p.get('sort');
  state.dir = p.get('dir') === 'desc' ? -1 : 1;
  state.q = p.get('q') || '';
  state.status = p.get('status') || '';
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.sort !== 'instance' || state.dir !== 1) { p.set('sort', state.sort); p.set('dir', state.dir > 0 ? 'asc' : 'desc'); }
  if (state.q) p.set('q', state.q);
  if (state.status) p.set('status', state.status);
  const hash = p.toString();
  history.replaceState(null, '', hash ? `#${hash}` : location.pathname + location.search);
}

/** Compare two rows by the current column; empty values always sink to the bottom. */
function compare(a, b) {
  const column = COLUMNS.find((c) => c.key === state.sort);
  const x = a[state.sort], y = b[state.sort];
  const ex = x == null || x === '', ey = y == null || y === '';
  if (ex || ey) return ex === ey ? tieBreak(a, b) : (ex ? 1 : -1);
  let order;
  if (column.type === 'num') order = x - y;
  else if (column.type === 'bool') order = Number(x) - Number(y);
  else order = String(x).localeCompare(String(y), undefined, { numeric: true, sensitivity: 'base' });
  return order ? order * state.dir : tieBreak(a, b);
}

function tieBreak(a, b) {
  return a.instance.localeCompare(b.instance) || a.file.localeCompare(b.file);
}

function matches(row) {
  if (state.status && row.status !== state.status) return false;
  if (!state.q) return true;
  const hay = `${row.instance} ${row.model} ${row.file} ${row.status} ${row.run_id}`.toLowerCase();
  return state.q.toLowerCase().split(/\s+/).filter(Boolean).every((word) => hay.includes(word));
}

function renderHead() {
  const head = clear($('head'));
  for (const column of COLUMNS) {
    const active = column.key === state.sort;
    const arrow = active ? (state.dir > 0 ? '▲' : '▼') : '';
    head.append(h('th', {
      class: `col-${column.type}${active ? ' sorted' : ''}`,
      'aria-sort': active ? (state.dir > 0 ? 'ascending' : 'descending') : 'none',
      'data-key': column.key,
    }, h('button', {
      type: 'button', class: 'sort', onclick: () => sortBy(column.key),
    }, column.label, h('span', { class: 'arrow', 'aria-hidden': 'true' }, arrow))));
  }
}

function sortBy(key) {
  if (state.sort === key) state.dir = -state.dir;
  else { state.sort = key; state.dir = COLUMNS.find((c) => c.key === key).type === 'text' ? 1 : -1; }
  writeHash();
  renderHead();
  renderBody();
}

function link(row) {
  return `/view?file=${encodeURIComponent(row.file)}`;
}

function renderRow(row) {
  const tr = h('tr', { 'data-file': row.file });
  tr.addEventListener('click', (event) => {
    if (event.target.closest('a') || getSelection().toString()) return;
    location.href = link(row);
  });
  tr.append(
    h('td', { class: 'col-text cell-instance' }, h('a', { href: link(row) }, row.instance),
      row.torn_tail ? h('span', { class: 'tag tag-warn', title: 'the file ends in a partial line' }, 'torn') : null),
    h('td', { class: 'col-text' }, statusPill(row.status)),
    h('td', { class: 'col-bool' }, resolvedMark(row.resolved)),
    h('td', { class: 'col-num' }, fmtInt(row.steps)),
    h('td', { class: 'col-num', title: fmtInt(row.total_tokens) }, fmtTokens(row.total_tokens)),
    h('td', { class: 'col-num' }, fmtSeconds(row.wall_s)),
    h('td', { class: 'col-num cell-traces', title: row.trace_summary || '' }, tracesCell(row)),
    h('td', { class: 'col-text cell-model' }, row.model || '–'),
    h('td', { class: 'col-text cell-file', title: row.file }, row.file),
  );
  return tr;
}

/** Test traces of the episode (`--trace-tests`): their count, opening the Traces tab. */
function tracesCell(row) {
  if (!row.traces_listed) return '–';
  return h('a', { href: `${link(row)}#tab=traces`, title: row.trace_summary }, fmtInt(row.traces || 0));
}

function renderBody() {
  const rows = state.rows.filter(matches).sort(compare);
  const body = $('body');
  body.replaceChildren(...rows.map(renderRow));
  $('count').textContent = rows.length === state.rows.length
    ? `${fmtInt(rows.length)} runs` : `${fmtInt(rows.length)} of ${fmtInt(state.rows.length)} runs`;
  const empty = $('empty');
  empty.hidden = rows.length > 0;
  empty.textContent = state.rows.length ? 'No run matches the filter.' : 'No *.traj.jsonl files under this path yet.';
}

function renderStatusOptions() {
  const select = $('status');
  const counts = new Map();
  for (const row of state.rows) counts.set(row.status, (counts.get(row.status) || 0) + 1);
  if (state.status && !counts.has(state.status)) counts.set(state.status, 0);
  const options = [h('option', { value: '' }, `All statuses`)];
  for (const [status, n] of [...counts].sort()) {
    options.push(h('option', { value: status }, `${status.replace(/_/g, ' ')} (${n})`));
  }
  select.replaceChildren(...options);
  select.value = state.status;
}

function renderStats() {
  const rows = state.rows;
  const evaluated = rows.filter((r) => r.resolved != null);
  const resolved = evaluated.filter((r) => r.resolved).length;
  const submitted = rows.filter((r) => r.status === 'submitted').length;
  const running = rows.filter((r) => r.status === 'running').length;
  const tokens = rows.reduce((sum, r) => sum + (r.total_tokens || 0), 0);
  const stat = (label, value, note, tone) => h('div', { class: `stat${tone ? ` stat-${tone}` : ''}` },
    h('div', { class: 'stat-value' }, value), h('div', { class: 'stat-label' }, label),
    note ? h('div', { class: 'stat-note' }, note) : null);
  $('stats').replaceChildren(
    stat('runs', fmtInt(rows.length)),
    stat('resolved', evaluated.length ? `${Math.round((100 * resolved) / evaluated.length)}%` : '–',
      evaluated.length ? `${resolved} of ${evaluated.length} evaluated` : 'none evaluated', 'good'),
    stat('submitted', fmtInt(submitted), rows.length ? `${Math.round((100 * submitted) / rows.length)}% of runs` : null),
    stat('running', fmtInt(running), running ? 'updating live' : null, running ? 'live' : null),
    stat('tokens', fmtTokens(tokens), 'prompt + completion'),
  );
}

async function refresh() {
  try {
    const data = await getJSON('/api/runs');
    const raw = JSON.stringify(data.rows);
    $('root').textContent = data.root;
    if (raw !== state.raw) {
      state.raw = raw;
      state.rows = data.rows;
      renderStats();
      renderStatusOptions();
      renderBody();
    }
    document.body.classList.remove('offline');
  } catch (error) {
    document.body.classList.add('offline');
    $('root').textContent = `cannot reach the viewer: ${error.message}`;
  }
}

function schedule() {
  setTimeout(async () => {
    if (document.visibilityState === 'visible') await refresh();
    schedule();
  }, REFRESH_MS);
}

async function main() {
  setupTheme($('theme'));
  readHash();
  const filter = $('filter');
  filter.value = state.q;
  const onFilter = () => {
    if (filter.value.trim() === state.q) return;
    state.q = filter.value.trim();
    writeHash();
    renderBody();
  };
  for (const type of ['input', 'change', 'search']) filter.addEventListener(type, onFilter);
  $('status').addEventListener('change', (e) => { state.status = e.target.value; writeHash(); renderBody(); });
  document.addEventListener('keydown', (event) => {
    if (event.key === '/' && !typingInto(event)) { event.preventDefault(); filter.focus(); filter.select(); }
    else if (event.key === 'Escape' && event.target === filter) { filter.value = ''; filter.dispatchEvent(new Event('input')); filter.blur(); }
  });
  renderHead();
  await refresh();
  window.__viewerReady = performance.now();
  document.body.dataset.ready = '1';
  schedule();
}

main();

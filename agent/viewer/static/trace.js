// The trace stepper: a repository test's real execution (`agent solve --trace-tests`), frame by frame,
// over its source lines with the frame's locals. The server resolves `..` (unchanged values) and sends
// each value once; this module only draws. Everything from a trace reaches the DOM as text (h(), span()).
import { h, fill, span, getJSON, fmtInt, fmtSeconds } from './common.js';

const OUTCOME_TONE = { passed: 'good', failed: 'bad', error: 'bad', unknown: 'warn' };
const EVENT_LABEL = { call: 'call', line: 'line', return: 'return', exception: 'exception' };

/**
 * The Traces tab. `traceUrl(i)` is the JSON route of the i-th record of the ending's `test_traces`;
 * `onChange()` is called when the selection or frame changes (the page rewrites its URL hash).
 */
export function createTracePanel(panel, { traceUrl, onChange }) {
  const st = {
    records: [], index: -1, doc: null, cur: 0, file: null, rows: new Map(), curRow: null,
    cache: new Map(), built: false, wantFrame: 0, request: 0,
  };
  const el = {};

  function build() {
    el.before = h('button', { type: 'button', class: 'seg-button', 'data-phase': 'before', title: 'Before the episode (b)' }, 'Before');
    el.after = h('button', { type: 'button', class: 'seg-button', 'data-phase': 'after', title: 'After the episode (b)' }, 'After');
    el.select = h('select', { id: 'trace-test', 'aria-label': 'Test' });
    el.summary = h('span', { id: 'trace-summary', class: 'trace-summary' });
    el.prev = h('button', { type: 'button', class: 'icon-button', id: 'trace-prev', title: 'Previous frame (k, ←)' }, '‹');
    el.next = h('button', { type: 'button', class: 'icon-button', id: 'trace-next', title: 'Next frame (j, →)' }, '›');
    el.position = h('span', { id: 'trace-position', class: 'position' }, '–');
    el.scrub = h('input', { type: 'range', id: 'trace-scrub', min: '0', max: '0', value: '0', 'aria-label': 'Frame' });
    el.fileName = h('span', { id: 'trace-file', class: 'card-title trace-file' });
    el.fileNote = h('span', { class: 'meta', id: 'trace-file-note' });
    el.code = h('pre', { class: 'code code-rows trace-code', id: 'trace-code' });
    el.frame = h('div', { id: 'trace-frame', class: 'facts' });
    el.locals = h('div', { id: 'trace-locals' });
    el.message = h('div', { id: 'trace-message' });
    el.output = h('details', { class: 'card fold', id: 'trace-output' });
    el.body = h('div', { class: 'trace-grid', id: 'trace-body' },
      h('section', { class: 'card trace-source' }, h('header', { class: 'card-head' }, el.fileName, el.fileNote), el.code),
      h('aside', { class: 'trace-side' }, el.frame, el.locals));
    fill(panel,
      h('div', { class: 'trace-bar' },
        h('span', { class: 'seg', role: 'group', 'aria-label': 'Phase' }, el.before, el.after),
        el.select, el.summary, h('span', { class: 'tabs-spacer' }),
        h('span', { class: 'stepper' }, el.prev, el.position, el.next)),
      el.scrub, el.message, el.body, el.output);
    el.before.addEventListener('click', () => choosePhase('before'));
    el.after.addEventListener('click', () => choosePhase('after'));
    el.select.addEventListener('change', () => {
      chooseNode(el.select.value);
      el.select.blur();  // the keyboard steps frames again at once
    });
    el.prev.addEventListener('click', () => go(st.cur - 1));
    el.next.addEventListener('click', () => go(st.cur + 1));
    el.scrub.addEventListener('input', () => go(Number(el.scrub.value)));
    st.built = true;
  }

  // -- which trace ----------------------------------------------------------------------------

  function nodes() {
    return [...new Set(st.records.map((r) => r.node_id))];
  }

  function find(phase, node) {
    return st.records.findIndex((r) => r.phase === phase && r.node_id === node);
  }

  /** The ending's records; called once the trajectory (or its ending, for a live run) is known. */
  function setRecords(records) {
    const next = records || [];
    if (JSON.stringify(next) !== JSON.stringify(st.records)) {  // a rewritten file: forget what was loaded
      st.cache.clear();
      st.index = -1;
      st.doc = null;
      st.request += 1;
    }
    st.records = next;
    if (st.built) renderChoice();
  }

  function renderChoice() {
    const record = st.records[st.index];
    fill(el.select, ...nodes().map((node) => h('option', { value: node }, node)));
    if (record) el.select.value = record.node_id;
    for (const button of [el.before, el.after]) {
      const phase = button.dataset.phase;
      button.disabled = !record || find(phase, record.node_id) < 0;
      button.setAttribute('aria-pressed', String(!!record && record.phase === phase));
    }
  }

  function choosePhase(phase) {
    const record = st.records[st.index];
    if (!record) return;
    const index = find(phase, record.node_id);
    if (index >= 0 && index !== st.index) select(index, 0);
  }

  function chooseNode(node) {
    const record = st.records[st.index];
    let index = find(record ? record.phase : 'before', node);
    if (index < 0) index = st.records.findIndex((r) => r.node_id === node);
    if (index >= 0) select(index, 0);
  }

  /** Show the Traces tab: the trace asked for (or the first), at `frame` (0-based). */
  function open(index = null, frame = null) {
    if (!st.built) build();
    const wanted = index != null && st.records[index] ? index : (st.index >= 0 ? st.index : 0);
    if (!st.records.length) {
      fill(el.message, h('div', { class: 'placeholder' }, 'This trajectory has no test traces.'));
      el.body.hidden = true;
      return;
    }
    if (wanted !== st.index || frame != null) select(wanted, frame ?? st.cur);
  }

  async function select(index, frame) {
    st.index = index;
    st.doc = null;
    st.wantFrame = frame || 0;
    renderChoice();
    const record = st.records[index];
    renderSummary(record);
    el.output.hidden = true;
    if (!record.path) {
      showMessage(errorBox(`No trace of ${record.node_id} (${record.phase}): ${record.error || 'not recorded'}`));
      onChange();
      return;
    }
    showMessage(h('div', { class: 'placeholder' }, 'Loading trace…'));
    const request = ++st.request;
    let doc = st.cache.get(index);
    try {
      if (!doc) {
        doc = await getJSON(traceUrl(index));
        st.cache.set(index, doc);
      }
    } catch (error) {
      if (request === st.request) showMessage(errorBox(`Could not load the trace: ${error.message}`));
      return;
    }
    if (request !== st.request) return;  // another trace was chosen meanwhile
    st.doc = doc;
    st.file = null;
    renderOutput(doc);
    if (!doc.frames.length) {
      showMessage(h('div', { class: 'placeholder' }, `The trace has no frames (${doc.end.status}).`));
      onChange();
      return;
    }
    fill(el.message);
    el.body.hidden = false;
    el.scrub.hidden = false;
    el.scrub.max = String(doc.frames.length - 1);
    go(st.wantFrame);
  }

  function errorBox(message) {
    return h('div', { class: 'placeholder error-text', id: 'trace-error' }, message);
  }

  function showMessage(node) {
    fill(el.message, node);
    el.body.hidden = true;
    el.scrub.hidden = true;
    el.position.textContent = '–';
  }

  function renderSummary(record) {
    const tags = [
      h('span', { class: `tag tag-${OUTCOME_TONE[record.outcome] || 'warn'}`, id: 'trace-outcome' }, record.outcome),
      record.status ? h('span', { class: 'tag', title: 'how the trace ended' }, record.status) : null,
      h('span', { class: 'tag' }, `${fmtInt(record.frames)} frames`),
      record.exit_code != null ? h('span', { class: 'tag', title: "pytest's exit code" }, `exit ${record.exit_code}`) : null,
      record.wall_s ? h('span', { class: 'meta' }, fmtSeconds(record.wall_s)) : null,
    ];
    fill(el.summary, tags, record.error && record.path ? h('span', { class: 'trace-warning' }, record.error) : null);
  }

  function renderOutput(doc) {
    el.output.hidden = !doc.output;
    fill(el.output, h('summary', null, h('span', { class: 'summary-title' }, 'Test output'),
      h('span', { class: 'meta' }, "pytest's report, as the traced run printed it")),
    h('pre', { class: 'code' }, doc.output));
  }

  // -- frames ----------------------------------------------------------------------------------

  function go(position) {
    const doc = st.doc;
    if (!doc || !doc.frames.length) return;
    st.cur = Math.max(0, Math.min(doc.frames.length - 1, position));
    const frame = doc.frames[st.cur];
    if (frame.file !== st.file) renderSource(frame.file);
    highlight(frame);
    renderFrame(frame);
    el.position.textContent = `frame ${st.cur + 1} / ${doc.frames.length}`;
    el.prev.disabled = st.cur <= 0;
    el.next.disabled = st.cur >= doc.frames.length - 1;
    el.scrub.value = String(st.cur);
    onChange();
  }

  function renderSource(file) {
    const info = st.doc.files[file] || { complete: false, lines: [] };
    st.file = file;
    st.rows = new Map();
    st.curRow = null;
    const rows = [];
    let previous = 0;
    for (const [n, text] of info.lines) {
      if (previous && n > previous + 1) rows.push(h('div', { class: 'line gap' }, span('gutter lineno', ''), span('src', '⋯')));
      const row = h('div', { class: 'line' }, span('gutter lineno', String(n)), span('src', text));
      st.rows.set(n, row);
      rows.push(row);
      previous = n;
    }
    fill(el.code, rows);
    el.fileName.textContent = file;
    el.fileNote.textContent = info.complete ? '' : 'only the lines this trace ran (the file could not be read from the sandbox)';
  }

  function highlight(frame) {
    st.curRow?.classList.remove('cur', 'ev-call', 'ev-line', 'ev-return', 'ev-exception');
    const row = st.rows.get(frame.lineno);
    st.curRow = row || null;
    if (!row) return;
    row.classList.add('cur', `ev-${frame.event}`);
    // Scroll the code box only (never the page): keep the line in the middle third.
    const box = el.code;
    const top = row.offsetTop - box.offsetTop;
    if (top < box.scrollTop + box.clientHeight / 3 || top > box.scrollTop + (box.clientHeight * 2) / 3) {
      box.scrollTop = Math.max(0, top - box.clientHeight / 2);
    }
  }

  function renderFrame(frame) {
    const doc = st.doc;
    fill(el.frame, h('div', { class: 'trace-frame-head' },
      h('span', { class: `badge ev-badge ev-${frame.event}`, id: 'trace-event' }, EVENT_LABEL[frame.event] || frame.event),
      h('span', { class: 'trace-function' }, frame.function),
      frame.unwinding ? h('span', { class: 'tag tag-warn', title: 'the scope is left by an exception' }, 'unwinding') : null),
    h('dl', null,
      h('dt', null, 'Line'), h('dd', { class: 'mono' }, `${frame.file}:${frame.lineno}`),
      h('dt', null, 'Depth'), h('dd', null, String(frame.depth)),
      h('dt', null, 'Scope'), h('dd', null, String(frame.scope))));
    if (frame.locals == null) {
      const label = frame.event === 'exception' ? 'Raised' : 'Returned';
      fill(el.locals, h('section', { class: 'card' }, h('header', { class: 'card-head' }, h('span', { class: 'card-title' }, label)),
        h('pre', { class: 'code trace-value', id: 'trace-arg' }, frame.arg ?? '')));
      return;
    }
    const rows = frame.locals.map(([name, value, changed]) => h('tr', { class: changed ? 'changed' : null, dataset: { name } },
      h('th', { scope: 'row' }, name), h('td', null, doc.values[value])));
    fill(el.locals, h('section', { class: 'card' },
      h('header', { class: 'card-head' }, h('span', { class: 'card-title' }, 'Locals'),
        h('span', { class: 'meta' }, 'highlighted: new or changed in this frame')),
      rows.length ? h('table', { class: 'locals' }, h('tbody', null, rows)) : h('div', { class: 'note trace-none' }, 'no locals')));
  }

  // -- keys and URL ----------------------------------------------------------------------------

  /** Handle a key while the Traces tab is shown; true if it was ours. */
  function key(event) {
    if (event.key === 'b') {
      const record = st.records[st.index];
      if (record) choosePhase(record.phase === 'before' ? 'after' : 'before');
      return true;
    }
    if (!st.doc) return false;
    switch (event.key) {
      case 'j': case 'ArrowRight': go(st.cur + 1); return true;
      case 'k': case 'ArrowLeft': go(st.cur - 1); return true;
      case 'Home': go(0); return true;
      case 'End': go(st.doc.frames.length - 1); return true;
      default: return false;
    }
  }

  function hashParams() {
    return st.index >= 0 ? [['trace', String(st.index)], ['frame', String(st.cur + 1)]] : [];
  }

  return { setRecords, open, key, hashParams, get count() { return st.records.length; } };
}

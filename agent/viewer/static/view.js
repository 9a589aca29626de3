// The trajectory player: one step at a time, a timeline cell per step, two charts, and the task and
// result beside them. Only the current step is rendered in full, so a thousand-step episode opens as
// fast as a ten-step one. While the file has no Ending the page polls for appended steps.
import {
  h, fill, span, getJSON, fmtInt, fmtTokens, fmtSeconds, fmtTime, statusPill, resolvedMark, setupTheme, typingInto,
} from './common.js';
import {
  bashBlock, editBlock, createBlock, codeBlock, diffBlock, diffStatBlock, observationBlock, splitObservation,
} from './highlight.js';
import { createCharts } from './chart.js';
import { createTracePanel } from './trace.js';

const POLL_MS = 1000;
const TOOLS = new Set(['bash', 'edit', 'create', 'submit']);
const TABS = ['step', 'task', 'result', 'traces'];
const $ = (id) => document.getElementById(id);
const file = new URLSearchParams(location.search).get('file') || '';

const state = {
  header: null, steps: [], ending: null, generation: 0, cur: -1, tab: 'step',
  reasoningOpen: false, live: false, torn: false, problems: [], ageS: 0, offline: false,
};
let charts;
let traces;

const api = (path, extra = '') => `/api/${path}?file=${encodeURIComponent(file)}${extra}`;

// ---------------------------------------------------------------------------------------------
// What a step is, for colours and labels.

function kindOf(step) {
  if (step.tool_call) return TOOLS.has(step.tool_call.name) ? step.tool_call.name : 'other';
  return step.observation == null ? 'final' : 'error';
}

function cellClass(step) {
  let cls = `cell k-${kindOf(step)}`;
  if (step.timed_out || step.overflowed) cls += ' f-timeout';
  if (step.session_died) cls += ' f-died';
  if (step.exit_code != null && step.exit_code !== 0) cls += ' f-fail';
  return cls;
}

function cellTitle(step, i) {
  const parts = [`${i + 1}`, kindOf(step) === 'error' ? 'format error' : kindOf(step)];
  if (step.exit_code != null) parts.push(`exit ${step.exit_code}`);
  if (step.timed_out) parts.push('timed out');
  if (step.overflowed) parts.push('overflowed');
  if (step.session_died) parts.push('session died');
  return parts.join(' · ');
}

/** The reply's reasoning (before `</think>`) and answer (after it). */
function splitReply(reply) {
  const at = reply.indexOf('</think>');
  if (at < 0) return { reasoning: '', answer: reply, hasThink: false };
  return { reasoning: reply.slice(0, at).replace(/\s+$/, ''), answer: reply.slice(at + 8), hasThink: true };
}

/** Text of the answer around the tool call, which is shown separately from the call itself. */
function proseAround(answer) {
  const open = answer.indexOf('<tool:');
  const close = answer.lastIndexOf('</tool>');
  if (open < 0 || close < open) return answer.trim();
  return `${answer.slice(0, open)}${answer.slice(close + 7)}`.trim();
}

function headline(step) {
  const kind = kindOf(step);
  if (kind === 'final') return 'Final response';
  if (kind === 'error') return 'Format error';
  const body = step.tool_call.body;
  const first = body.split('\n', 1)[0];
  return first.length > 120 ? `${first.slice(0, 117)}…` : first;
}

// ---------------------------------------------------------------------------------------------
// The current step.

function toolBadge(kind) {
  return h('span', { class: `badge b-${kind}` }, kind === 'error' ? 'format error' : kind);
}

function card(cls, title, extra, body) {
  return h('section', { class: `card ${cls}` }, h('header', { class: 'card-head' }, h('span', { class: 'card-title' }, title), extra), body);
}

function copyButton(text) {
  const button = h('button', { type: 'button', class: 'ghost small', title: 'Copy to clipboard' }, 'copy');
  button.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = 'copied'; } catch (_) { button.textContent = 'copy failed'; }
    setTimeout(() => { button.textContent = 'copy'; }, 1200);
  });
  return button;
}

function toolBody(call) {
  if (call.name === 'bash') return bashBlock(call.body);
  if (call.name === 'edit') return editBlock(call.body);
  if (call.name === 'create') return createBlock(call.body);
  return codeBlock(call.body);
}

function reasoningBlock(reasoning) {
  const lines = reasoning ? reasoning.split('\n').length : 0;
  const details = h('details', { class: 'reasoning', open: state.reasoningOpen },
    h('summary', null, h('span', { class: 'summary-title' }, 'Reasoning'),
      h('span', { class: 'meta' }, `${fmtInt(lines)} line${lines === 1 ? '' : 's'} · ${fmtInt(reasoning.length)} chars`),
      h('kbd', { class: 'hint' }, 'r')),
    h('div', { class: 'prose' }, reasoning));
  details.addEventListener('toggle', () => { state.reasoningOpen = details.open; });
  return details;
}

function flagTags(step) {
  return [
    step.exit_code != null ? h('span', { class: `tag ${step.exit_code === 0 ? 'tag-good' : 'tag-bad'}` }, `exit ${step.exit_code}`) : null,
    step.timed_out ? h('span', { class: 'tag tag-timeout' }, 'timed out') : null,
    step.overflowed ? h('span', { class: 'tag tag-timeout' }, 'overflowed') : null,
    step.session_died ? h('span', { class: 'tag tag-bad' }, 'session died') : null,
    step.finish_reason && step.finish_reason !== 'stop' ? h('span', { class: 'tag tag-warn' }, `finish: ${step.finish_reason}`) : null,
  ];
}

function promptDeltaBlock(position) {
  const body = h('div', { class: 'lazy' }, h('span', { class: 'meta' }, 'Loading…'));
  const details = h('details', { class: 'exact' }, h('summary', null, h('span', { class: 'summary-title' }, 'Exact text'),
    h('span', { class: 'meta' }, 'prompt delta sent before this reply, raw tool output')), body);
  details.addEventListener('toggle', async () => {
    if (!details.open || details.dataset.loaded) return;
    details.dataset.loaded = '1';
    try {
      const full = await getJSON(api('step', `&index=${position}`));
      fill(body, 
        h('div', { class: 'sublabel' }, 'Prompt delta'), codeBlock(full.prompt_delta || '(empty)', 'exact-text'),
        full.output != null ? [h('div', { class: 'sublabel' }, 'Raw tool output'), codeBlock(full.output, 'exact-text')] : null,
      );
    } catch (error) {
      fill(body, h('span', { class: 'error-text' }, `Could not load: ${error.message}`));
      delete details.dataset.loaded;
    }
  });
  return details;
}

function renderStep() {
  const main = $('step');
  const facts = $('facts');
  if (state.cur < 0) {
    fill(main, h('div', { class: 'placeholder' }, state.live ? 'Waiting for the first step…' : 'This trajectory has no steps.'));
    fill(facts);
    return;
  }
  const step = state.steps[state.cur];
  const kind = kindOf(step);
  const { reasoning, answer, hasThink } = splitReply(step.raw_reply || '');
  const prose = step.tool_call ? proseAround(answer) : answer.trim();
  fill(main, 
    h('div', { class: 'step-title' }, toolBadge(kind), h('h2', { class: 'headline' }, headline(step)), flagTags(step)),
    hasThink ? reasoningBlock(reasoning) : h('div', { class: 'note' }, 'No </think> in this reply: the whole reply is shown below.'),
    prose ? card(kind === 'final' ? 'final' : 'message', kind === 'final' ? 'Final response' : 'Reply text', null, h('div', { class: 'prose' }, prose)) : null,
    step.tool_call ? card(`tool tool-${kind}`, h('span', null, 'Tool call ', toolBadge(kind)), copyButton(step.tool_call.body), toolBody(step.tool_call)) : null,
    step.parse_error && step.observation != null ? card('parse-error', 'Parse error', null, h('div', { class: 'error-text' }, step.parse_error)) : null,
    step.observation != null ? card('observation', 'Observation',
      h('span', { class: 'card-extra' }, h('span', { class: 'tag' }, step.observation_role || 'tool'), flagTags(step)),
      observationBlock(step.observation)) : null,
    step.submission ? card('submission', 'Submitted patch', copyButton(step.submission), diffBlock(step.submission)) : null,
    promptDeltaBlock(state.cur),
  );
  fill(facts, renderFacts(step));
}

function fact(label, value, cls) {
  return value == null || value === '' ? null : [h('dt', null, label), h('dd', { class: cls || null }, value)];
}

function renderFacts(step) {
  const budget = step.observation ? splitObservation(step.observation).budget : null;
  const total = (step.model_latency_s || 0) + (step.command_duration_s || 0);
  return h('div', { class: 'facts' },
    h('dl', null,
      fact('Step', `${step.index} of ${state.steps.length}${state.ending ? '' : '+'}`),
      fact('Tool', step.tool_call ? step.tool_call.name : (kindOf(step) === 'final' ? 'none (final)' : 'none')),
      fact('Exit code', step.exit_code != null ? String(step.exit_code) : null, step.exit_code ? 'bad' : 'good'),
      fact('Finish', step.finish_reason),
      fact('Model', fmtSeconds(step.model_latency_s)),
      fact('Command', step.command_duration_s != null ? fmtSeconds(step.command_duration_s) : null),
      fact('Step time', total ? fmtSeconds(total) : null),
      fact('Context', step.prompt_tokens != null ? `${fmtInt(step.prompt_tokens)} tok` : null),
      fact('Output', step.completion_tokens != null ? `${fmtInt(step.completion_tokens)} tok` : null),
      fact('Cached', step.cached_tokens != null ? `${fmtInt(step.cached_tokens)} tok` : null),
      fact('Observation', step.observation_tokens != null ? `${fmtInt(step.observation_tokens)} tok` : null),
      fact('Budget left', budget ? `${budget.turns ?? '–'} turns · ${fmtTokens(budget.tokens)} tok` : null),
      fact('cwd', step.cwd, 'mono'),
      fact('Started', fmtTime(step.started_at)),
    ),
    step.diff_stat ? [h('div', { class: 'sublabel' }, 'Diff after this step'), diffStatBlock(step.diff_stat)] : null,
  );
}

// ---------------------------------------------------------------------------------------------
// Navigation.

function go(index, { fromKey = false, keepTab = false } = {}) {
  const n = state.steps.length;
  if (!n) return;
  const next = Math.max(0, Math.min(n - 1, index));
  const timeline = $('timeline');
  timeline.children[state.cur]?.classList.remove('cur');
  state.cur = next;
  const cell = timeline.children[next];
  cell?.classList.add('cur');
  cell?.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  charts.setCursor(next);
  if (state.tab !== 'step' && !keepTab) showTab('step');
  renderStep();
  renderPosition();
  if (fromKey) {
    const top = $('tabs').getBoundingClientRect().top;
    if (top < 0) $('tabs').scrollIntoView({ block: 'start' });
  }
}

function renderPosition() {
  const n = state.steps.length;
  $('position').textContent = n ? `${state.cur + 1} / ${n}${state.live ? '+' : ''}` : '–';
  $('prev').disabled = state.cur <= 0;
  $('next').disabled = state.cur >= n - 1;
  writeHash();
  document.title = `${state.header?.instance_id || 'Trajectory'}${n ? ` · ${state.cur + 1}/${n}` : ''} · cwm-runner`;
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.cur >= 0) p.set('step', String(state.cur + 1));
  if (state.tab !== 'step') p.set('tab', state.tab);
  if (state.tab === 'traces' && traces) for (const [key, value] of traces.hashParams()) p.set(key, value);
  history.replaceState(null, '', `${location.pathname}${location.search}#${p}`);
}

function showTab(name, { trace = null, frame = null } = {}) {
  if (name === 'traces' && !traces.count) name = 'step';
  state.tab = name;
  for (const button of $('tabs').querySelectorAll('[role=tab]')) button.setAttribute('aria-selected', String(button.dataset.tab === name));
  for (const panel of TABS) $(`panel-${panel}`).hidden = panel !== name;
  $('stepper').hidden = name === 'traces';  // the Traces tab has its own frame stepper
  if (name === 'traces') traces.open(trace, frame);
  writeHash();
}

/** The Traces tab exists once the ending lists test traces (`--trace-tests` of `agent solve` or `agent batch`). */
function renderTracesTab() {
  const records = state.ending?.test_traces || [];
  traces.setRecords(records);
  $('tab-traces').hidden = !records.length;
  $('trace-keys').hidden = !records.length;
}

/** The tab, trace and frame a URL hash asks for. */
function tabFromHash(wanted) {
  const number = (key) => (wanted.get(key) ? Number(wanted.get(key)) : null);
  const frame = number('frame');
  return [TABS.includes(wanted.get('tab')) ? wanted.get('tab') : 'step', { trace: number('trace'), frame: frame ? frame - 1 : null }];
}

function onKey(event) {
  if (typingInto(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  if (state.tab === 'traces' && traces.key(event)) {
    event.preventDefault();
    return;
  }
  switch (event.key) {
    case 'j': case 'ArrowRight': go(state.cur + 1, { fromKey: true }); break;
    case 'k': case 'ArrowLeft': go(state.cur - 1, { fromKey: true }); break;
    case 'Home': go(0, { fromKey: true }); break;
    case 'End': go(state.steps.length - 1, { fromKey: true }); break;
    case 'r': {
      state.reasoningOpen = !state.reasoningOpen;
      const details = $('step').querySelector('details.reasoning');
      if (details) details.open = state.reasoningOpen;
      break;
    }
    case '1': showTab('step'); break;
    case '2': showTab('task'); break;
    case '3': showTab('result'); break;
    case '4': showTab('traces'); break;
    default: return;
  }
  event.preventDefault();
}

// ---------------------------------------------------------------------------------------------
// Timeline, charts, header, task and result.

function timelineCell(step, i) {
  const el = document.createElement('span');
  el.className = cellClass(step);
  el.dataset.i = String(i);
  el.title = cellTitle(step, i);
  return el;
}

function renderTimeline() {
  $('timeline').replaceChildren(...state.steps.map(timelineCell));
  sizeTimeline();
  charts.update(state.steps);
}

/** One row of cells as wide as fits (at most 30 px); when they would get narrower than 8 px, rows of
 *  8 px cells wrap instead. Set through CSSOM (allowed by the CSP, unlike style attributes). */
function sizeTimeline() {
  const timeline = $('timeline');
  const n = Math.max(1, state.steps.length);
  const room = timeline.clientWidth - 6;
  const fit = (gap) => Math.min(30, Math.floor((room + gap) / n) - gap);
  let gap = 3;
  let width = fit(gap);
  if (width < 10) { gap = 2; width = fit(gap); }
  const dense = width < 10;
  timeline.classList.toggle('dense', dense);
  timeline.style.setProperty('--cell-w', `${width < 6 ? 8 : width}px`);
  timeline.style.setProperty('--cell-gap', `${gap}px`);
}

function renderLegend() {
  const key = (cls, label) => h('span', { class: 'legend-item' }, h('span', { class: `swatch ${cls}` }), label);
  fill($('legend'), 
    key('k-bash', 'bash'), key('k-edit', 'edit'), key('k-create', 'create'), key('k-submit', 'submit'),
    key('k-error', 'format error'), key('f-timeout', 'timeout / overflow'), key('f-fail', 'non-zero exit'), key('k-final', 'final'),
  );
}

function hover(index) {
  const readout = $('readout');
  if (index == null || !state.steps[index]) { readout.textContent = ''; return; }
  const s = state.steps[index];
  readout.textContent = `step ${index + 1} · ${kindOf(s)} · ${fmtInt(s.completion_tokens)} out / ${fmtInt(s.prompt_tokens)} context tok · `
    + `${fmtSeconds(s.model_latency_s)} model${s.command_duration_s != null ? ` + ${fmtSeconds(s.command_duration_s)} command` : ''}`;
}

function totals() {
  const e = state.ending;
  let tokens = state.steps.reduce((sum, s) => sum + (s.prompt_tokens || 0) + (s.completion_tokens || 0), 0);
  if (e && (e.total_prompt_tokens || e.total_completion_tokens)) tokens = e.total_prompt_tokens + e.total_completion_tokens;
  const last = state.steps[state.steps.length - 1];
  const end = e ? e.ended_at : last && (last.ended_at || last.started_at);
  const wall = state.header && end ? (new Date(end) - new Date(state.header.started_at)) / 1000 : null;
  return { tokens, wall };
}

function renderHeader() {
  const hd = state.header;
  $('instance').textContent = hd ? hd.instance_id : (file || 'no file');
  const { tokens, wall } = totals();
  const bits = hd ? [hd.model.name || hd.model.kind, hd.run_id, fmtTime(hd.started_at)] : [];
  bits.push(`${fmtInt(state.steps.length)} steps`, `${fmtTokens(tokens)} tokens`, fmtSeconds(wall));
  $('meta').textContent = bits.filter(Boolean).join('  ·  ');
  const status = $('status');
  if (state.ending) {
    fill(status, statusPill(state.ending.status), state.ending.evaluation ? resolvedMark(state.ending.evaluation.resolved) : null);
  } else if (state.live && state.ageS < 900) {
    fill(status, h('span', { class: 'pill pill-live', 'data-status': 'running' }, h('span', { class: 'dot' }), 'live'));
  } else {
    fill(status, h('span', { class: 'pill pill-muted', 'data-status': 'unfinished', title: 'no ending record yet' }, 'no ending'));
  }
}

function renderBanner() {
  const messages = [];
  if (state.offline) messages.push('Lost contact with the viewer server; retrying…');
  if (state.torn) messages.push('The file ends in a partial line (a step being written, or a killed run); it is left out.');
  for (const p of state.problems) messages.push(`Unreadable line skipped — ${p}`);
  const banner = $('banner');
  banner.hidden = !messages.length;
  fill(banner, ...messages.map((m) => h('div', null, m)));
}

function section(title, ...body) {
  return h('section', { class: 'card' }, h('header', { class: 'card-head' }, h('span', { class: 'card-title' }, title)), ...body);
}

function renderTask() {
  const hd = state.header;
  const panel = $('panel-task');
  if (!hd) { fill(panel, h('div', { class: 'placeholder' }, 'No header yet.')); return; }
  const m = hd.model, p = hd.protocol;
  const rows = [
    ['Instance', hd.instance_id], ['Run', hd.run_id], ['Repository', hd.repo], ['Commit', hd.commit],
    ['Image', [hd.image, hd.image_digest].filter(Boolean).join(' @ ')], ['Sandbox', `${hd.sandbox_backend} · ${hd.workdir}`],
    ['Model', [m.name, m.kind, m.url].filter(Boolean).join(' · ')],
    ['Sampling', `temperature ${m.temperature ?? '–'} · top_p ${m.top_p ?? '–'} · max tokens ${m.max_tokens ?? '–'}${m.constrained ? ' · constrained' : ''}`],
    ['Protocol', `${p.max_turns} turns · ${fmtInt(p.context_size)} context · ${p.timeout_s} s timeout · tools ${p.tools.join(', ')}`],
    ['Runner', hd.runner_version], ['Started', fmtTime(hd.started_at)], ['File', file],
  ];
  fill(panel, 
    section('Issue', h('div', { class: 'prose' }, hd.issue || '(no issue text)')),
    section('Run', h('dl', { class: 'kv' }, rows.filter(([, v]) => v).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]))),
    h('details', { class: 'card fold' }, h('summary', null, h('span', { class: 'summary-title' }, 'System prompt'),
      h('span', { class: 'meta' }, `${fmtInt(hd.system_prompt.length)} chars`)), codeBlock(hd.system_prompt, 'prompt')),
    h('details', { class: 'card fold' }, h('summary', null, h('span', { class: 'summary-title' }, 'User prompt'),
      h('span', { class: 'meta' }, `${fmtInt(hd.user_prompt.length)} chars`)), codeBlock(hd.user_prompt, 'prompt')),
  );
}

function testList(title, tests) {
  const entries = Object.entries(tests || {}).sort((a, b) => Number(a[1]) - Number(b[1]) || a[0].localeCompare(b[0]));
  if (!entries.length) return null;
  const passed = entries.filter(([, ok]) => ok).length;
  return h('div', { class: 'tests' }, h('div', { class: 'sublabel' }, `${title} · ${passed}/${entries.length} pass`),
    h('ul', null, entries.map(([name, ok]) => h('li', { class: ok ? 'pass' : 'fail' }, span('mark', ok ? '✓' : '✗'), name))));
}

function renderResult() {
  const e = state.ending;
  const panel = $('panel-result');
  if (!e) {
    fill(panel, h('div', { class: 'placeholder' }, state.live ? 'The episode is still running; its result appears here when it ends.' : 'This trajectory has no ending record.'));
    return;
  }
  const { tokens, wall } = totals();
  const ev = e.evaluation;
  fill(panel, 
    section('Ending', h('div', { class: 'ending' }, statusPill(e.status), ev ? resolvedMark(ev.resolved) : null,
      h('span', { class: 'ending-reason' }, e.reason || '')),
    h('dl', { class: 'kv' },
      [h('dt', null, 'Steps'), h('dd', null, fmtInt(e.steps))],
      [h('dt', null, 'Tokens'), h('dd', null, `${fmtInt(tokens)} (${fmtInt(e.total_prompt_tokens)} prompt + ${fmtInt(e.total_completion_tokens)} completion)`)],
      [h('dt', null, 'Wall time'), h('dd', null, fmtSeconds(wall))],
      [h('dt', null, 'Ended'), h('dd', null, fmtTime(e.ended_at))])),
    ev ? section('Evaluation', testList('FAIL_TO_PASS', ev.fail_to_pass), testList('PASS_TO_PASS', ev.pass_to_pass),
      ev.log ? h('details', { class: 'fold-inline' }, h('summary', null, 'Test log'), codeBlock(ev.log)) : null) : null,
    e.final_response ? section('Final response', h('div', { class: 'prose' }, e.final_response)) : null,
    e.submission ? card('submission', 'Submission patch', copyButton(e.submission), diffBlock(e.submission)) : null,
    e.sandbox_diff ? card('sandbox-diff', 'Sandbox diff', h('span', { class: 'card-extra' },
      e.sandbox_diff === e.submission ? h('span', { class: 'tag' }, 'same as submission') : null, copyButton(e.sandbox_diff)),
    diffBlock(e.sandbox_diff)) : null,
    !e.submission && !e.sandbox_diff ? h('div', { class: 'placeholder' }, 'No patch was submitted.') : null,
  );
}

// ---------------------------------------------------------------------------------------------
// Loading and live updates.

function addSteps(steps) {
  const follow = state.cur === state.steps.length - 1;
  const timeline = $('timeline');
  const start = state.steps.length;
  state.steps.push(...steps);
  timeline.append(...steps.map((s, k) => timelineCell(s, start + k)));
  sizeTimeline();
  charts.update(state.steps);
  if (follow) go(state.steps.length - 1, { keepTab: true });  // a live page follows, but never switches tabs
  else { renderPosition(); charts.setCursor(state.cur); }
  renderHeader();
}

function applyMeta(doc) {
  state.torn = doc.torn_tail;
  state.problems = doc.problems || [];
  state.ageS = doc.age_s || 0;
}

async function load() {
  const doc = await getJSON(api('trajectory'));
  state.header = doc.header;
  state.steps = doc.steps;
  state.ending = doc.ending;
  state.generation = doc.generation;
  state.live = !doc.ending;
  applyMeta(doc);
  renderTimeline();
  const wanted = new URLSearchParams(location.hash.slice(1));
  const fromHash = Number(wanted.get('step'));
  state.cur = -1;
  renderHeader();
  if (state.steps.length) go(fromHash ? fromHash - 1 : (state.live ? state.steps.length - 1 : 0));
  else { renderStep(); renderPosition(); }
  renderBanner();
  renderTracesTab();
  showTab(...tabFromHash(wanted));
  whenIdle(() => { renderTask(); renderResult(); });
}

function whenIdle(fn) {
  if (window.requestIdleCallback) requestIdleCallback(fn, { timeout: 300 }); else setTimeout(fn, 0);
}

async function poll() {
  try {
    if (!state.header) {
      await load();
    } else {
      const doc = await getJSON(api('steps', `&since=${state.steps.length}`));
      if (doc.generation !== state.generation) {
        await load();
      } else {
        applyMeta(doc);
        if (doc.steps.length) addSteps(doc.steps);
        if (doc.ending) {
          state.ending = doc.ending;
          state.live = false;
          renderTracesTab();
          renderPosition();
          renderHeader();
          renderResult();
          if (state.cur >= 0) renderStep();
        }
      }
    }
    state.offline = false;
  } catch (error) {
    state.offline = true;
  }
  renderBanner();
  // A file silent for 15 minutes is probably a killed run: keep watching, less often.
  if (state.live) setTimeout(poll, state.ageS > 900 ? 5 * POLL_MS : POLL_MS);
}

async function main() {
  setupTheme($('theme'));
  renderLegend();
  charts = createCharts($('charts'), (i) => go(i), hover);
  traces = createTracePanel($('panel-traces'), {
    traceUrl: (index) => api('trace', `&index=${index}`),
    onChange: () => { if (state.tab === 'traces') writeHash(); },
  });
  $('timeline').addEventListener('click', (event) => {
    const i = event.target.dataset?.i;
    if (i != null) go(Number(i));
  });
  $('timeline').addEventListener('mouseover', (event) => {
    const i = event.target.dataset?.i;
    if (i != null) hover(Number(i));
  });
  $('timeline').addEventListener('mouseleave', () => hover(null));
  new ResizeObserver(() => sizeTimeline()).observe($('timeline'));
  $('prev').addEventListener('click', () => go(state.cur - 1));
  $('next').addEventListener('click', () => go(state.cur + 1));
  for (const button of $('tabs').querySelectorAll('[role=tab]')) button.addEventListener('click', () => showTab(button.dataset.tab));
  document.addEventListener('keydown', onKey);
  window.addEventListener('hashchange', () => {
    // Typing #step=N in the address bar (replaceState below never fires this).
    const wanted = new URLSearchParams(location.hash.slice(1));
    if (wanted.get('step')) go(Number(wanted.get('step')) - 1, { keepTab: wanted.get('tab') === 'traces' });
    if (TABS.includes(wanted.get('tab'))) showTab(...tabFromHash(wanted));
  });
  try {
    await load();
  } catch (error) {
    $('instance').textContent = 'Cannot open this trajectory';
    fill($('step'), h('div', { class: 'placeholder error-text' }, error.message));
    return;
  }
  window.__viewerReady = performance.now();
  document.body.dataset.ready = '1';
  if (state.live) setTimeout(poll, POLL_MS);
}

main();

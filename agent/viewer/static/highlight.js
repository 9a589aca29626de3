// Highlighters for what a step holds: bash bodies, SEARCH/REPLACE edits, unified diffs, diff stats
// and tool observations. Each one splits text into (class, text) pieces and emits spans whose
// content is set with textContent, so highlighting never interprets the text as markup.
import { h, span } from './common.js';

const KEYWORDS = new Set(['if', 'then', 'else', 'elif', 'fi', 'for', 'while', 'until', 'do', 'done',
  'case', 'esac', 'in', 'function', 'select', 'time', '!', '{', '}']);
// After these a new command starts; after `in` (for x in ...) come plain words.
const STARTS_COMMAND = new Set(['if', 'then', 'else', 'elif', 'while', 'until', 'do', '!', '{', 'time']);
const OPERATOR = /^(\|\||&&|;;|\|&|\||&>>|&>|&|;|>>|>&|<<<|<<-|<<|<&|<|>|\(|\))/;
const VARIABLE = /^\$(\{[^}\n]*\}|\(\(|\(|[A-Za-z_][A-Za-z0-9_]*|[0-9?@*#!$-])/;
const WORD = /^[^\s|&;<>()'"$`]+/;

/** Split a bash script into [class, text] pieces: commands, flags, strings, variables, comments. */
export function tokenizeBash(code) {
  const out = [];
  const push = (cls, text) => {
    const last = out[out.length - 1];
    if (last && last[0] === cls) last[1] += text; else out.push([cls, text]);
  };
  let i = 0;
  let commandPosition = true;
  let heredoc = null;
  const n = code.length;
  while (i < n) {
    const rest = code.slice(i, i + 256);
    const c = code[i];
    if (c === '\n') {
      push('', c);
      i += 1;
      commandPosition = true;
      if (heredoc) i = readHeredoc(code, i, heredoc, push);
      heredoc = null;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\\') { push('', c === '\\' ? code.slice(i, i + 2) : c); i += c === '\\' ? 2 : 1; continue; }
    if (c === '#' && (i === 0 || /[\s;|&(]/.test(code[i - 1]))) {
      const end = code.indexOf('\n', i);
      const stop = end < 0 ? n : end;
      push('tk-com', code.slice(i, stop));
      i = stop;
      continue;
    }
    if (c === "'" || c === '"' || c === '`') {
      const stop = closingQuote(code, i);
      push('tk-str', code.slice(i, stop));
      i = stop;
      commandPosition = false;
      continue;
    }
    let m = VARIABLE.exec(rest);
    if (c === '$' && m) {
      push('tk-var', m[0]);
      i += m[0].length;
      if (m[0] === '$(') commandPosition = true;
      continue;
    }
    m = OPERATOR.exec(rest);
    if (m) {
      push('tk-op', m[0]);
      i += m[0].length;
      const redirect = /[<>]/.test(m[0]);
      if (m[0].startsWith('<<') && m[0] !== '<<<') {
        const d = /^\s*(['"]?)([A-Za-z_][A-Za-z0-9_]*)\1/.exec(code.slice(i, i + 128));
        if (d) { push('tk-str', d[0]); i += d[0].length; heredoc = { word: d[2], strip: m[0] === '<<-' }; }
      }
      commandPosition = !redirect;
      continue;
    }
    m = WORD.exec(rest);
    const word = m ? m[0] : c;
    let cls = '';
    if (commandPosition) {
      if (/^[A-Za-z_][A-Za-z0-9_]*=/.test(word)) cls = 'tk-var';
      else cls = KEYWORDS.has(word) ? 'tk-kw' : 'tk-cmd';
    } else if (word.startsWith('-')) cls = 'tk-flag';
    else if (/^\d+$/.test(word)) cls = 'tk-num';
    push(cls, word);
    i += word.length;
    if (cls !== 'tk-var' || !commandPosition) commandPosition = cls === 'tk-kw' && STARTS_COMMAND.has(word);
  }
  return out;
}

function closingQuote(code, start) {
  const quote = code[start];
  let j = start + 1;
  while (j < code.length && code[j] !== quote) j += quote !== "'" && code[j] === '\\' ? 2 : 1;
  return Math.min(code.length, j + 1);
}

function readHeredoc(code, i, heredoc, push) {
  let j = i;
  while (j < code.length) {
    const end = code.indexOf('\n', j);
    const stop = end < 0 ? code.length : end;
    const line = code.slice(j, stop);
    if ((heredoc.strip ? line.replace(/^\t+/, '') : line) === heredoc.word) {
      push('tk-str', line);
      return stop;
    }
    push('tk-here', code.slice(j, Math.min(code.length, stop + 1)));
    j = stop + 1;
  }
  return code.length;
}

/** Pieces to a fragment of spans (plain text nodes for unclassed pieces). */
export function renderPieces(pieces) {
  const fragment = document.createDocumentFragment();
  for (const [cls, text] of pieces) fragment.append(cls ? span(cls, text) : document.createTextNode(text));
  return fragment;
}

export function codeBlock(text, cls = '') {
  return h('pre', { class: `code ${cls}`.trim() }, text);
}

export function bashBlock(body) {
  return h('pre', { class: 'code lang-bash' }, renderPieces(tokenizeBash(body)));
}

/** An edit call: path, then the SEARCH lines as removals and the REPLACE lines as additions. */
export function editBlock(body) {
  const lines = body.split('\n');
  const rows = [];
  let mode = 'head';
  lines.forEach((line, index) => {
    if (index === 0) return;
    if (line === '<<<<<<< SEARCH') { mode = 'search'; rows.push(row('ed-marker', ' ', line)); return; }
    if (line === '=======' && mode === 'search') { mode = 'replace'; rows.push(row('ed-marker', ' ', line)); return; }
    if (line === '>>>>>>> REPLACE' && mode === 'replace') { mode = 'done'; rows.push(row('ed-marker', ' ', line)); return; }
    if (mode === 'search') rows.push(row('ed-del', '−', line));
    else if (mode === 'replace') rows.push(row('ed-add', '+', line));
    else rows.push(row('ed-plain', ' ', line));
  });
  return h('div', { class: 'edit' },
    h('div', { class: 'file-path' }, lines[0] || '(no path)'),
    h('pre', { class: 'code code-rows' }, rows));
}

function row(cls, gutter, text) {
  return h('div', { class: `line ${cls}` }, h('span', { class: 'gutter', 'aria-hidden': 'true' }, gutter), text || ' ');
}

export function createBlock(body) {
  const newline = body.indexOf('\n');
  const path = newline < 0 ? body : body.slice(0, newline);
  const content = newline < 0 ? '' : body.slice(newline + 1);
  const rows = content.split('\n').map((line, i) => h('div', { class: 'line ed-new' },
    h('span', { class: 'gutter lineno', 'aria-hidden': 'true' }, String(i + 1)), line || ' '));
  return h('div', { class: 'edit' }, h('div', { class: 'file-path' }, path, h('span', { class: 'tag tag-good' }, 'new file')),
    h('pre', { class: 'code code-rows' }, rows));
}

const DIFF_LIMIT = 4000;

/** A unified diff coloured by line kind, with a +/- count; very long diffs render their head first. */
export function diffBlock(text, limit = DIFF_LIMIT) {
  const lines = text.replace(/\n$/, '').split('\n');
  let files = 0, added = 0, removed = 0;
  for (const line of lines) {
    if (line.startsWith('diff --git')) files += 1;
    else if (line.startsWith('+') && !line.startsWith('+++')) added += 1;
    else if (line.startsWith('-') && !line.startsWith('---')) removed += 1;
  }
  const pre = h('pre', { class: 'code diff' });
  const renderRange = (from, to) => {
    const fragment = document.createDocumentFragment();
    for (let i = from; i < to; i += 1) fragment.append(diffLine(lines[i]));
    pre.append(fragment);
  };
  renderRange(0, Math.min(lines.length, limit));
  if (lines.length > limit) {
    const more = h('button', { type: 'button', class: 'more' }, `Show ${lines.length - limit} more lines`);
    more.addEventListener('click', () => { more.remove(); renderRange(limit, lines.length); });
    pre.append(more);
  }
  const stat = h('div', { class: 'diff-summary' },
    `${files || (text.trim() ? 1 : 0)} file${files === 1 ? '' : 's'}`, ' ',
    span('num-add', `+${added}`), ' ', span('num-del', `−${removed}`));
  return h('div', { class: 'diff-wrap' }, stat, pre);
}

function diffLine(line) {
  let cls = 'df-ctx';
  if (line.startsWith('diff --git')) cls = 'df-file';
  else if (/^(index |new file|deleted file|similarity|rename |old mode|new mode|--- |\+\+\+ |\\ No newline)/.test(line)) cls = 'df-meta';
  else if (line.startsWith('@@')) cls = 'df-hunk';
  else if (line.startsWith('+')) cls = 'df-add';
  else if (line.startsWith('-')) cls = 'df-del';
  const el = document.createElement('div');
  el.className = `line ${cls}`;
  el.textContent = line || ' ';
  return el;
}

/** `git diff --stat` output (full or just its summary line) with insertions and deletions coloured. */
export function diffStatBlock(text) {
  const pre = h('pre', { class: 'code diffstat' });
  for (const line of text.split('\n')) {
    const graph = /^(.*\|\s*\d+\s+)(\+*)(-*)\s*$/.exec(line);
    const el = h('div', { class: 'line' });
    if (graph) el.append(graph[1], span('num-add', graph[2]), span('num-del', graph[3]));
    else {
      for (const part of line.split(/(\d+ insertions?\(\+\)|\d+ deletions?\(-\))/)) {
        if (/insertion/.test(part)) el.append(span('num-add', part));
        else if (/deletion/.test(part)) el.append(span('num-del', part));
        else el.append(part);
      }
    }
    pre.append(el);
  }
  return pre;
}

const OBSERVATION_LIMIT = 60000;

/** Split an observation into the tool's feedback and the `<output>`/`<budget>` wrapper around it. */
export function splitObservation(text) {
  const open = '<output>\n';
  const close = text.lastIndexOf('</output>');
  if (!text.startsWith(open) || close < open.length - 1) return { before: '', body: text, after: '', budget: null };
  const after = text.slice(close);
  const turns = /Remaining turns:\s*(-?\d+)/.exec(after);
  const tokens = /Remaining tokens:\s*(-?\d+)/.exec(after);
  return {
    before: open,
    body: text.slice(open.length, close),
    after,
    budget: turns || tokens ? { turns: turns ? Number(turns[1]) : null, tokens: tokens ? Number(tokens[1]) : null } : null,
  };
}

export function observationBlock(text) {
  const parts = splitObservation(text);
  const pre = h('pre', { class: 'code observation' });
  if (parts.before) pre.append(span('obs-tag', parts.before));
  const body = parts.body;
  if (body.length > OBSERVATION_LIMIT) {
    const rest = span('', '');
    const more = h('button', { type: 'button', class: 'more' }, `Show ${body.length - OBSERVATION_LIMIT} more characters`);
    more.addEventListener('click', () => { rest.textContent = body.slice(OBSERVATION_LIMIT); more.remove(); });
    pre.append(body.slice(0, OBSERVATION_LIMIT), rest, more);
  } else pre.append(body);
  if (parts.after) pre.append(span('obs-tag', parts.after));
  return pre;
}

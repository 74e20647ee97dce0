// The fuseproxy dashboard: reads GET /events/circuits (server-sent events, read with
// fetch so that the token can go in a header) and sends the admin API's commands.
// Every value from the API reaches the page as text (textContent), never as markup.
'use strict';

const TOKEN_KEY = 'fuseproxy.admin.token';
const MODES = ['normal', 'forced_open', 'forced_closed', 'metrics_only'];
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const rows = new Map(); // circuit name -> {tr, cells}
const groupRows = new Map(); // upstream name -> the row heading its targets when it is not listed
let stream = null; // the AbortController of the open stream
let retry = 500;
let retryTimer = 0;

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

// headers are sent with every call: X-Fuse-Admin marks a command as the operator's (the
// API refuses a command without it), and the token when there is one.
function headers(extra) {
  const h = Object.assign({'X-Fuse-Admin': '1'}, extra || {});
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

function setConn(state, text) {
  const el = $('conn');
  el.dataset.conn = state;
  el.textContent = text || state;
}

function message(text, kind) {
  const el = $('message');
  el.textContent = text;
  el.className = kind || '';
  el.hidden = !text;
}

// connect opens the event stream and renders each frame until it ends, then tries again.
async function connect() {
  clearTimeout(retryTimer);
  if (stream) stream.abort();
  const ctl = new AbortController();
  stream = ctl;
  setConn(rows.size ? 'reconnecting' : 'connecting');
  try {
    const resp = await fetch('/events/circuits', {headers: headers(), signal: ctl.signal, cache: 'no-store'});
    if (resp.status === 401) {
      setConn('token', token() ? 'token refused' : 'token needed');
      message(token() ? 'The admin API refused this token.' : 'The admin API needs a token: enter it above.', 'error');
      $('token').focus();
      return; // until a token is entered
    }
    if (!resp.ok) throw new Error('HTTP ' + resp.status);
    setConn('live');
    retry = 500;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
    throw new Error('stream ended');
  } catch (e) {
    if (ctl.signal.aborted) return;
    setConn('reconnecting');
    retryTimer = setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  }
}

// group is the upstream a circuit belongs to: a target's circuit is named
// UPSTREAM@HOST:PORT.
function group(name) {
  const at = name.indexOf('@');
  return at < 0 ? name : name.slice(0, at);
}

function order(a, b) {
  const ga = group(a.name), gb = group(b.name);
  if (ga !== gb) return ga < gb ? -1 : 1;
  const ta = a.name.includes('@'), tb = b.name.includes('@');
  if (ta !== tb) return ta ? 1 : -1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function render(f) {
  $('replica').textContent = f.replica || '–';
  const st = $('store');
  st.textContent = f.store.driver + (f.store.degraded ? ' (degraded: ' + (f.store.last_error || 'unreachable') + ')' : '');
  st.classList.toggle('degraded', !!f.store.degraded);
  $('updated').textContent = new Date(f.time).toLocaleTimeString();

  const circuits = f.circuits.slice().sort(order);
  const names = new Set(circuits.map((c) => c.name));
  for (const [name, row] of rows) {
    if (!names.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  const body = $('rows');
  // Targets whose upstream is not listed get a group row of their own.
  const listed = new Set(circuits.filter((c) => !c.name.includes('@')).map((c) => c.name));
  const headed = new Set(circuits.filter((c) => c.name.includes('@') && !listed.has(group(c.name))).map((c) => group(c.name)));
  for (const [g, tr] of groupRows) {
    if (!headed.has(g)) {
      tr.remove();
      groupRows.delete(g);
    }
  }
  const place = (tr, after) => {
    const at = after ? after.nextSibling : body.firstChild;
    if (at !== tr) body.insertBefore(tr, at);
    return tr;
  };
  let prev = null;
  for (const c of circuits) {
    const g = group(c.name);
    if (c.name.includes('@') && headed.has(g) && (!prev || group(prev.dataset.circuit || prev.dataset.group) !== g)) {
      if (!groupRows.has(g)) groupRows.set(g, groupRow(g));
      prev = place(groupRows.get(g), prev);
    }
    let row = rows.get(c.name);
    if (!row) {
      row = newRow(c.name);
      rows.set(c.name, row);
    }
    prev = place(row.tr, prev);
    // The first frame holds every sample; later ones only those taken since.
    if (f.history_appended) row.history = (row.history || []).concat(c.history || []).slice(-MAX_SAMPLES);
    else if (f.with_history) row.history = c.history || [];
    update(row, c, f.store.driver);
  }
  $('empty').hidden = circuits.length > 0;
}

function groupRow(g) {
  const tr = document.createElement('tr');
  tr.className = 'group';
  tr.dataset.group = g;
  const td = document.createElement('td');
  td.colSpan = 11;
  td.textContent = g + ' (upstream not listed)';
  tr.appendChild(td);
  return tr;
}

function cell(tr, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function newRow(name) {
  const tr = document.createElement('tr');
  tr.dataset.circuit = name;
  if (name.includes('@')) tr.classList.add('target');
  const cells = {
    name: cell(tr, 'name'), state: cell(tr, 'state'), mode: cell(tr, 'mode'),
    rate: cell(tr, 'num rate'), window: cell(tr, 'num window'), trips: cell(tr, 'num trips'),
    left: cell(tr, 'num left'), trials: cell(tr, 'num trials'), spark: cell(tr), agree: cell(tr, 'agree'),
    actions: cell(tr),
  };
  cells.name.textContent = name;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 ' + 2 * MAX_SAMPLES + ' 25');
  svg.setAttribute('preserveAspectRatio', 'none');
  cells.spark.appendChild(svg);
  cells.svg = svg;

  const box = document.createElement('div');
  box.className = 'actions';
  for (const action of ['open', 'close', 'reset']) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.action = action;
    b.textContent = action;
    b.title = action + ' ' + name + ' (fleet-wide with the redis store)';
    b.addEventListener('click', () => command(name, action));
    box.appendChild(b);
  }
  const sel = document.createElement('select');
  sel.dataset.role = 'mode';
  sel.setAttribute('aria-label', 'mode of ' + name);
  for (const m of MODES) {
    const o = document.createElement('option');
    o.value = m;
    o.textContent = m;
    sel.appendChild(o);
  }
  const set = document.createElement('button');
  set.type = 'button';
  set.dataset.action = 'mode';
  set.textContent = 'set mode';
  set.addEventListener('click', () => command(name, 'mode', sel.value));
  box.append(sel, set);
  cells.actions.appendChild(box);
  cells.buttons = box;
  cells.select = sel;
  return {tr, cells, mode: null, history: []};
}

function seconds(s) {
  if (!s) return '–';
  return s >= 60 ? Math.floor(s / 60) + 'm ' + Math.round(s % 60) + 's' : s.toFixed(1) + ' s';
}

function update(row, c, driver) {
  const k = row.cells;
  const disabled = c.state === 'disabled';
  k.state.textContent = c.state.replace('_', '-');
  k.state.dataset.state = c.state;
  k.mode.textContent = c.mode || '–';
  k.mode.dataset.mode = c.mode || '';
  // A shared circuit's own counts are what this replica has not flushed yet: show the
  // fleet's window as the store holds it.
  const a = c.agreement;
  const fleet = c.source === 'shared' && a && a.window && a.rates;
  const n = (fleet ? a.window : c.counts) || {};
  const rate = fleet ? a.rates.failure_rate : c.rates.failure_rate;
  k.rate.textContent = disabled ? '–' : rate.toFixed(1) + ' %';
  k.window.textContent = disabled ? '–' : (n.requests || 0) + ' / ' + (n.failures || 0) + ' / ' + (n.slow || 0);
  k.window.title = fleet ? "the fleet's window in the store" : "this replica's window";
  k.rate.title = k.window.title;
  k.trips.textContent = disabled ? '–' : String(c.trips);
  // An open period that is over waits for the next request, which becomes a trial.
  k.left.textContent = c.state !== 'open' ? '–' : c.open_remaining_seconds > 0 ? seconds(c.open_remaining_seconds) : 'trial due';
  k.trials.textContent = disabled ? '–' : c.trials_in_flight + ' / ' + c.trial_slots;
  sparkline(k.svg, row.history || [], c);
  agreement(k.agree, c, driver);
  k.buttons.hidden = disabled;
  // The select follows the circuit's mode unless the operator is choosing one.
  if (c.mode && row.mode !== c.mode && document.activeElement !== k.select) {
    k.select.value = c.mode;
    row.mode = c.mode;
  }
}

// sparkline draws one bar per sample, newest on the right, the whole width being
// MAX_SAMPLES: while closed, the window's failure rate (at least a sliver, orange when
// failing); open and half-open fill the height.
const MAX_SAMPLES = 120;
function sparkline(svg, history, c) {
  const a = c.agreement;
  const rate = c.source === 'shared' && a && a.rates ? a.rates.failure_rate : c.rates.failure_rate;
  const points = history.concat(c.state === 'disabled' ? [] : [{state: c.state, failure_rate: rate}]);
  const keep = points.slice(-MAX_SAMPLES);
  while (svg.childNodes.length > keep.length) svg.lastChild.remove();
  while (svg.childNodes.length < keep.length) svg.appendChild(document.createElementNS(SVG, 'rect'));
  const offset = MAX_SAMPLES - keep.length;
  keep.forEach((p, i) => {
    const r = svg.childNodes[i];
    const closed = p.state === 'closed';
    const h = closed ? Math.max(2, Math.min(100, p.failure_rate) * 0.25) : 25;
    r.setAttribute('x', String((offset + i) * 2));
    r.setAttribute('width', '1.6');
    r.setAttribute('y', String(25 - h));
    r.setAttribute('height', String(h));
    r.setAttribute('class', closed && p.failure_rate > 0 ? 'failing' : p.state);
  });
  const last = history.length ? history[history.length - 1] : null;
  svg.setAttribute('aria-label', history.length + ' samples' + (last ? ', last failure rate ' + last.failure_rate + ' %' : ''));
}

function agreement(td, c, driver) {
  const a = c.agreement;
  if (driver === 'memory' && c.state !== 'disabled') {
    td.textContent = 'this replica only';
    td.dataset.agree = 'yes';
    td.title = 'memory store: the breaker is the store';
    return;
  }
  if (c.state === 'disabled') {
    td.textContent = '–';
    td.dataset.agree = 'unknown';
    td.title = '';
    return;
  }
  if (!a) {
    td.textContent = 'checking…';
    td.dataset.agree = 'unknown';
    td.title = '';
    return;
  }
  let text;
  if (a.error) {
    text = 'unreadable';
    td.dataset.agree = 'unknown';
  } else if (a.empty) {
    text = a.agrees ? '✓ nothing stored yet' : '✗ nothing stored';
    td.dataset.agree = a.agrees ? 'yes' : 'no';
  } else if (a.agrees) {
    text = '✓ gen ' + a.generation;
    td.dataset.agree = 'yes';
  } else {
    text = '✗ store: ' + a.state + '/' + a.mode + ' gen ' + a.generation;
    td.dataset.agree = 'no';
  }
  if (a.reporting && a.reporting.length) text += ' · failures from ' + a.reporting.join(', ');
  td.textContent = text;
  td.title = a.error ? a.error : 'checked ' + a.checked + '; this replica: ' + c.state + '/' + c.mode + ' gen ' + c.generation;
}

// command sends POST /circuits/{name}/{action} with the token and X-Fuse-Admin.
async function command(name, action, mode) {
  const init = {method: 'POST', cache: 'no-store', headers: headers(mode ? {'Content-Type': 'application/json'} : {})};
  if (mode) init.body = JSON.stringify({mode});
  const label = action + (mode ? ' ' + mode : '') + ' ' + name;
  try {
    const resp = await fetch('/circuits/' + encodeURIComponent(name) + '/' + action, init);
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) {
      message(label + ': the admin API needs a token (enter it above).', 'error');
      return;
    }
    if (!resp.ok) {
      message(label + ': ' + resp.status + ' ' + (body.error || ''), 'error');
      return;
    }
    if (body.warning) {
      message(label + ': ' + body.warning + ' (' + (body.detail || '') + ')', 'warning');
    } else {
      message(label + ': done (' + body.scope + '), now ' + body.circuit.state + '/' + body.circuit.mode + '.');
    }
  } catch (e) {
    message(label + ': ' + e.message, 'error');
  }
}

function init() {
  $('token').value = token();
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
    message('');
    connect();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('token').value = '';
    connect();
  });
  connect();
}

init();

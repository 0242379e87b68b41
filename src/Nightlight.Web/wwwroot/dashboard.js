// The dashboard: live readings and commands arrive as server-sent events from /api/events; stored history, the
// command log and manual commands come from the server's /api/devices API when this server has it.
'use strict';

const LIVE_SECONDS = 300;
const SILENCE_MS = 30000;
const state = { threshold: 300, range: 'live', devices: new Map(), historyApi: true, commandApi: true };

const el = (root, selector) => root.querySelector(selector);

// A device with a local fallback says in its presence who decides: {"online": true, "mode": "local"|"cloud"}.
function modeOf(status) {
  try {
    const mode = JSON.parse(status).mode;
    return mode === 'local' || mode === 'cloud' ? mode : null;
  } catch {
    return null;
  }
}

function format(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function device(id) {
  let d = state.devices.get(id);
  if (d) return d;
  const node = document.getElementById('device-template').content.firstElementChild.cloneNode(true);
  node.dataset.device = id;
  el(node, '.device-id').textContent = id;
  d = { id, node, live: [], commands: [], history: null, ledOn: null, lastSeen: 0, online: null, mode: null, chart: null };
  el(node, '.send-on').addEventListener('click', () => sendCommand(d, true));
  el(node, '.send-off').addEventListener('click', () => sendCommand(d, false));
  const list = document.getElementById('devices');
  const after = [...list.children].find(child => child.dataset.device > id);
  list.insertBefore(node, after || null);
  document.getElementById('empty').hidden = true;
  state.devices.set(id, d);
  d.chart = makeChart(d);
  loadCommands(d);
  loadMissing(d);
  if (state.range !== 'live') loadHistory(d);
  return d;
}

// Readings lost on the way (`missing` of GET /api/devices/{id}), shown only for a device that numbers its readings.
async function loadMissing(d) {
  if (!state.historyApi) return;
  try {
    const result = await fetchJson(`/api/devices/${encodeURIComponent(d.id)}`);
    if (result.missing || typeof result.value.missing !== 'number') return;
    const lost = el(d.node, '.lost');
    lost.hidden = false;
    lost.dataset.missing = String(result.value.missing);
    el(lost, '.missing').textContent = String(result.value.missing);
  } catch (error) {
    console.warn(error);
  }
}

function makeChart(d) {
  const target = el(d.node, '.chart');
  const opts = {
    width: Math.max(280, target.clientWidth),
    height: window.innerWidth < 600 ? 200 : 260,
    legend: { show: false },
    cursor: { y: false },
    scales: { x: { time: true }, y: { range: [0, 1023] }, led: { range: [0, 1] } },
    axes: [
      { stroke: '#97a0b3', grid: { stroke: '#2b3242' }, ticks: { stroke: '#2b3242' }, space: 70, values: timeTicks },
      { stroke: '#97a0b3', grid: { stroke: '#2b3242' }, ticks: { stroke: '#2b3242' }, size: 54 },
    ],
    series: [
      {},
      { label: 'light', stroke: '#f5c542', width: 2, spanGaps: false, points: { size: 4 } },
      { label: 'threshold', stroke: '#ff6b6b', width: 1.5, dash: [6, 4], points: { show: false } },
      { label: 'LED on', scale: 'led', stroke: 'rgba(255,214,92,0.5)', width: 0, fill: 'rgba(255,214,92,0.18)',
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
    ],
  };
  return new uPlot(opts, [[], [], [], []], target);
}

// Time axis labels in the browser's locale (uPlot's own are US English): times, with the date over a day or more.
function timeTicks(u, ticks) {
  const span = ticks.length > 1 ? ticks[ticks.length - 1] - ticks[0] : 0;
  const options = span >= 86400 ? { month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit' }
    : { hour: '2-digit', minute: '2-digit', second: span < 600 ? '2-digit' : undefined };
  return ticks.map(t => new Date(t * 1000).toLocaleString(undefined, options));
}

// The LED state at time t (seconds): the last command sent at or just after the reading it answered.
function ledAt(commands, t) {
  let on = null;
  for (const c of commands) {
    if (c.ts <= t + 1) on = c.ledOn; else break;
  }
  return on;
}

function redraw(d) {
  const points = state.range === 'live' ? d.live : (d.history || []);
  const now = Date.now() / 1000;
  const span = state.range === 'live' ? LIVE_SECONDS : Number(state.range);
  // A live chart starts at its first reading, so a new device's line fills the width as it grows.
  const first = points.length ? points[0].ts : now;
  const from = state.range === 'live' ? Math.max(now - span, Math.min(first, now - 30)) : now - span;
  const shown = points.filter(p => p.ts >= from);
  const xs = shown.map(p => p.ts);
  const light = shown.map(p => p.light);
  const threshold = shown.map(() => state.threshold);
  const led = shown.map(p => (ledAt(d.commands, p.ts) ? 1 : 0));
  d.chart.setData([xs, light, threshold, led], false);
  d.chart.setScale('x', { min: from, max: now });
  const chart = el(d.node, '.chart');
  chart.dataset.points = String(shown.length);
  const max = Math.max(1023, ...light);
  d.chart.setScale('y', { min: 0, max });
}

function render(d) {
  const online = d.online ?? (Date.now() - d.lastSeen < SILENCE_MS);
  const pill = el(d.node, '.online');
  pill.dataset.online = String(online);
  pill.textContent = online ? 'online' : 'offline';
  const mode = el(d.node, '.mode');
  mode.hidden = d.mode === null;
  mode.dataset.mode = d.mode ?? '';
  mode.textContent = d.mode === 'local' ? 'deciding locally' : 'server decides';
  mode.title = d.mode === 'local' ? 'No word from the server: the device applies its own rule' : 'The device follows the server\'s commands';
  const last = d.live.at(-1);
  el(d.node, '.light').textContent = last ? format(last.light) : '–';
  const led = el(d.node, '.led');
  led.dataset.on = d.ledOn === null ? 'unknown' : String(d.ledOn);
  led.textContent = d.ledOn === null ? '–' : d.ledOn ? 'ON' : 'off';
  el(d.node, '.last-seen').textContent = d.lastSeen ? 'last reading ' + new Date(d.lastSeen).toLocaleTimeString() : '';
}

function addReading(id, reading) {
  const d = device(id);
  const light = reading.measurements && reading.measurements.light;
  if (typeof light !== 'number') return;
  const ts = Date.parse(reading.ts) / 1000;
  d.live.push({ ts, light });
  if (d.live.length > 2000) d.live.splice(0, d.live.length - 2000);
  d.lastSeen = Math.max(d.lastSeen, ts * 1000);
  if (state.range === 'live') redraw(d);
  render(d);
}

function addCommand(id, command) {
  const d = device(id);
  d.commands.push({ ts: Date.parse(command.ts) / 1000, ledOn: command.ledOn });
  if (d.commands.length > 5000) d.commands.splice(0, d.commands.length - 5000);
  d.ledOn = command.ledOn;
  render(d);
  if (state.range === 'live') redraw(d);
  scheduleCommandLog(d);
}

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  if (response.status === 404) return { missing: true };
  if (!response.ok) throw new Error(url + ' answered ' + response.status);
  return { value: await response.json() };
}

// Stored history, when the server has it; otherwise the chart shows what arrived since the page opened.
async function loadHistory(d) {
  const note = el(d.node, '.history-note');
  const to = new Date();
  const seconds = Number(state.range);
  const from = new Date(to.getTime() - seconds * 1000);
  const bucket = seconds > 86400 ? '1h' : seconds > 21600 ? '10m' : seconds > 3600 ? '1m' : '';
  let url = `/api/devices/${encodeURIComponent(d.id)}/readings?from=${from.toISOString()}&to=${to.toISOString()}`;
  if (bucket) url += `&bucket=${bucket}`;
  try {
    const result = await fetchJson(url);
    if (result.missing) {
      d.history = [];
      note.textContent = 'Stored history is not available on this server; the live view shows readings since this page opened.';
      note.hidden = false;
    } else {
      d.history = result.value.map(r => r.start
        ? { ts: Date.parse(r.start) / 1000, light: r.measurements.light && r.measurements.light.avg }
        : { ts: Date.parse(r.ts) / 1000, light: r.measurements.light }).filter(p => typeof p.light === 'number');
      note.hidden = d.history.length > 0;
      note.textContent = 'No stored readings in this time range.';
    }
  } catch (error) {
    d.history = [];
    note.textContent = 'Could not load history: ' + error.message;
    note.hidden = false;
  }
  redraw(d);
}

const logTimers = new Map();
function scheduleCommandLog(d) {
  if (!state.commandApi || logTimers.has(d.id)) return;
  logTimers.set(d.id, setTimeout(() => { logTimers.delete(d.id); loadCommands(d); }, 1000));
}

// The command log and the manual command buttons appear only when the server has the command API.
async function loadCommands(d) {
  if (!state.commandApi) return;
  try {
    const result = await fetchJson(`/api/devices/${encodeURIComponent(d.id)}/commands`);
    if (result.missing) {
      state.commandApi = false;
      for (const other of state.devices.values()) {
        el(other.node, '.log').hidden = true;
        el(other.node, '.manual').hidden = true;
      }
      return;
    }
    d.commands = ledPeriods(result.value, d.commands);
    redraw(d);
    const body = el(d.node, '.log tbody');
    body.replaceChildren(...result.value.slice().sort((a, b) => Date.parse(b.created) - Date.parse(a.created)).slice(0, 50).map(c => {
      const row = document.createElement('tr');
      row.dataset.status = c.status;
      for (const text of [new Date(c.created).toLocaleTimeString(), JSON.stringify(c.command), c.source, c.status]) {
        const cell = document.createElement('td');
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    }));
    el(d.node, '.log').hidden = false;
    el(d.node, '.manual').hidden = false;
  } catch (error) {
    el(d.node, '.manual-result').textContent = 'Could not load the command log: ' + error.message;
  }
}

// When the LED switched, from the stored commands: each one sent and not expired, superseded or failed (those the device never
// acknowledged, so never applied), at the time it was sent, right after the reading it answered. Live commands
// newer than the log are kept.
function ledPeriods(stored, live) {
  const switched = stored
    .filter(c => c.command && typeof c.command.led_on === 'boolean' && c.status !== 'expired' && c.status !== 'failed' && c.status !== 'superseded')
    .map(c => ({ ts: Date.parse(c.created) / 1000, ledOn: c.command.led_on }))
    .sort((a, b) => a.ts - b.ts);
  const last = switched.length ? switched[switched.length - 1].ts : -Infinity;
  return switched.concat(live.filter(c => c.ts > last));
}

async function sendCommand(d, on) {
  const result = el(d.node, '.manual-result');
  result.textContent = 'sending…';
  try {
    const response = await fetch(`/api/devices/${encodeURIComponent(d.id)}/commands`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ led_on: on, overrideFor: '10m' }),
    });
    result.textContent = response.status === 202 ? `LED ${on ? 'on' : 'off'} sent` : `the server answered ${response.status}`;
    loadCommands(d);
  } catch (error) {
    result.textContent = 'not sent: ' + error.message;
  }
}

// What the server wants each switch to be and what the device said it did (the server's device API, state).
const SWITCH_NAMES = { led_on: 'LED', heating_on: 'heating' };

function renderSwitches(d, info) {
  const list = el(d.node, '.switches');
  const entries = Object.entries(info.state || {});
  list.hidden = entries.length === 0;
  list.replaceChildren(...entries.map(([name, s]) => {
    const item = document.createElement('li');
    item.dataset.switch = name;
    item.dataset.sync = s.inSync === null || s.inSync === undefined ? 'unknown' : String(s.inSync);
    const onOff = v => (v === null || v === undefined ? '–' : v ? 'on' : 'off');
    const reported = s.reported === null || s.reported === undefined ? 'has not confirmed' : 'says ' + onOff(s.reported);
    const until = s.until ? ' until ' + new Date(s.until).toLocaleTimeString() : '';
    const sync = s.inSync === true ? ' ✓' : s.inSync === false ? ' – not yet' : '';
    item.textContent = `${SWITCH_NAMES[name] ?? name}: wanted ${onOff(s.desired)} (${s.source ?? '–'}${until}), device ${reported}${sync}`;
    return item;
  }));
}

async function loadDevices() {
  try {
    const result = await fetchJson('/api/devices');
    if (result.missing) return;
    for (const info of result.value) {
      const d = device(info.id);
      renderSwitches(d, info);
      if (info.lastReading && d.live.length === 0) {
        addReading(info.id, info.lastReading);
      }
      if (typeof info.ledOn === 'boolean' && d.ledOn === null) d.ledOn = info.ledOn;
      if (info.lastSeen) d.lastSeen = Math.max(d.lastSeen, Date.parse(info.lastSeen));
      render(d);
    }
  } catch (error) {
    console.warn(error);
  }
}

function connect() {
  const pill = document.getElementById('connection');
  const events = new EventSource('/api/events');
  // The page's other parts (overrides.js, messages.js) listen on the same stream.
  state.events = events;
  events.addEventListener('open', () => { pill.dataset.state = 'open'; pill.textContent = 'live'; });
  events.addEventListener('error', () => { pill.dataset.state = 'error'; pill.textContent = 'reconnecting…'; });
  events.addEventListener('snapshot', e => {
    const snapshot = JSON.parse(e.data);
    state.threshold = snapshot.threshold;
    document.getElementById('threshold-text').textContent = '(' + format(snapshot.threshold) + ')';
    for (const info of snapshot.devices) {
      const d = device(info.id);
      d.live = [];
      for (const r of info.recent) addReading(info.id, r);
      // The LED's past comes from the stored command log (loadCommands), never from today's state.
      if (typeof info.ledOn === 'boolean') d.ledOn = info.ledOn;
      if (info.status) {
        d.online = info.online;
        d.mode = modeOf(info.status) ?? d.mode;
      }
      render(d);
      redraw(d);
    }
  });
  events.addEventListener('reading', e => {
    const r = JSON.parse(e.data);
    addReading(r.id, r);
  });
  events.addEventListener('command', e => {
    const c = JSON.parse(e.data);
    addCommand(c.id, c);
  });
  events.addEventListener('status', e => {
    const s = JSON.parse(e.data);
    const d = device(s.id);
    d.online = s.online;
    d.mode = s.mode ?? (s.online ? null : d.mode);
    render(d);
  });
}

document.getElementById('range').addEventListener('change', e => {
  state.range = e.target.value;
  for (const d of state.devices.values()) {
    el(d.node, '.history-note').hidden = true;
    if (state.range === 'live') redraw(d); else loadHistory(d);
  }
});

window.addEventListener('resize', () => {
  for (const d of state.devices.values()) {
    d.chart.setSize({ width: Math.max(280, el(d.node, '.chart').clientWidth), height: window.innerWidth < 600 ? 200 : 260 });
  }
});

// Online/offline follows silence too, and the live window slides even when nothing arrives.
setInterval(() => {
  for (const d of state.devices.values()) {
    render(d);
    if (state.range === 'live') redraw(d);
  }
}, 5000);

// Each device's count of lost readings comes from the store, so less often than the live state.
setInterval(() => {
  for (const d of state.devices.values()) loadMissing(d);
}, 15000);

fetch('/api/config').then(r => r.json()).then(config => {
  state.threshold = config.threshold;
  document.getElementById('threshold-text').textContent = '(' + format(config.threshold) + ')';
}).catch(() => {});
connect();
loadDevices();
// Acknowledgements do not pass the live feed: the desired and reported state is asked of the server every few seconds.
setInterval(loadDevices, 2000);

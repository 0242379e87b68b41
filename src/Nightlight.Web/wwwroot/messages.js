// The live MQTT message view: each message the broker accepts arrives as an "mqtt" event on the page's live stream.
// Filter by device or topic (an MQTT filter such as +/commands, or any part of the topic), pause to read, clear.
'use strict';

const messageView = { all: [], paused: false, newWhilePaused: 0, skipped: 0 };
const MESSAGES_KEPT = 500;
const ROWS_SHOWN = 200;

// MQTT filter matching: + is one level, # the rest; without either, any part of the topic matches.
function topicMatches(filter, topic) {
  if (!filter) return true;
  if (!filter.includes('+') && !filter.includes('#')) return topic.includes(filter);
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

function directionText(m) {
  if (m.direction === 'up') return 'device → server';
  if (m.direction === 'down') return 'server → device';
  return 'from ' + m.from;
}

function messageTime(ts) {
  return new Date(ts).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3 });
}

function messageRow(m) {
  const row = document.createElement('tr');
  row.dataset.topic = m.topic;
  row.dataset.direction = m.direction;
  row.dataset.qos = String(m.qos);
  row.dataset.retain = String(m.retain);
  row.title = 'from client ' + m.from + ', ' + m.size + ' bytes';
  const cells = [messageTime(m.ts), directionText(m), m.topic, m.payload, String(m.qos), m.retain ? 'yes' : 'no'];
  const classes = ['time', 'direction', 'topic', 'payload', 'qos', 'retain'];
  cells.forEach((text, i) => {
    const cell = document.createElement('td');
    cell.className = classes[i];
    cell.textContent = text;
    row.appendChild(cell);
  });
  return row;
}

function renderMessages() {
  const device = document.getElementById('message-device').value;
  const topic = document.getElementById('message-topic').value.trim();
  const shown = [];
  for (let i = messageView.all.length - 1; i >= 0 && shown.length < ROWS_SHOWN; i--) {
    const m = messageView.all[i];
    if (device && m.device !== device) continue;
    if (!topicMatches(topic, m.topic)) continue;
    shown.push(messageRow(m));
  }
  document.getElementById('message-rows').replaceChildren(...shown);
  const count = document.getElementById('message-count');
  const parts = [`${shown.length} shown`];
  if (messageView.paused) parts.push(`paused, ${messageView.newWhilePaused} new`);
  if (messageView.skipped) parts.push(`${messageView.skipped} left out at high rates`);
  count.textContent = parts.join(' · ');
}

function addDeviceOption(id) {
  const select = document.getElementById('message-device');
  if (!id || [...select.options].some(o => o.value === id)) return;
  const option = document.createElement('option');
  option.value = id;
  option.textContent = id;
  const after = [...select.options].slice(1).find(o => o.value > id);
  select.insertBefore(option, after || null);
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; renderMessages(); });
}

state.events.addEventListener('mqtt', e => {
  const m = JSON.parse(e.data);
  messageView.all.push(m);
  if (messageView.all.length > MESSAGES_KEPT) messageView.all.splice(0, messageView.all.length - MESSAGES_KEPT);
  messageView.skipped += m.skipped || 0;
  addDeviceOption(m.device);
  if (messageView.paused) {
    messageView.newWhilePaused++;
    document.getElementById('message-count').textContent = `paused, ${messageView.newWhilePaused} new`;
    return;
  }
  scheduleRender();
});

document.getElementById('message-pause').addEventListener('click', e => {
  messageView.paused = !messageView.paused;
  messageView.newWhilePaused = 0;
  e.target.setAttribute('aria-pressed', String(messageView.paused));
  e.target.textContent = messageView.paused ? 'Resume' : 'Pause';
  renderMessages();
});
document.getElementById('message-clear').addEventListener('click', () => {
  messageView.all = [];
  messageView.skipped = 0;
  renderMessages();
});
document.getElementById('message-device').addEventListener('change', renderMessages);
document.getElementById('message-topic').addEventListener('input', renderMessages);
renderMessages();

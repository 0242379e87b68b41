// The virtual hardware page: the board arrives as "hardware" server-sent events from /api/events; changes go to
// /api/hardware. Device code reads the same board through CounterFit's API (/sensor_value, /actuator_value).
'use strict';

const LABELS = { Light: 'Light', Temperature: 'Temperature', Humidity: 'Humidity', SoilMoisture: 'Soil moisture', Button: 'Button', Led: 'LED', Relay: 'Relay' };
const cards = new Map();
let board = { sensors: [], actuators: [] };

const el = (root, selector) => root.querySelector(selector);

async function send(method, url, body, type) {
  const response = await fetch(url, {
    method,
    headers: { 'Content-Type': type || 'application/json' },
    body: type ? body : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await response.text() || String(response.status));
  return response.status === 204 ? null : response.json();
}

function show(text) {
  document.getElementById('add-result').textContent = text;
}

function sensorCard(sensor) {
  const key = 's' + sensor.port;
  let card = cards.get(key);
  if (!card) {
    card = document.getElementById('sensor-template').content.firstElementChild.cloneNode(true);
    card.dataset.port = sensor.port;
    card.dataset.kind = sensor.kind;
    card.classList.add(sensor.kind);
    el(card, '.kind').textContent = LABELS[sensor.kind] || sensor.kind;
    el(card, '.port').textContent = sensor.port;
    const slider = el(card, '.slider');
    slider.min = sensor.rangeMinimum;
    slider.max = sensor.rangeMaximum;
    slider.step = sensor.kind === 'Temperature' || sensor.kind === 'Humidity' ? '0.5' : '1';
    slider.setAttribute('aria-label', `${LABELS[sensor.kind]} on port ${sensor.port}`);
    slider.addEventListener('input', () => {
      // Touching the slider takes over from the curve or the random values: the sensor holds what it shows.
      card.dataset.editing = 'true';
      card.dataset.mode = 'Fixed';
      el(card, '.mode').value = 'Fixed';
      el(card, '.current').textContent = slider.value;
      send('PUT', `/api/hardware/sensors/${sensor.port}`, { mode: 'Fixed', value: Number(slider.value) }).catch(e => show(e.message));
    });
    slider.addEventListener('change', () => { delete card.dataset.editing; });
    el(card, '.mode').addEventListener('change', e => {
      card.dataset.mode = e.target.value;
      if (e.target.value !== 'Replay') {
        send('PUT', `/api/hardware/sensors/${sensor.port}`, { mode: e.target.value }).catch(err => show(err.message));
      }
    });
    for (const name of ['min', 'max']) {
      el(card, '.' + name).addEventListener('change', () => send('PUT', `/api/hardware/sensors/${sensor.port}`, {
        minimum: Number(el(card, '.min').value), maximum: Number(el(card, '.max').value),
      }).catch(e => show(e.message)));
    }
    el(card, '.step').addEventListener('change', e =>
      send('PUT', `/api/hardware/sensors/${sensor.port}`, { replayStepSeconds: Number(e.target.value) }).catch(err => show(err.message)));
    el(card, '.csv').addEventListener('change', async e => {
      const file = e.target.files[0];
      if (!file) return;
      try {
        const result = await send('POST', `/api/hardware/sensors/${sensor.port}/replay`, await file.text(), 'text/csv');
        el(card, '.replay-count').textContent = `${result.replayCount} values from ${file.name}`;
      } catch (error) {
        el(card, '.replay-count').textContent = error.message;
      }
    });
    el(card, '.remove').addEventListener('click', () => send('DELETE', `/api/hardware/ports/${sensor.port}`).catch(e => show(e.message)));
    cards.set(key, card);
  }
  card.dataset.mode = card.dataset.mode && card.contains(document.activeElement) ? card.dataset.mode : sensor.mode;
  if (document.activeElement !== el(card, '.mode')) el(card, '.mode').value = sensor.mode;
  const current = sensor.kind === 'Button' ? (sensor.current ? 'pressed' : 'released') : `${sensor.current}${sensor.unit ? ' ' + sensor.unit : ''}`;
  if (!card.dataset.editing) {
    el(card, '.current').textContent = current;
    el(card, '.slider').value = sensor.mode === 'Fixed' ? sensor.value : sensor.current;
  }
  el(card, '.current').dataset.value = sensor.current;
  for (const [name, value] of [['min', sensor.minimum], ['max', sensor.maximum], ['step', sensor.replayStepSeconds]]) {
    const input = el(card, '.' + name);
    if (document.activeElement !== input) input.value = value;
  }
  if (sensor.replayCount && !el(card, '.replay-count').textContent) el(card, '.replay-count').textContent = `${sensor.replayCount} values`;
  return card;
}

function actuatorCard(actuator) {
  const key = 'a' + actuator.port;
  let card = cards.get(key);
  if (!card) {
    card = document.getElementById('actuator-template').content.firstElementChild.cloneNode(true);
    card.dataset.port = actuator.port;
    card.dataset.kind = actuator.kind;
    card.classList.add(actuator.kind);
    el(card, '.kind').textContent = LABELS[actuator.kind] || actuator.kind;
    el(card, '.port').textContent = actuator.port;
    el(card, '.lamp').setAttribute('aria-label', `${LABELS[actuator.kind]} on port ${actuator.port}`);
    el(card, '.remove').addEventListener('click', () => send('DELETE', `/api/hardware/ports/${actuator.port}`).catch(e => show(e.message)));
    cards.set(key, card);
  }
  el(card, '.lamp').dataset.on = String(actuator.on);
  card.dataset.on = String(actuator.on);
  el(card, '.state').textContent = actuator.kind === 'Relay' ? (actuator.on ? 'closed' : 'open') : (actuator.on ? 'on' : 'off');
  return card;
}

function render(view) {
  board = view;
  const seen = new Set();
  const sensors = view.sensors.map(s => { seen.add('s' + s.port); return sensorCard(s); });
  const actuators = view.actuators.map(a => { seen.add('a' + a.port); return actuatorCard(a); });
  for (const key of [...cards.keys()]) if (!seen.has(key)) { cards.get(key).remove(); cards.delete(key); }
  syncChildren(document.getElementById('sensors'), sensors);
  syncChildren(document.getElementById('actuators'), actuators);
  const used = new Set([...view.sensors, ...view.actuators].map(p => p.port));
  const ports = document.getElementById('add-port');
  const chosen = ports.value;
  ports.replaceChildren(...Array.from({ length: 26 }, (_, i) => i).filter(i => !used.has(i)).map(i => new Option(String(i), String(i))));
  if ([...ports.options].some(o => o.value === chosen)) ports.value = chosen;
  document.getElementById('contact').textContent = view.lastContact
    ? `Last device contact over the CounterFit API: ${new Date(view.lastContact).toLocaleTimeString()}.` : '';
}

// Keeps existing cards in place (an open file picker or a dragged slider must survive an update).
function syncChildren(parent, children) {
  children.forEach((child, i) => {
    if (parent.children[i] !== child) parent.insertBefore(child, parent.children[i] || null);
  });
}

document.getElementById('add').addEventListener('submit', async e => {
  e.preventDefault();
  const [what, kind] = document.getElementById('add-kind').value.split(':');
  const port = document.getElementById('add-port').value;
  if (port === '') { show('every port is in use'); return; }
  try {
    await send('PUT', `/api/hardware/${what}s/${port}`, { kind });
    show(`${LABELS[kind]} added on port ${port}`);
  } catch (error) {
    show(error.message);
  }
});

document.getElementById('host').textContent = location.hostname;
document.getElementById('port').textContent = location.port || (location.protocol === 'https:' ? '443' : '80');

const pill = document.getElementById('connection');
const events = new EventSource('/api/events');
events.addEventListener('open', () => { pill.dataset.state = 'open'; pill.textContent = 'live'; });
events.addEventListener('error', () => { pill.dataset.state = 'error'; pill.textContent = 'reconnecting…'; });
events.addEventListener('hardware', e => render(JSON.parse(e.data)));

// Manual overrides on the device cards: while "LED on for 10 min" holds a device's rule back, its card says so, until
// when, and offers to end it. State comes from /api/overrides, then from the live stream's "override" events.
'use strict';

const overrides = new Map();

function overrideBox(d) {
  let box = d.node.querySelector('.override');
  if (box) return box;
  box = document.createElement('div');
  box.className = 'override';
  box.setAttribute('role', 'status');
  box.hidden = true;
  const text = document.createElement('span');
  text.className = 'override-text';
  const end = document.createElement('button');
  end.type = 'button';
  end.className = 'end-override';
  end.textContent = 'End override';
  end.addEventListener('click', () => endOverride(d.id, box));
  box.append(text, end);
  const manual = d.node.querySelector('.manual');
  manual.parentNode.insertBefore(box, manual.nextSibling);
  return box;
}

function renderOverride(id) {
  const d = state.devices.get(id);
  if (!d) return;
  const box = overrideBox(d);
  const o = overrides.get(id);
  const active = o && o.until > Date.now();
  box.hidden = !active;
  box.dataset.active = String(!!active);
  if (!active) return;
  const until = new Date(o.until);
  box.dataset.until = until.toISOString();
  box.querySelector('.override-text').textContent =
    `Override: LED ${o.ledOn ? 'on' : 'off'} until ${until.toLocaleTimeString()}. The server's rule is paused for this device.`;
}

function setOverride(id, ledOn, until) {
  if (until) overrides.set(id, { ledOn, until: Date.parse(until) });
  else overrides.delete(id);
  renderOverride(id);
}

async function endOverride(id, box) {
  const button = box.querySelector('.end-override');
  button.disabled = true;
  try {
    const response = await fetch(`/api/devices/${encodeURIComponent(id)}/override`, { method: 'DELETE' });
    // 404: it had already ended; either way the rule decides now.
    if (response.ok || response.status === 404) setOverride(id, null, null);
  } finally {
    button.disabled = false;
  }
}

async function loadOverrides() {
  try {
    const response = await fetch('/api/overrides');
    if (!response.ok) return;
    for (const o of await response.json()) {
      device(o.deviceId);
      setOverride(o.deviceId, o.ledOn, o.until);
    }
  } catch (error) {
    console.warn(error);
  }
}

state.events.addEventListener('override', e => {
  const o = JSON.parse(e.data);
  setOverride(o.id, o.ledOn, o.until);
});
// The page hides an override whose time is up without waiting for the server's next word.
setInterval(() => { for (const id of overrides.keys()) renderOverride(id); }, 1000);
loadOverrides();

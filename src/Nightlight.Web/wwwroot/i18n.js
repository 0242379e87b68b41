// The pages in English or Simplified Chinese: chosen from the browser's languages, switchable in the header, kept in
// localStorage. The pages' scripts write English; every text they put on the page is translated as it appears (a
// MutationObserver), so they need not know about languages. Dates and times use the browser's locale either way.
'use strict';

const LANGUAGES = { en: 'English', 'zh-CN': '简体中文' };

function chosenLanguage() {
  const saved = localStorage.getItem('nightlight.lang');
  if (saved && LANGUAGES[saved]) return saved;
  // The first of the browser's languages that the pages have decides.
  const first = (navigator.languages || [navigator.language]).find(l => /^(zh|en)\b/i.test(l)) || 'en';
  return /^zh/i.test(first) ? 'zh-CN' : 'en';
}

// English text as the pages write it (whitespace collapsed) → Chinese, in the lesson's own terms.
const ZH = {
  'Nightlight dashboard': 'Nightlight 仪表板',
  'Nightlight virtual hardware': 'Nightlight 虚拟硬件',
  'Dashboard': '仪表板',
  'Virtual hardware': '虚拟硬件',
  'connecting…': '正在连接…',
  'live': '实时',
  'reconnecting…': '正在重新连接…',
  'Time range': '时间范围',
  'Live (last 5 minutes)': '实时（最近 5 分钟）',
  'Last hour': '最近 1 小时',
  'Last 6 hours': '最近 6 小时',
  'Last 24 hours': '最近 24 小时',
  'Last 7 days': '最近 7 天',
  'light': '光照',
  'threshold': '阈值',
  'LED on': 'LED 打开',
  'No device has sent telemetry yet. Start one with': '还没有设备发送遥测数据。可以用',
  ', or open': '启动一个，或打开',
  'the virtual hardware': '虚拟硬件',
  'online': '在线',
  'offline': '离线',
  'deciding locally': '设备自行决定',
  'server decides': '服务器决定',
  'ON': '开',
  'off': '关',
  'on': '开',
  'LED on for 10 min': '打开 LED 10 分钟',
  'LED off for 10 min': '关闭 LED 10 分钟',
  'Command log': '命令日志',
  'time': '时间',
  'command': '命令',
  'source': '来源',
  'status': '状态',
  'sending…': '正在发送…',
  'End override': '结束手动控制',
  'MQTT messages': 'MQTT 消息',
  'every message through the broker, as it passes': '经过代理的每条消息，实时显示',
  'Device': '设备',
  'all devices': '所有设备',
  'Topic': '主题',
  'Pause': '暂停',
  'Resume': '继续',
  'Clear': '清除',
  'direction': '方向',
  'topic': '主题',
  'payload': '有效负载',
  'retained': '保留',
  'device → server': '设备 → 服务器',
  'server → device': '服务器 → 设备',
  'yes': '是',
  'no': '否',
  'Sensors': '传感器',
  'Actuators': '执行器',
  'Add a part': '添加部件',
  'Type': '类型',
  'Port': '端口',
  'port': '端口',
  'Add': '添加',
  'Light': '光照',
  'Temperature': '温度',
  'Humidity': '湿度',
  'Soil moisture': '土壤湿度',
  'Button': '按钮',
  'Relay': '继电器',
  'Value from': '数值来源',
  'slider': '滑块',
  'random between min and max': '在最小值和最大值之间随机',
  'day/night curve': '昼夜曲线',
  'CSV file replay': '回放 CSV 文件',
  'min': '最小值',
  'max': '最大值',
  'CSV file': 'CSV 文件',
  'seconds per value': '每个值的秒数',
  'pressed': '按下',
  'released': '松开',
  'closed': '闭合',
  'open': '断开',
  'Remove': '移除',
  'every port is in use': '所有端口都已占用',
  'Sensors and actuators on numbered ports, like CounterFit. The nightlight reads the light sensor on port 0 and switches the LED on port 5. Device code can use them over CounterFit\'s API at this address':
    '带编号端口的传感器和执行器，就像 CounterFit。夜灯从端口 0 读取光传感器，并开关端口 5 上的 LED。设备代码可以通过此地址上的 CounterFit API 使用它们',
};

const ZH_PATTERNS = [
  [/^last reading (.+)$/, (m) => `最近读数 ${m[1]}`],
  [/^Override: LED (on|off) until (.+)\. The server's rule is paused for this device\.$/,
    (m) => `手动控制：LED ${m[1] === 'on' ? '打开' : '关闭'}，直到 ${m[2]}。服务器的规则对此设备暂停。`],
  [/^LED (on|off) sent$/, (m) => `已发送：LED ${m[1] === 'on' ? '打开' : '关闭'}`],
  [/^from (.+)$/, (m) => `来自 ${m[1]}`],
  [/^(\d+) shown$/, (m) => `显示 ${m[1]} 条`],
  [/^paused, (\d+) new$/, (m) => `已暂停，${m[1]} 条新消息`],
  [/^(\d+) left out at high rates$/, (m) => `速率过高，省略 ${m[1]} 条`],
];

const language = chosenLanguage();

function translate(text) {
  const key = text.replace(/\s+/g, ' ').trim();
  if (!key) return null;
  if (Object.hasOwn(ZH, key)) return ZH[key];
  // Joined parts, such as the message view's count: "12 shown · paused, 3 new".
  if (key.includes(' · ')) {
    const parts = key.split(' · ').map(part => translate(part) ?? part);
    return parts.join(' · ');
  }
  for (const [pattern, write] of ZH_PATTERNS) {
    const m = key.match(pattern);
    if (m) return write(m);
  }
  return null;
}

function translateNode(node) {
  if (node.nodeType === Node.TEXT_NODE) {
    // What devices and people send (ids, topics, payloads) and code is shown as it is.
    if (node.parentElement && node.parentElement.closest('script, style, code, .payload, .topic, .device-id, #message-device option:not([value=""])')) return;
    const zh = translate(node.nodeValue);
    if (zh !== null && zh !== node.nodeValue.trim()) {
      const lead = node.nodeValue.match(/^\s*/)[0];
      const trail = node.nodeValue.match(/\s*$/)[0];
      node.nodeValue = lead + zh + trail;
    }
    return;
  }
  if (node.nodeType !== Node.ELEMENT_NODE) return;
  for (const name of ['title', 'placeholder', 'aria-label']) {
    const value = node.getAttribute(name);
    const zh = value && translate(value);
    if (zh) node.setAttribute(name, zh);
  }
  if (node.tagName === 'TEMPLATE') translateNode(node.content);
  for (const child of node.childNodes) translateNode(child);
}

function languageSwitch() {
  const select = document.createElement('select');
  select.id = 'language';
  select.setAttribute('aria-label', 'Language / 语言');
  for (const [value, name] of Object.entries(LANGUAGES)) {
    const option = document.createElement('option');
    option.value = value;
    option.textContent = name;
    option.lang = value;
    select.appendChild(option);
  }
  select.value = language;
  select.addEventListener('change', () => {
    localStorage.setItem('nightlight.lang', select.value);
    location.reload();
  });
  const header = document.querySelector('header');
  header.insertBefore(select, document.getElementById('connection'));
}

document.documentElement.lang = language;
document.addEventListener('DOMContentLoaded', languageSwitch);
if (language === 'zh-CN') {
  document.title = translate(document.title) ?? document.title;
  const observer = new MutationObserver(records => {
    for (const record of records) {
      if (record.type === 'characterData') translateNode(record.target);
      for (const node of record.addedNodes) translateNode(node);
    }
  });
  observer.observe(document.documentElement, { childList: true, characterData: true, subtree: true });
  document.addEventListener('DOMContentLoaded', () => translateNode(document.body));
}

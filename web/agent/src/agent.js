// The waswitch agent page: a JsSIP phone registered over SIP over WebSocket at /sip, the
// agent's presence (/agent/api/presence), an incoming-call card for WhatsApp customers
// (their name and number, the queue and IVR path the call came through), call controls,
// and a "Call customer" box that checks the customer's call permission, requests it, and
// places the call when it is granted.
//
// For automation the page takes ?user=&password=&autoanswer=1 and keeps its state in
// window.waswitchAgent = {registered, presence, calls: [{id, state, remote}], heard}.
'use strict';

const JsSIP = require('jssip/lib/JsSIP');

const $ = (id) => document.getElementById(id);
const agent = {
  registered: false,
  presence: 'offline',
  calls: [],
  // The strongest frequency in the customer's audio, Hz (and its level, dBFS).
  heard: null,
  error: null,
};
window.waswitchAgent = agent;

let ua = null;
let creds = null;
let autoanswer = false;
let current = null;
let meter = null;

function showError(text) {
  agent.error = text;
  $('error').textContent = text;
  $('error').hidden = !text;
}

function api(method, path, body) {
  return fetch(`/agent/api${path}`, {
    method,
    headers: {
      Authorization: `Basic ${btoa(`${creds.user}:${creds.password}`)}`,
      'Content-Type': 'application/json',
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  }).then(async (r) => {
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = { error: text }; }
    if (!r.ok) throw new Error((json && json.error) || `${r.status}`);
    return json;
  });
}

// The current call's media counters (RTCPeerConnection.getStats): what the page sends
// (and its microphone's level) and what it receives.
agent.stats = async () => {
  const pc = current && current.connection;
  if (!pc) return null;
  const out = { sent: null, received: null, microphone: null };
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'audio') out.sent = { packets: r.packetsSent, bytes: r.bytesSent };
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.received = { packets: r.packetsReceived, lost: r.packetsLost, level: r.audioLevel };
    }
    if (r.type === 'media-source' && r.kind === 'audio') out.microphone = { level: r.audioLevel };
  });
  return out;
};

function setPresence(presence) {
  agent.presence = presence;
  const b = $('presence');
  b.textContent = presence.replace('_', '-');
  b.className = `pill ${presence === 'available' ? 'available' : 'off'}`;
}

async function refreshPresence() {
  try {
    const me = await api('GET', '/me');
    setPresence(me.presence);
    $('who').textContent = me.display_name || me.user;
  } catch (e) {
    showError(`presence: ${e.message}`);
  }
}

function record(session, direction, request) {
  const remote = session.remote_identity;
  const header = (name) => (request && request.getHeader ? request.getHeader(name) : null) || null;
  const entry = {
    id: session.id,
    state: direction === 'incoming' ? 'ringing' : 'calling',
    direction,
    remote: remote ? remote.uri.user : '',
    name: (remote && remote.display_name) || '',
    queue: header('X-WA-Queue'),
    ivrPath: header('X-WA-IVR-Path'),
  };
  agent.calls.push(entry);
  return entry;
}

function show(section, visible) {
  $(section).hidden = !visible;
}

function listen(session) {
  const pc = session.connection;
  const attach = () => {
    const receivers = pc.getReceivers().filter((r) => r.track && r.track.kind === 'audio');
    if (!receivers.length) return;
    const stream = new MediaStream(receivers.map((r) => r.track));
    const audio = $('remote');
    audio.srcObject = stream;
    audio.play().catch(() => {});
    startMeter(stream);
  };
  if (pc) {
    pc.addEventListener('track', attach);
    attach();
  }
}

function startMeter(stream) {
  stopMeter();
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  source.connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const hzPerBin = context.sampleRate / analyser.fftSize;
  const timer = setInterval(() => {
    analyser.getFloatFrequencyData(bins);
    let best = 0;
    for (let i = 1; i < bins.length; i += 1) if (bins[i] > bins[best]) best = i;
    const db = bins[best];
    agent.heard = db > -70 ? { hz: Math.round(best * hzPerBin), db: Math.round(db) } : null;
    $('heard').textContent = agent.heard ? `${agent.heard.hz} Hz` : 'silence';
  }, 200);
  context.resume().catch(() => {});
  meter = { context, timer };
}

function stopMeter() {
  if (!meter) return;
  clearInterval(meter.timer);
  meter.context.close().catch(() => {});
  meter = null;
}

let clock = null;
function startClock() {
  const started = Date.now();
  clearInterval(clock);
  clock = setInterval(() => {
    const s = Math.floor((Date.now() - started) / 1000);
    $('call-timer').textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  }, 500);
}

function track(session, entry) {
  current = session;
  const ended = (why) => {
    entry.state = 'ended';
    entry.cause = why;
    if (current === session) current = null;
    clearInterval(clock);
    stopMeter();
    show('incoming', false);
    show('incall', false);
    $('hold').textContent = 'Hold';
    $('mute').textContent = 'Mute';
    refreshPresence();
  };
  session.on('progress', () => {
    if (entry.direction === 'outgoing') $('call-state').textContent = 'ringing';
  });
  session.on('confirmed', () => {
    entry.state = 'answered';
    show('incoming', false);
    show('incall', true);
    $('call-name').textContent = entry.name;
    $('call-number').textContent = entry.remote;
    $('call-state').textContent = entry.queue ? `from queue ${entry.queue}` : '';
    startClock();
    listen(session);
    refreshPresence();
  });
  ['createofferfailed', 'createanswerfailed', 'setlocaldescriptionfailed', 'setremotedescriptionfailed']
    .forEach((what) => session.on(`peerconnection:${what}`, (err) => {
      showError(`${what.replace('failed', '')} failed: ${err && (err.message || err.name || err)}`);
    }));
  session.on('hold', () => { entry.held = true; $('hold').textContent = 'Resume'; });
  session.on('unhold', () => { entry.held = false; $('hold').textContent = 'Hold'; });
  session.on('ended', (e) => ended(e.cause));
  session.on('failed', (e) => {
    const response = e.message && e.message.status_code ? e.message : null;
    if (response) {
      entry.status = response.status_code;
      entry.reason = response.reason_phrase;
      if (entry.direction === 'outgoing') {
        showError(`call refused: ${response.status_code} ${response.reason_phrase}`);
      }
    }
    ended(e.cause);
  });
}

function answer(session) {
  session.answer({ mediaConstraints: { audio: true, video: false } });
}

function onSession(e) {
  const { session } = e;
  if (e.originator === 'local') return;
  if (current) {
    session.terminate({ status_code: 486, reason_phrase: 'Busy Here' });
    return;
  }
  const entry = record(session, 'incoming', e.request);
  track(session, entry);
  $('in-name').textContent = entry.name || 'WhatsApp customer';
  $('in-number').textContent = entry.remote;
  $('in-queue').textContent = entry.queue || '-';
  $('in-path').textContent = entry.ivrPath ? `via ${entry.ivrPath}` : '';
  show('incoming', true);
  $('answer').onclick = () => answer(session);
  $('decline').onclick = () => session.terminate({ status_code: 603, reason_phrase: 'Decline' });
  if (autoanswer) answer(session);
}

function start(user, password) {
  creds = { user, password };
  show('login', false);
  show('outbound', true);
  $('presence').disabled = false;
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new JsSIP.WebSocketInterface(`${scheme}://${window.location.host}/sip`);
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: `sip:${user}@${window.location.hostname}`,
    password,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'waswitch-agent',
  });
  ua.on('registered', () => {
    agent.registered = true;
    $('registration').textContent = 'registered';
    $('registration').className = 'pill';
    refreshPresence();
  });
  const unregistered = (text) => {
    agent.registered = false;
    $('registration').textContent = text;
    $('registration').className = 'pill off';
    setPresence('offline');
  };
  ua.on('unregistered', () => unregistered('not registered'));
  ua.on('registrationFailed', (e) => {
    unregistered('registration failed');
    showError(`registration failed: ${e.cause}`);
  });
  ua.on('newRTCSession', onSession);
  ua.start();
}

function outbound() {
  let wa = null;
  const permission = $('permission');
  const check = async () => {
    const state = await api('GET', `/permissions/${wa}`);
    agent.permission = state;
    const allowed = state.may_call === true;
    permission.textContent = allowed
      ? `permission granted${state.expires_at ? ` until ${state.expires_at}` : ''}`
      : `no permission to call (${state.status || 'none'})`;
    $('call').disabled = !allowed;
    $('request').disabled = allowed;
  };
  $('outbound-form').onsubmit = (e) => {
    e.preventDefault();
    wa = new FormData(e.target).get('wa_id').replace(/^\+/, '');
    check().catch((err) => { permission.textContent = err.message; });
  };
  $('request').onclick = async () => {
    try {
      await api('POST', `/permissions/${wa}/request`, {});
      permission.textContent = 'permission requested: the customer was asked in WhatsApp';
      agent.permissionRequested = wa;
    } catch (err) {
      permission.textContent = `not requested: ${err.message}`;
    }
  };
  $('call').onclick = () => {
    if (!ua || current) return;
    showError('');
    const session = ua.call(`sip:+${wa}@${window.location.hostname}`, {
      mediaConstraints: { audio: true, video: false },
    });
    const entry = record(session, 'outgoing', null);
    entry.remote = wa;
    track(session, entry);
    show('incall', true);
    $('call-name').textContent = 'WhatsApp customer';
    $('call-number').textContent = wa;
    $('call-state').textContent = 'calling';
  };
}

function controls() {
  $('hangup').onclick = () => current && current.terminate();
  $('mute').onclick = () => {
    if (!current) return;
    if (current.isMuted().audio) {
      current.unmute({ audio: true });
      $('mute').textContent = 'Mute';
    } else {
      current.mute({ audio: true });
      $('mute').textContent = 'Unmute';
    }
  };
  $('hold').onclick = () => {
    if (!current) return;
    if (current.isOnHold().local) current.unhold(); else current.hold();
  };
  const pad = $('dtmf');
  '123456789*0#'.split('').forEach((d) => {
    const b = document.createElement('button');
    b.textContent = d;
    b.onclick = () => current && current.sendDTMF(d, { transportType: 'RFC2833' });
    pad.appendChild(b);
  });
  $('presence').onclick = async () => {
    const next = agent.presence === 'offline' ? 'available' : 'offline';
    try {
      const me = await api('PUT', '/presence', { presence: next });
      setPresence(me.presence);
    } catch (e) {
      showError(`presence: ${e.message}`);
    }
  };
}

controls();
outbound();
const params = new URLSearchParams(window.location.search);
autoanswer = params.get('autoanswer') === '1';
if (params.get('user') && params.get('password')) {
  start(params.get('user'), params.get('password'));
} else {
  $('login-form').onsubmit = (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    autoanswer = autoanswer || form.get('autoanswer') === 'on';
    start(form.get('user'), form.get('password'));
  };
}

// A JsSIP phone under Node (no browser): WebRTC from @roamhq/wrtc, SIP over WebSocket.
// It registers USER with PASSWORD at URL, then either waits for a call and answers it
// (`answer`), or calls TARGET (`call TARGET`). While the call lasts it sends a SEND_HZ tone
// and measures how much of what it hears is EXPECT_HZ; after HOLD_MS it hangs up (unless
// the other side did first). One JSON line reports what happened; exit 0 when the call
// was answered and the expected tone was heard, 1 otherwise.
//
//   node web/agent/node/phone.js ws://127.0.0.1:8080/sip bob bob-pass answer 1000 440 4000
//   node web/agent/node/phone.js ws://127.0.0.1:8080/sip bob bob-pass call +4915100000001 1000 440 4000
'use strict';

const args = process.argv.slice(2);
const [url, user, password, mode] = args;
const target = mode === 'call' ? args[4] : null;
const rest = mode === 'call' ? args.slice(5) : args.slice(4);
const [sendHz, expectHz, holdMs] = rest.map(Number);
if (!url || !user || !password || !['answer', 'call'].includes(mode) || !holdMs) {
  console.error('usage: phone.js WS_URL USER PASSWORD (answer | call TARGET) SEND_HZ EXPECT_HZ HOLD_MS');
  process.exit(2);
}

const wrtc = require('@roamhq/wrtc');
// JsSIP takes the standard browser interfaces (and looks for them on `window`).
globalThis.window = globalThis;
globalThis.WebSocket = require('ws');
globalThis.RTCPeerConnection = wrtc.RTCPeerConnection;
globalThis.RTCSessionDescription = wrtc.RTCSessionDescription;
globalThis.RTCIceCandidate = wrtc.RTCIceCandidate;
globalThis.MediaStream = wrtc.MediaStream;
const JsSIP = require('jssip');

const report = {
  registered: false, answered: false, ended_by: null, frames_in: 0, tone_share: 0, error: null,
};
let finished = false;
function finish(error) {
  if (finished) return;
  finished = true;
  if (error) report.error = error;
  console.log(JSON.stringify(report));
  const ok = !report.error && report.answered && report.tone_share > 0.5;
  setTimeout(() => process.exit(ok ? 0 : 1), 300);
}

// The microphone: SEND_HZ at 48 kHz, 10 ms a frame.
const source = new wrtc.nonstandard.RTCAudioSource();
const track = source.createTrack();
const stream = new wrtc.MediaStream([track]);
let phase = 0;
const micTimer = setInterval(() => {
  const samples = new Int16Array(480);
  for (let i = 0; i < samples.length; i += 1) {
    samples[i] = Math.round(12000 * Math.sin(phase));
    phase += (2 * Math.PI * sendHz) / 48000;
  }
  source.onData({ samples, sampleRate: 48000, bitsPerSample: 16, channelCount: 1, numberOfFrames: 480 });
}, 10);

// What is heard: the share of its power at EXPECT_HZ (Goertzel against the total), over
// the frames after the first half second.
let atTone = 0;
let total = 0;
function hear(receiverTrack) {
  const sink = new wrtc.nonstandard.RTCAudioSink(receiverTrack);
  sink.ondata = ({ samples, sampleRate }) => {
    report.frames_in += 1;
    if (report.frames_in < 50) return;
    const w = (2 * Math.PI * expectHz) / sampleRate;
    const coeff = 2 * Math.cos(w);
    let s1 = 0;
    let s2 = 0;
    let energy = 0;
    for (let i = 0; i < samples.length; i += 1) {
      const x = samples[i] / 32768;
      const s0 = x + coeff * s1 - s2;
      s2 = s1;
      s1 = s0;
      energy += x * x;
    }
    const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone's Goertzel power is N/2 times its energy.
    atTone += (2 * power) / samples.length;
    total += energy;
    report.tone_share = total > 0 ? Math.min(1, atTone / total) : 0;
  };
  return sink;
}

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(url)],
  uri: `sip:${user}@waswitch`,
  password,
  register: true,
  session_timers: false,
});

function carry(session) {
  let sink = null;
  const listen = () => {
    const pc = session.connection;
    const receiver = pc && pc.getReceivers().find((r) => r.track && r.track.kind === 'audio');
    if (receiver && !sink) sink = hear(receiver.track);
  };
  session.on('confirmed', () => {
    report.answered = true;
    listen();
    setTimeout(() => {
      if (!session.isEnded()) {
        report.ended_by = 'phone';
        session.terminate();
      }
    }, holdMs);
  });
  session.on('ended', (e) => {
    if (!report.ended_by) report.ended_by = e.originator === 'local' ? 'phone' : 'remote';
    if (sink) sink.stop();
    clearInterval(micTimer);
    track.stop();
    ua.stop();
    setTimeout(() => finish(null), 200);
  });
  session.on('failed', (e) => {
    clearInterval(micTimer);
    ua.stop();
    finish(`call failed: ${e.cause}${e.message && e.message.status_code ? ` ${e.message.status_code}` : ''}`);
  });
}

ua.on('registered', () => {
  report.registered = true;
  console.error('registered');
  if (mode === 'call') {
    const session = ua.call(target, { mediaStream: stream, pcConfig: { iceServers: [] } });
    carry(session);
  }
});
ua.on('registrationFailed', (e) => finish(`registration failed: ${e.cause}`));
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote' || mode !== 'answer') return;
  carry(e.session);
  e.session.answer({ mediaStream: stream, pcConfig: { iceServers: [] } });
});
setTimeout(() => finish('no call in time'), 30000 + holdMs);
ua.start();

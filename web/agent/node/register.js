// A JsSIP user agent under Node: registers USER with PASSWORD over SIP over WebSocket at
// URL, then unregisters. Prints what happened; exits 0 once registered and unregistered,
// 1 when the registration fails or nothing happens in time.
//
//   node web/agent/node/register.js ws://127.0.0.1:8080/sip alice alice-pass
'use strict';

const [url, user, password] = process.argv.slice(2);
if (!url || !user || !password) {
  console.error('usage: register.js WS_URL USER PASSWORD');
  process.exit(2);
}
// Node 20 has no WebSocket of its own; JsSIP takes the standard interface.
globalThis.WebSocket = require('ws');
const JsSIP = require('jssip');

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(url)],
  uri: `sip:${user}@waswitch`,
  password,
  register: true,
  register_expires: 120,
});
let finished = false;
const finish = (code, what) => {
  if (finished) return;
  finished = true;
  console.log(what);
  setTimeout(() => process.exit(code), 300);
};
ua.on('registered', () => {
  console.log('registered');
  ua.unregister();
});
ua.on('unregistered', () => finish(0, 'unregistered'));
ua.on('registrationFailed', (e) =>
  finish(1, `registration failed: ${e.cause}${e.response ? ` ${e.response.status_code}` : ''}`));
setTimeout(() => finish(1, 'no answer in time'), 8000);
ua.start();

// Node.js reference peer for the rtserver load harness (the `node-ws` peer).
// Speaks the bench subset of the rtserver protocol with the `ws` package:
// welcome + authenticated on accept (HS256 JWT from ?token=, secret RTSERVER_JWT_SECRET),
// subscribe -> subscribed{seq}, publish -> ack{seq} + message{seq} to every member
// (ws.send per member, the usual ws broadcast loop), unsubscribe, ping -> pong.
// Usage: node ws_peer.js --port 0   (prints {"event":"listening","port":N} on stderr)
'use strict';
const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const secret = process.env.RTSERVER_JWT_SECRET;
if (!secret) {
  console.error('RTSERVER_JWT_SECRET is not set. Required action: export the HS256 secret');
  process.exit(2);
}
const argv = process.argv.slice(2);
function flag(name, dflt) {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
}
const host = flag('--host', '127.0.0.1');
const port = parseInt(flag('--port', '0'), 10);
const backlog = parseInt(flag('--backlog', '4096'), 10);
if (!host.startsWith('127.')) {
  console.error('peers listen on 127.0.0.0/8 only. Required action: use --host 127.x.y.z');
  process.exit(2);
}

function b64url(buf) {
  return buf.toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}
function verify(token) {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('malformed token');
  const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
  if (header.alg !== 'HS256') throw new Error('alg must be HS256');
  const sig = b64url(crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest());
  const a = Buffer.from(sig), b = Buffer.from(parts[2]);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) throw new Error('bad signature');
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) throw new Error('expired');
  if (typeof claims.sub !== 'string') throw new Error('sub missing');
  return claims;
}
function globToRegex(g) {
  return new RegExp('^' + g.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$');
}

const rooms = new Map(); // name -> {seq, members:Set}
const wss = new WebSocketServer({ host, port, path: '/ws', perMessageDeflate: false, backlog });

wss.on('connection', (ws, req) => {
  let claims;
  try {
    const token = new URL(req.url, 'http://x').searchParams.get('token');
    if (!token) throw new Error('missing token query parameter');
    claims = verify(token);
  } catch (e) {
    ws.send(JSON.stringify({ type: 'error', code: 'unauthorized', message: 'token rejected: ' + e.message,
      action: 'Required action: send a valid HS256 token' }));
    ws.close(1008, 'unauthorized');
    return;
  }
  const grants = (claims.rooms || []).map(globToRegex);
  const perms = claims.perms || [];
  const fromJson = JSON.stringify(claims.sub);
  const joined = new Set();
  ws.send(JSON.stringify({ type: 'connection', status: 'connected', connection_id: crypto.randomUUID(),
    worker: process.pid, server_time: new Date().toISOString() }));
  ws.send(JSON.stringify({ type: 'authenticated', user: claims.sub, permissions: perms, anonymous: false }));
  const error = (code, message, id) => ws.send(JSON.stringify({ type: 'error', code, message,
    action: 'Required action: fix the request', id }));
  ws.on('message', (raw, isBinary) => {
    let msg;
    try { msg = JSON.parse(raw.toString()); } catch (e) { error('bad_json', 'frame is not JSON', null); return; }
    const id = msg.id === undefined ? null : msg.id;
    if (msg.type === 'ping') { ws.send(JSON.stringify({ type: 'pong', id })); return; }
    const name = msg.room;
    if (!['subscribe', 'unsubscribe', 'publish'].includes(msg.type) || typeof name !== 'string') {
      error('bad_message', 'unsupported message type', id); return;
    }
    if (!grants.some((r) => r.test(name))) { error('forbidden', 'no grant for room', id); return; }
    let room = rooms.get(name);
    if (msg.type === 'subscribe') {
      if (!room) { room = { seq: 0, members: new Set() }; rooms.set(name, room); }
      room.members.add(ws); joined.add(name);
      ws.send(JSON.stringify({ type: 'subscribed', room: name, seq: room.seq, id }));
    } else if (msg.type === 'unsubscribe') {
      if (room) room.members.delete(ws);
      joined.delete(name);
      ws.send(JSON.stringify({ type: 'unsubscribed', room: name, id }));
    } else {
      if (!perms.includes('publish')) { error('forbidden', 'publish permission missing', id); return; }
      if (!room) { room = { seq: 0, members: new Set() }; rooms.set(name, room); }
      room.seq += 1;
      const seq = room.seq;
      ws.send(JSON.stringify({ type: 'ack', room: name, seq, id }));
      const frame = '{"type":"message","room":' + JSON.stringify(name) + ',"from":' + fromJson +
        ',"data":' + JSON.stringify(msg.data) + ',"seq":' + seq + '}';
      for (const m of room.members) m.send(frame);
    }
  });
  ws.on('close', () => {
    for (const name of joined) { const r = rooms.get(name); if (r) r.members.delete(ws); }
  });
});
wss.on('listening', () => {
  console.error(JSON.stringify({ event: 'listening', logger: 'rtserver.bench.peer', port: wss.address().port,
    mode: 'node-ws', pid: process.pid }));
});
function stop() { wss.close(); for (const c of wss.clients) c.terminate(); process.exit(0); }
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

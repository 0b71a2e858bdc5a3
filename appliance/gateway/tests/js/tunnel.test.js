// guacamole-common-js (npm, the real browser client) against the gateway's
// tunnel: `Guacamole.WebSocketTunnel` and `Guacamole.Client` over a real
// WebSocket to the `tunnel_server` example, which relays to the guacd
// stand-in or runs the built-in engine on a real Xvnc.
//
// Run: cargo build -p daas-gateway --example tunnel_server, then
//   DAAS_TUNNEL_SERVER=<target>/debug/examples/tunnel_server node --test
// (the Rust integration test `js` does exactly this).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const fs = require('node:fs');
const readline = require('node:readline');

const { install, drawCalls } = require('./dom.js');
const Guacamole = install();

function serverBinary() {
    if (process.env.DAAS_TUNNEL_SERVER) return process.env.DAAS_TUNNEL_SERVER;
    const root = path.resolve(__dirname, '../../../..');
    const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
    return path.join(target, 'debug', 'examples', 'tunnel_server');
}

let server;
let base;

before(async () => {
    const bin = serverBinary();
    assert.ok(fs.existsSync(bin), `${bin} is missing: cargo build -p daas-gateway --example tunnel_server`);
    server = spawn(bin, ['--listen', '127.0.0.1:0'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = readline.createInterface({ input: server.stdout });
    base = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('tunnel_server did not start')), 20000);
        lines.on('line', (line) => {
            const m = /^LISTENING (\S+)$/.exec(line);
            if (m) { clearTimeout(timer); resolve(`ws://${m[1]}/api/v1/tunnel`); }
        });
        server.on('exit', (code) => reject(new Error(`tunnel_server exited: ${code}`)));
    });
});

after(() => {
    if (server) { server.stdin.end(); server.kill(); }
});

const CONNECTED = 3; // Guacamole.Client state
const DISCONNECTED = 5;

function query(scenario) {
    // What Guacamole.Client.connect() sends is appended by the client itself
    // only for data given to connect(); the application builds this part.
    return `scenario=${scenario}&GUAC_WIDTH=1024&GUAC_HEIGHT=768&GUAC_DPI=96`
        + '&GUAC_TIMEZONE=Europe%2FBerlin&GUAC_IMAGE=image%2Fpng&GUAC_IMAGE=image%2Fjpeg';
}

/** Resolves when `pred()` holds, polling; rejects after `ms`. */
function until(pred, ms, what) {
    return new Promise((resolve, reject) => {
        const start = Date.now();
        const tick = () => {
            if (pred()) return resolve();
            if (Date.now() - start > ms) return reject(new Error(`timed out waiting for ${what}`));
            setTimeout(tick, 10);
        };
        tick();
    });
}

test('WebSocketTunnel: uuid first, then whole instructions; pings keep it open', async () => {
    const tunnel = new Guacamole.WebSocketTunnel(base);
    const got = [];
    tunnel.oninstruction = (opcode, args) => got.push([opcode, ...args]);
    let error = null;
    tunnel.onerror = (status) => { error = status; };
    tunnel.connect(query('draw'));
    await until(() => got.some(([op]) => op === 'sync'), 10000, 'sync');
    assert.match(tunnel.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(tunnel.state, Guacamole.Tunnel.State.OPEN);
    assert.deepEqual(got.find(([op]) => op === 'name'), ['name', 'Ünïcødé desktop ✓']);
    assert.deepEqual(got[0], ['size', '0', '640', '480']);
    // The tunnel answers guacamole-common-js's pings (every 500 ms): after
    // 1.5 s of no drawing it is still OPEN, not UNSTABLE.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(tunnel.state, Guacamole.Tunnel.State.OPEN);
    assert.equal(error, null);
    tunnel.disconnect();
});

test('Client: reaches CONNECTED, draws, acknowledges frames and gets answers', async () => {
    const tunnel = new Guacamole.WebSocketTunnel(base);
    const client = new Guacamole.Client(tunnel);
    const states = [];
    client.onstatechange = (s) => states.push(s);
    let error = null;
    client.onerror = (status) => { error = status; };
    let name = null;
    client.onname = (n) => { name = n; };
    drawCalls.length = 0;
    client.connect(query('echo'));
    // Guacamole.Client is WAITING as soon as connect() returns; input goes
    // out once the tunnel is open (the uuid has arrived).
    await until(() => tunnel.state === Guacamole.Tunnel.State.OPEN, 10000, 'tunnel OPEN');
    // The stand-in answers each key with a red rect and a sync: the
    // round trip goes browser → tunnel → guacd → tunnel → browser, and the
    // first frame makes the client CONNECTED.
    client.sendKeyEvent(1, 0x61);
    client.sendKeyEvent(0, 0x61);
    await until(() => states.includes(CONNECTED), 10000, 'CONNECTED');
    await until(() => drawCalls.some(([m]) => m === 'fill'), 5000, 'drawing after a key');
    assert.equal(error, null);
    assert.equal(client.getDisplay().getWidth(), 0, 'echo scenario sends no size');
    client.disconnect();
    await until(() => states.includes(DISCONNECTED), 5000, 'DISCONNECTED');
    assert.equal(name, null);
});

test('Client: the draw scenario paints the display', async () => {
    const client = new Guacamole.Client(new Guacamole.WebSocketTunnel(base));
    const states = [];
    client.onstatechange = (s) => states.push(s);
    let name = null;
    client.onname = (n) => { name = n; };
    drawCalls.length = 0;
    client.connect(query('draw'));
    await until(() => states.includes(CONNECTED), 10000, 'CONNECTED');
    await until(() => client.getDisplay().getWidth() === 640, 5000, 'size 640');
    assert.equal(client.getDisplay().getHeight(), 480);
    assert.equal(name, 'Ünïcødé desktop ✓');
    assert.ok(drawCalls.some(([m]) => m === 'rect'), 'rect drawn');
    assert.ok(drawCalls.some(([m]) => m === 'fill'), 'cfill drawn');
    client.disconnect();
});

test('Client: text split anywhere by guacd arrives intact', async () => {
    const client = new Guacamole.Client(new Guacamole.WebSocketTunnel(base));
    const states = [];
    client.onstatechange = (s) => states.push(s);
    let name = null;
    let clip = null;
    client.onname = (n) => { name = n; };
    client.onclipboard = (stream, mimetype) => {
        // Blobs are base64 of UTF-8: decoded by guacamole-common-js.
        const reader = new Guacamole.StringReader(stream);
        let text = '';
        reader.ontext = (t) => { text += t; };
        reader.onend = () => { clip = [mimetype, text]; };
    };
    client.connect(query('split'));
    await until(() => states.includes(CONNECTED) && clip !== null, 10000, 'clipboard');
    assert.equal(name, '日本語 — Grüße ☀');
    assert.deepEqual(clip, ['text/plain', 'ä€✓,;.0']);
    client.disconnect();
});

function expectError(scenario, code) {
    return async () => {
        const client = new Guacamole.Client(new Guacamole.WebSocketTunnel(base));
        const states = [];
        client.onstatechange = (s) => states.push(s);
        let error = null;
        client.onerror = (status) => { error = status; };
        client.connect(query(scenario));
        await until(() => error !== null, 10000, `error ${code}`);
        assert.equal(error.code, code);
        await until(() => states.includes(DISCONNECTED), 5000, 'DISCONNECTED');
        assert.ok(!states.includes(CONNECTED));
    };
}

test('Client: guacd refusing gives its own status (UPSTREAM_NOT_FOUND)',
    expectError('refuse', Guacamole.Status.Code.UPSTREAM_NOT_FOUND));

test('Client: guacd down gives UPSTREAM_UNAVAILABLE',
    expectError('down', Guacamole.Status.Code.UPSTREAM_UNAVAILABLE));

test('WebSocketTunnel: the close reason carries the status (idle timeout)', async () => {
    // A bare tunnel sends nothing, not even pings until it receives: idle.
    const tunnel = new Guacamole.WebSocketTunnel(base);
    const got = [];
    tunnel.oninstruction = (opcode, args) => got.push([opcode, ...args]);
    let error = null;
    tunnel.onerror = (status) => { error = status; };
    // Stop the client's own pings so that the browser side goes silent.
    tunnel.sendMessage = () => {};
    tunnel.connect(query('idle'));
    await until(() => error !== null, 10000, 'SESSION_TIMEOUT');
    assert.equal(error.code, Guacamole.Status.Code.SESSION_TIMEOUT);
    assert.deepEqual(got.at(-1), ['error', 'Session idle for too long.', String(0x20A)]);
});

test('Client: the built-in engine on a real Xvnc draws an image', { skip: !hasXvnc() && 'Xvnc is not installed' }, async () => {
    const client = new Guacamole.Client(new Guacamole.WebSocketTunnel(base));
    const states = [];
    client.onstatechange = (s) => states.push(s);
    let error = null;
    client.onerror = (status) => { error = status; };
    drawCalls.length = 0;
    client.connect(query('xvnc'));
    await until(() => states.includes(CONNECTED) || error, 20000, 'CONNECTED');
    assert.equal(error, null);
    await until(() => client.getDisplay().getWidth() === 1024, 10000, 'size 1024');
    await until(() => drawCalls.some(([m]) => m === 'drawImage' || m === 'fill'), 10000, 'drawing');
    client.disconnect();
});

function hasXvnc() {
    return (process.env.PATH || '').split(':').some((d) => fs.existsSync(path.join(d, 'Xvnc')));
}

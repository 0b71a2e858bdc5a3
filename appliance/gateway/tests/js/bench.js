// The relay benchmark's Node side (run by `examples/relay_bench.rs`, which
// documents the whole benchmark): the two reference relays and the one
// WebSocket client that measures all three the same way.
//
//   node bench.js lite HOST:PORT     guacamole-lite (npm) in front of guacd
//   node bench.js bare HOST:PORT     a bare WebSocket↔TCP byte relay (npm ws)
//   node bench.js client --ours URL --lite URL --bare URL --guacd HOST:PORT
//                        --pid-ours N --pid-lite N [--quick]
//
// The servers print `LISTENING HOST:PORT`. The client runs each workload
// against each relay in turn, prints a table and a last `RESULT {json}` line.
'use strict';

const net = require('node:net');
const fs = require('node:fs');
const crypto = require('node:crypto');
const WebSocket = require('ws');

const LITE_KEY = 'daas-relay-bench-key-0123456789!'; // 32 bytes: AES-256

function listening(server, wsServer) {
    const a = (wsServer || server).address();
    console.log(`LISTENING 127.0.0.1:${a.port}`);
}

function splitAddr(addr) {
    const i = addr.lastIndexOf(':');
    return [addr.slice(0, i), Number(addr.slice(i + 1))];
}

// ---------------------------------------------------------------- servers

function serveLite(guacd) {
    const GuacamoleLite = require('guacamole-lite');
    const [host, port] = splitAddr(guacd);
    const lite = new GuacamoleLite(
        { port: 0, host: '127.0.0.1' },
        { host, port },
        {
            crypt: { cypher: 'AES-256-CBC', key: LITE_KEY },
            log: { level: 'ERRORS' },
            maxInactivityTime: 0,
        },
    );
    lite.webSocketServer.on('listening', () => listening(null, lite.webSocketServer));
}

function serveBare(guacd) {
    const [host, port] = splitAddr(guacd);
    const wss = new WebSocket.Server({ port: 0, host: '127.0.0.1' });
    wss.on('listening', () => listening(null, wss));
    wss.on('connection', (ws) => {
        const tcp = net.connect(port, host);
        tcp.setNoDelay(true);
        let pending = 0;
        tcp.on('data', (chunk) => {
            pending += 1;
            ws.send(chunk, { binary: true }, () => {
                pending -= 1;
                if (pending < 8 && tcp.isPaused()) tcp.resume();
            });
            if (pending >= 32) tcp.pause();
        });
        ws.on('message', (data) => tcp.write(data));
        const end = () => { tcp.destroy(); ws.close(); };
        tcp.on('close', end);
        tcp.on('error', end);
        ws.on('close', end);
        ws.on('error', end);
    });
}

// ---------------------------------------------------------------- protocol

function ins(...elements) {
    return elements.map((e) => `${[...String(e)].length}.${e}`).join(',') + ';';
}

/** A streaming Guacamole decoder on strings, lengths in code points. */
class Decoder {
    constructor() { this.buf = ''; }
    push(text) { this.buf += text; }
    /** Whole instructions as arrays; the rest stays buffered. */
    drain() {
        const out = [];
        let pos = 0;
        for (;;) {
            const elements = [];
            let p = pos;
            let complete = false;
            for (;;) {
                const dot = this.buf.indexOf('.', p);
                if (dot < 0) break;
                const len = Number(this.buf.slice(p, dot));
                if (!Number.isInteger(len)) throw new Error(`bad length at ${p}`);
                // Advance `len` code points.
                let q = dot + 1;
                for (let n = 0; n < len && q < this.buf.length; n++) {
                    const c = this.buf.codePointAt(q);
                    q += c > 0xffff ? 2 : 1;
                }
                if (q >= this.buf.length) break;
                elements.push(this.buf.slice(dot + 1, q));
                const sep = this.buf[q];
                p = q + 1;
                if (sep === ';') { complete = true; break; }
                if (sep !== ',') throw new Error(`bad separator ${JSON.stringify(sep)}`);
            }
            if (!complete) break;
            out.push(elements);
            pos = p;
        }
        this.buf = this.buf.slice(pos);
        return out;
    }
}

// ---------------------------------------------------------------- relays

/** How the client reaches guacd through each relay, and what it must do. */
function relays(opts) {
    return {
        ours: {
            pid: Number(opts.pidOurs),
            url: (workload) => `${opts.ours}?workload=${workload}&GUAC_WIDTH=1024&GUAC_HEIGHT=768&GUAC_DPI=96&GUAC_IMAGE=image%2Fpng`,
            handshake: false,
        },
        'guacamole-lite': {
            pid: Number(opts.pidLite),
            url: (workload) => `${opts.lite}/?token=${encodeURIComponent(liteToken(workload))}`,
            handshake: false,
        },
        'bare relay': {
            pid: Number(opts.pidBare),
            url: () => `${opts.bare}/`,
            handshake: true,
        },
    };
}

function liteToken(workload) {
    const iv = crypto.randomBytes(16);
    const cipher = crypto.createCipheriv('AES-256-CBC', LITE_KEY, iv);
    const json = JSON.stringify({ connection: { type: 'vnc', settings: { hostname: workload, port: '5900' } } });
    let value = cipher.update(json, 'utf8', 'binary');
    value += cipher.final('binary');
    const data = { iv: iv.toString('base64'), value: Buffer.from(value, 'binary').toString('base64') };
    return Buffer.from(JSON.stringify(data)).toString('base64');
}

/**
 * Opens a WebSocket through `relay` to the stand-in running `workload`.
 * Resolves once data may flow: for the bare relay, after the client did
 * guacd's handshake itself. `onData(buffer)` gets every message after that.
 */
function open(relay, workload, onData, onClose) {
    return new Promise((resolve, reject) => {
        const ws = new WebSocket(relay.url(workload), 'guacamole', { perMessageDeflate: false });
        ws.binaryType = 'nodebuffer';
        // Ours and guacamole-lite send an internal instruction first (the
        // tunnel's uuid, the connection id): data flows after it.
        let ready = false;
        const decoder = new Decoder();
        ws.on('open', () => {
            ws._socket.setNoDelay(true);
            if (relay.handshake) ws.send(ins('select', 'vnc'));
        });
        ws.on('message', (data) => {
            if (ready) return onData(data);
            if (!relay.handshake) {
                ready = true;
                return resolve(ws);
            }
            decoder.push(data.toString('utf8'));
            for (const [op, ...args] of decoder.drain()) {
                if (op === 'args') {
                    const values = args.map((name, i) => (i === 0 ? 'VERSION_1_5_0' : name === 'hostname' ? workload : ''));
                    ws.send(ins('size', 1024, 768, 96) + ins('audio') + ins('video') + ins('image', 'image/png')
                        + ins('name', 'bench') + ins('connect', ...values));
                } else if (op === 'ready') {
                    ready = true;
                    resolve(ws);
                    if (decoder.buf.length) onData(Buffer.from(decoder.buf));
                    return;
                }
            }
        });
        ws.on('error', reject);
        ws.on('close', (code, reason) => { if (onClose) onClose(code, String(reason)); reject(new Error(`closed ${code}`)); });
    });
}

// ---------------------------------------------------------------- workloads

const TAIL = Buffer.from(ins('disconnect'));

/** Receives a blast until guacd's final `disconnect`; bytes and seconds. */
async function blast(relay, workload) {
    const cpu0 = cpuSeconds(relay.pid);
    let bytes = 0;
    let start = 0;
    let tail = Buffer.alloc(0);
    let done;
    const finished = new Promise((r) => { done = r; });
    let lost = null;
    const ws = await open(relay, workload, (data) => {
        if (!start) start = process.hrtime.bigint();
        bytes += data.length;
        tail = Buffer.concat([tail, data.subarray(Math.max(0, data.length - TAIL.length))]).subarray(-TAIL.length);
        if (tail.equals(TAIL)) done();
    }, (code) => { lost = code; done(); });
    await finished;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const cpu = cpuSeconds(relay.pid) - cpu0;
    ws.close();
    return { bytes, seconds, cpu, lost: tail.equals(TAIL) ? null : lost };
}

/** Round trips of a key press answered by a small frame. */
async function pingPong(relay, rounds, replyLength) {
    let got = 0;
    let wake = null;
    const ws = await open(relay, 'echo', (data) => {
        got += data.length;
        if (got >= replyLength && wake) { got -= replyLength; const w = wake; wake = null; w(); }
    });
    const key = ins('key', '65307', '1');
    const times = [];
    for (let i = 0; i < rounds; i++) {
        const t0 = process.hrtime.bigint();
        await new Promise((resolve, reject) => {
            wake = resolve;
            ws.send(key);
            setTimeout(() => reject(new Error('no answer in 5 s')), 5000).unref();
        });
        times.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
    ws.close();
    return times.slice(20); // after a warm-up

}

/** The multi-byte stream, split by guacd's writes: received intact? */
async function splitCheck(relay, expected) {
    const chunks = [];
    let done;
    const finished = new Promise((r) => { done = r; });
    let tail = Buffer.alloc(0);
    let closedEarly = null;
    let messagesWhole = true;
    let ws;
    try {
        ws = await open(relay, 'split', (data) => {
            chunks.push(data);
            try {
                const d = new Decoder();
                d.push(data.toString('utf8'));
                d.drain();
                if (d.buf.length) messagesWhole = false;
            } catch (e) { messagesWhole = false; }
            tail = Buffer.concat([tail, data]).subarray(-TAIL.length);
            if (tail.equals(TAIL)) done();
        }, (code) => { closedEarly = code; done(); });
    } catch (e) {
        return { verdict: 'connection failed', messagesWhole: false };
    }
    const timer = setTimeout(done, 15000);
    await finished;
    clearTimeout(timer);
    ws.close();
    const text = Buffer.concat(chunks).toString('utf8');
    const d = new Decoder();
    let got;
    try { d.push(text); got = d.drain(); } catch (e) { return { verdict: `corrupted (${e.message})`, messagesWhole }; }
    let bad = 0;
    const strip = got.filter(([op]) => op !== '');
    for (let i = 0; i < expected.length; i++) {
        if (JSON.stringify(strip[i]) !== JSON.stringify(expected[i])) bad += 1;
    }
    if (bad === 0 && !closedEarly) return { verdict: `intact (${expected.length} instructions)`, messagesWhole };
    if (bad === 0) return { verdict: 'intact', messagesWhole };
    return { verdict: `${bad} of ${expected.length} instructions lost or corrupted${closedEarly ? `, closed ${closedEarly}` : ''}`, messagesWhole };
}

/** CPU time (user + system) of `pid` so far, in seconds. */
function cpuSeconds(pid) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime at 100 Hz
}

function rssKiB(pid) {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return Number(m[1]);
}

/** RSS growth of `pid` for `n` idle tunnels through `relay`. */
async function idleMemory(relay, pid, n) {
    const before = rssKiB(pid);
    const sockets = [];
    let opened = 0;
    for (let i = 0; i < n; i += 50) {
        const batch = [];
        for (let j = i; j < Math.min(n, i + 50); j++) {
            batch.push(open(relay, 'idle', () => {}).then((ws) => { sockets.push(ws); opened += 1; }, () => {}));
        }
        await Promise.all(batch);
    }
    await new Promise((r) => setTimeout(r, 1500));
    const after = rssKiB(pid);
    const alive = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
    for (const ws of sockets) ws.terminate();
    await new Promise((r) => setTimeout(r, 1000));
    return { opened, alive, beforeKiB: before, afterKiB: after, perTunnelKiB: (after - before) / Math.max(1, alive) };
}

// ---------------------------------------------------------------- client

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
}

async function client() {
    const quick = process.argv.includes('--quick');
    const opts = {
        ours: arg('ours'), lite: arg('lite'), bare: arg('bare'),
        pidOurs: arg('pid-ours'), pidLite: arg('pid-lite'), pidBare: arg('pid-bare'),
    };
    const all = relays(opts);
    const imageFrames = Number(arg('image-frames', quick ? 500 : 4000));
    const imageFrameBytes = Number(arg('image-frame-bytes'));
    const smallFrames = Number(arg('small-frames', quick ? 20000 : 200000));
    const rounds = quick ? 500 : 3000;
    const replyLength = Number(arg('reply-bytes'));
    const idleTunnels = Number(arg('idle-tunnels', quick ? 200 : 1000));
    const expectedSplit = JSON.parse(fs.readFileSync(arg('split-expect'), 'utf8'));
    const results = {};
    const note = (relay, key, value) => { (results[relay] = results[relay] || {})[key] = value; };

    const order = ['ours', 'bare relay', 'guacamole-lite'];
    // Memory first, while the relays' processes are fresh.
    for (const [name, pid] of [['ours', arg('pid-ours')], ['guacamole-lite', arg('pid-lite')]]) {
        const r = await idleMemory(all[name], Number(pid), idleTunnels);
        note(name, 'idle', r);
        console.error(`idle tunnels via ${name}: ${r.alive}/${idleTunnels} held, ${r.perTunnelKiB.toFixed(1)} KiB each`);
    }
    // Rounds interleave the relays, so that a busy moment of the shared
    // machine does not fall on one of them only; each relay's best round
    // counts, and its CPU time in that round.
    for (const [workload, rounds, units, key] of [
        ['image', 3, imageFrames * imageFrameBytes, 'image'],
        ['small', 3, smallFrames * 3, 'small'],
    ]) {
        for (let round = 0; round < rounds; round++) {
            for (const name of order) {
                const r = await blast(all[name], workload);
                const prev = (results[name] || {})[key];
                if (r.lost) { note(name, key, { lost: r.lost }); continue; }
                const rate = units / r.seconds;
                if (!prev || !(prev.rate >= rate)) note(name, key, { rate, cpuPerUnit: r.cpu / units, seconds: r.seconds });
            }
        }
        for (const name of order) {
            const v = results[name][key];
            console.error(`${workload} via ${name}: ${v.rate ? (key === 'image' ? `${(v.rate / 1e6).toFixed(0)} MB/s` : `${(v.rate / 1e3).toFixed(0)} k instructions/s`) : `lost ${v.lost}`}`);
        }
    }
    const samples = Object.fromEntries(order.map((name) => [name, []]));
    for (let chunk = 0; chunk < 10; chunk++) {
        for (const name of order) {
            samples[name].push(...(await pingPong(all[name], Math.ceil(rounds / 10) + 20, replyLength)));
        }
    }
    for (const name of order) {
        const sorted = samples[name].sort((a, b) => a - b);
        const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
        note(name, 'p50us', q(0.5));
        note(name, 'p99us', q(0.99));
        console.error(`round trip via ${name}: p50 ${q(0.5).toFixed(0)} µs, p99 ${q(0.99).toFixed(0)} µs (${sorted.length})`);
    }
    // Last: guacamole-lite is known to crash on split UTF-8.
    for (const name of order) {
        const r = await splitCheck(all[name], expectedSplit);
        note(name, 'split', r);
        console.error(`split UTF-8 via ${name}: ${r.verdict}`);
    }
    printTable(results, { imageFrames, smallFrames, rounds, idleTunnels, quick });
    console.log(`RESULT ${JSON.stringify(results)}`);
}

function printTable(r, p) {
    const ours = r.ours;
    const bare = r['bare relay'];
    const lite = r['guacamole-lite'];
    const f = (x, d = 0) => (typeof x === 'number' ? x.toFixed(d) : String(x));
    const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? `${(a / b).toFixed(2)}×` : '—');
    const rows = [
        ['workload', 'ours', 'bare relay', 'guacamole-lite', 'ours/bare', 'ours/lite'],
        [`image frames, MB/s (${p.imageFrames} frames, best of 3)`, f(ours.image.rate / 1e6), f(bare.image.rate / 1e6), f(lite.image.rate / 1e6),
            ratio(ours.image.rate, bare.image.rate), ratio(ours.image.rate, lite.image.rate)],
        ['  relay CPU, ms per 100 MB', f(ours.image.cpuPerUnit * 1e11), f(bare.image.cpuPerUnit * 1e11), f(lite.image.cpuPerUnit * 1e11),
            ratio(bare.image.cpuPerUnit, ours.image.cpuPerUnit), ratio(lite.image.cpuPerUnit, ours.image.cpuPerUnit)],
        [`small instructions, k/s (${p.smallFrames * 3}, best of 3)`, f(ours.small.rate / 1e3), f(bare.small.rate / 1e3), f(lite.small.rate / 1e3),
            ratio(ours.small.rate, bare.small.rate), ratio(ours.small.rate, lite.small.rate)],
        ['  relay CPU, ns per instruction', f(ours.small.cpuPerUnit * 1e9), f(bare.small.cpuPerUnit * 1e9), f(lite.small.cpuPerUnit * 1e9),
            ratio(bare.small.cpuPerUnit, ours.small.cpuPerUnit), ratio(lite.small.cpuPerUnit, ours.small.cpuPerUnit)],
        [`round trip p50, µs (${p.rounds})`, f(ours.p50us), f(bare.p50us), f(lite.p50us),
            `+${f(ours.p50us - bare.p50us)} µs`, `+${f(lite.p50us - bare.p50us)} µs (lite)`],
        ['round trip p99, µs', f(ours.p99us), f(bare.p99us), f(lite.p99us),
            `+${f(ours.p99us - bare.p99us)} µs`, `+${f(lite.p99us - bare.p99us)} µs (lite)`],
        [`idle tunnels held (of ${p.idleTunnels})`, f(ours.idle.alive), '—', f(lite.idle.alive), '', ''],
        ['RSS per idle tunnel, KiB', f(ours.idle.perTunnelKiB, 1), '—', f(lite.idle.perTunnelKiB, 1), '',
            ratio(ours.idle.perTunnelKiB, lite.idle.perTunnelKiB)],
        ['split UTF-8 / instructions', ours.split.verdict, bare.split.verdict, lite.split.verdict, '', ''],
        ['whole instructions per message', ours.split.messagesWhole ? 'yes' : 'no', bare.split.messagesWhole ? 'yes' : 'no',
            lite.split.messagesWhole ? 'yes' : 'no', '', ''],
    ];
    const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => String(row[i]).length)));
    const line = (row) => `| ${row.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`;
    console.log('');
    console.log(line(rows[0]));
    console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
    for (const row of rows.slice(1)) console.log(line(row));
    console.log('');
    console.log('Notes: the bare relay forwards TCP reads as binary messages (no parsing, no UTF-8 check, partial');
    console.log('instructions); ours and guacamole-lite send text. Round trip: ours/lite minus the bare relay.');
}

// ---------------------------------------------------------------- main

const mode = process.argv[2];
if (mode === 'lite') serveLite(process.argv[3]);
else if (mode === 'bare') serveBare(process.argv[3]);
else if (mode === 'client') client().catch((e) => { console.error(e); process.exit(1); });
else {
    console.error('usage: node bench.js lite|bare HOST:PORT | client ...');
    process.exit(2);
}

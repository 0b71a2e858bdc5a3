// Just enough of a browser for guacamole-common-js in Node: `window` and a
// WebSocket (npm `ws`, which speaks the real protocol), and for
// Guacamole.Client's Display a `document` whose canvases record the 2D
// drawing calls made on them. No layout, no pixels: the Rust and Chromium
// tests look at pixels; these look at the protocol.
'use strict';

const WebSocket = require('ws');

/** Every 2D context call, as [method, ...args], across all canvases. */
const drawCalls = [];

function context2d(canvas) {
    const state = {
        canvas,
        getImageData: (x, y, w, h) => ({ width: w, height: h, data: new Uint8ClampedArray(Math.max(0, w * h * 4)) }),
        createImageData: (w, h) => ({ width: w, height: h, data: new Uint8ClampedArray(Math.max(0, w * h * 4)) }),
        measureText: () => ({ width: 0 }),
        isPointInPath: () => false,
    };
    return new Proxy(state, {
        get(target, prop) {
            if (prop in target) return target[prop];
            if (typeof prop !== 'string') return undefined;
            return (...args) => { drawCalls.push([prop, ...args]); };
        },
        set(target, prop, value) { target[prop] = value; return true; },
    });
}

function element(tagName) {
    const el = {
        tagName: tagName.toUpperCase(),
        style: {},
        childNodes: [],
        width: 0,
        height: 0,
        appendChild(child) { this.childNodes.push(child); child.parentNode = this; return child; },
        removeChild(child) { this.childNodes = this.childNodes.filter((c) => c !== child); return child; },
        insertBefore(child) { return this.appendChild(child); },
        setAttribute() {},
        addEventListener() {},
        removeEventListener() {},
        getBoundingClientRect: () => ({ left: 0, top: 0, width: 0, height: 0 }),
        focus() {},
        blur() {},
    };
    if (el.tagName === 'CANVAS') {
        let ctx = null;
        el.getContext = () => (ctx = ctx || context2d(el));
        el.toDataURL = () => 'data:image/png;base64,';
    }
    return el;
}

/** Decoded images: `src` set, then `onload` (data: URIs only). */
class Image {
    constructor() { this.width = 1; this.height = 1; this.onload = null; this.onerror = null; }
    set src(value) { this._src = value; setImmediate(() => this.onload && this.onload()); }
    get src() { return this._src; }
}

function install() {
    globalThis.window = globalThis;
    if (!globalThis.addEventListener) globalThis.addEventListener = () => {};
    if (!globalThis.removeEventListener) globalThis.removeEventListener = () => {};
    globalThis.devicePixelRatio = 1;
    globalThis.WebSocket = WebSocket;
    globalThis.Image = Image;
    globalThis.document = {
        createElement: element,
        body: element('body'),
        hasFocus: () => false, // Display flushes synchronously.
        addEventListener() {},
        removeEventListener() {},
        activeElement: null,
    };
    if (!globalThis.navigator) globalThis.navigator = { userAgent: 'node' };
    return require('guacamole-common-js');
}

module.exports = { install, drawCalls };

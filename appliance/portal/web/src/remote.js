// One remote desktop in this tab: the Guacamole client over the tunnel,
// input, clipboard, size, reconnection and the idle policy. Knows nothing
// of the page's markup: it reports its state through onChange.
import { get, post } from './api.js';

const RECONNECT_DELAYS_MS = [250, 1000, 2000, 4000, 8000, 15000];
const RECONNECT_GIVE_UP_MS = 5 * 60 * 1000;
const RESIZE_DEBOUNCE_MS = 250;
const DEFAULT_IDLE_SECS = 900;
const IDLE_WARNING_SECS = 60;

// X11 keysyms of the menu chord Ctrl+Alt+Shift.
const CTRL = [0xffe3, 0xffe4];
const ALT = [0xffe9, 0xffea, 0xfe03];
const SHIFT = [0xffe1, 0xffe2];

export class RemoteSession {
  /**
   * @param {object} o
   * @param {any} o.Guacamole guacamole-common-js
   * @param {string} o.instanceId
   * @param {HTMLElement} o.container where the display goes
   * @param {(s: object) => void} o.onChange
   * @param {number} [o.idleSecs] the idle policy (seconds without input)
   */
  constructor({ Guacamole, instanceId, container, onChange, idleSecs }) {
    this.G = Guacamole;
    this.id = instanceId;
    this.container = container;
    this.onChange = onChange;
    this.idleSecs = idleSecs || DEFAULT_IDLE_SECS;
    this.idleFromUrl = !!idleSecs;
    this.client = null;
    this.tunnel = null;
    this.closed = false;
    this.intentional = false;
    this.attempt = 0;
    this.dropSince = 0;
    this.timer = null;
    this.lastInput = Date.now();
    this.localClip = null;
    this.remoteClip = '';
    this.pressed = new Set();
    this.inputOn = true;
    this.scale = 1;
    this.state = {
      phase: 'connecting', // connecting | connected | reconnecting | idle | ended | failed
      unstable: false,
      message: '',
      retryIn: 0,
      idleLeft: null,
      remoteClip: '',
      width: 0,
      height: 0,
      connects: 0,
    };
    this.stats = { firstFrameAt: 0, connects: 0 };
    window.daasDesktop = this.stats;
    this.keyboard = new Guacamole.Keyboard(document);
    this.bindKeyboard(true);
    this.onResize = debounce(() => this.sendSize(), RESIZE_DEBOUNCE_MS);
    this.resizeObserver = new ResizeObserver(() => {
      this.rescale();
      this.onResize();
    });
    this.resizeObserver.observe(container);
    this.onFocus = () => this.pullLocalClipboard();
    window.addEventListener('focus', this.onFocus);
    document.addEventListener('visibilitychange', this.onFocus);
    this.onPageHide = () => this.close();
    window.addEventListener('pagehide', this.onPageHide);
    this.idleTimer = setInterval(() => this.checkIdle(), 1000);
  }

  set(patch) {
    this.state = { ...this.state, ...patch };
    this.onChange(this.state);
  }

  // ---- connection -----------------------------------------------------------

  /** Asks for a ticket and opens the tunnel. */
  async connect() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.intentional = false;
    this.set({ phase: this.stats.connects ? 'reconnecting' : 'connecting', retryIn: 0, message: '' });
    let t;
    try {
      t = await post(`/api/v1/instances/${encodeURIComponent(this.id)}/connect`);
    } catch (e) {
      if (e.status === 401) return this.end('failed', e.message); // the page goes to the login
      if (e.status === 404 || e.status === 403) return this.end('ended', 'This desktop does not exist any more.');
      if (e.status === 409) return this.checkInstance(e.message);
      return this.retryLater(e.message);
    }
    if (this.closed) return;
    if (t.idle_timeout_secs && !this.idleFromUrl) this.idleSecs = t.idle_timeout_secs;
    this.open(t.ticket, t.tunnel || '/api/v1/tunnel');
  }

  open(ticket, tunnelPath) {
    const G = this.G;
    this.dispose();
    const tunnel = new G.WebSocketTunnel(tunnelPath);
    const client = new G.Client(tunnel);
    this.tunnel = tunnel;
    this.client = client;
    let lastStatus = null;

    tunnel.onerror = (status) => {
      lastStatus = status;
    };
    tunnel.onstatechange = (s) => {
      if (tunnel !== this.tunnel) return;
      if (s === G.Tunnel.State.UNSTABLE) this.set({ unstable: true });
      else if (s === G.Tunnel.State.OPEN) this.set({ unstable: false });
      else if (s === G.Tunnel.State.CLOSED) this.dropped(lastStatus);
    };
    client.onerror = (status) => {
      lastStatus = status;
    };
    client.onstatechange = (s) => {
      if (client !== this.client) return;
      if (s === 3 /* CONNECTED */) {
        if (!this.stats.connects) performance.mark('daas-connected');
        this.dropSince = 0;
        this.stats.connects++;
        this.set({ phase: 'connected', unstable: false, message: '', connects: this.stats.connects });
        this.sendSize();
        this.pullLocalClipboard();
      }
    };
    client.onsync = () => {
      if (client !== this.client) return;
      if (!this.stats.firstFrameAt) {
        this.stats.firstFrameAt = Date.now();
        performance.mark('daas-first-frame');
      }
      if (this.attempt && Date.now() - this.connectedAt > 10000) this.attempt = 0;
    };
    client.onclipboard = (stream, mimetype) => this.receiveClipboard(stream, mimetype);

    const display = client.getDisplay();
    const el = display.getElement();
    el.classList.add('guac-display');
    display.onresize = (w, h) => {
      this.stats.width = w;
      this.stats.height = h;
      this.set({ width: w, height: h });
      this.rescale();
    };
    this.container.replaceChildren(el);

    const mouse = new G.Mouse(el);
    const touch = new G.Mouse.Touchscreen(el);
    let localCursor = false;
    display.oncursor = (canvas, x, y) => {
      localCursor = mouse.setCursor(canvas, x, y);
    };
    // A hidden remote cursor arrives as a 0×0 image, which
    // guacamole-common-js cannot draw (it throws mid-frame): hide ours.
    const setCursor = display.setCursor;
    display.setCursor = (hx, hy, layer, sx, sy, sw, sh) => {
      if (sw > 0 && sh > 0) return setCursor.call(display, hx, hy, layer, sx, sy, sw, sh);
      localCursor = true;
      el.style.cursor = 'none';
      return undefined;
    };
    const send = (e) => {
      if (client !== this.client || !this.inputOn) return;
      this.activity();
      if (!localCursor) display.showCursor(true);
      client.sendMouseState(e.state, true);
    };
    mouse.onEach(['mousedown', 'mousemove', 'mouseup'], send);
    touch.onEach(['mousedown', 'mousemove', 'mouseup'], send);
    mouse.on('mouseout', () => display.showCursor(false));
    el.addEventListener('pointerenter', this.onFocus);

    const r = this.container.getBoundingClientRect();
    const params = new URLSearchParams();
    params.set('ticket', ticket);
    params.set('GUAC_WIDTH', String(Math.max(1, Math.floor(r.width))));
    params.set('GUAC_HEIGHT', String(Math.max(1, Math.floor(r.height))));
    // Sizes are in CSS pixels, so the desktop's DPI is the CSS one.
    params.set('GUAC_DPI', '96');
    try {
      params.set('GUAC_TIMEZONE', Intl.DateTimeFormat().resolvedOptions().timeZone || '');
    } catch {
      /* no time zone */
    }
    for (const m of ['image/png', 'image/jpeg', 'image/webp']) params.append('GUAC_IMAGE', m);
    this.connectedAt = Date.now();
    if (!this.stats.connects) performance.mark('daas-tunnel');
    this.lastSize = `${Math.floor(r.width)}x${Math.floor(r.height)}`;
    client.connect(params.toString());
  }

  /** The tunnel closed: end, or reconnect while the instance runs. */
  async dropped(status) {
    if (this.closed || this.intentional) return;
    this.dispose();
    this.set({ unstable: false });
    await this.checkInstance(status && status.message ? `The connection dropped (${status.message}).` : 'The connection dropped.');
  }

  /** After a failure: what the instance's state says to do next. */
  async checkInstance(why) {
    if (this.closed) return;
    let inst;
    try {
      inst = await get(`/api/v1/instances/${encodeURIComponent(this.id)}`);
    } catch (e) {
      if (e.status === 401) return this.end('failed', e.message);
      if (e.status === 404) return this.end('ended', 'This desktop does not exist any more.');
      return this.retryLater(why || e.message);
    }
    if (inst.state === 'running' || inst.state === 'starting') return this.retryLater(why, inst.state === 'starting');
    if (inst.state === 'stopping' || inst.state === 'stopped') return this.end('ended', 'This desktop was stopped.');
    return this.end('ended', inst.error ? `This desktop ended: ${inst.error}` : `This desktop is ${inst.state}.`);
  }

  retryLater(why, soon = false) {
    if (this.closed) return;
    if (!this.dropSince) this.dropSince = Date.now();
    if (Date.now() - this.dropSince > RECONNECT_GIVE_UP_MS) {
      this.set({ phase: 'failed', message: `${why || 'The connection dropped.'} Reconnecting did not work for five minutes.` });
      return;
    }
    const base = soon ? 500 : RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt++;
    const at = Date.now() + delay;
    this.set({ phase: 'reconnecting', message: why || '', retryIn: Math.ceil(delay / 1000) });
    const tick = () => {
      const left = at - Date.now();
      if (left <= 0) {
        this.connect();
        return;
      }
      this.set({ retryIn: Math.ceil(left / 1000) });
      this.timer = setTimeout(tick, Math.min(left, 1000));
    };
    this.timer = setTimeout(tick, Math.min(delay, 1000));
  }

  /** Reconnect now (a button). */
  reconnectNow() {
    clearTimeout(this.timer);
    this.dropSince = 0;
    this.attempt = 0;
    this.lastInput = Date.now();
    this.connect();
  }

  end(phase, message) {
    clearTimeout(this.timer);
    this.intentional = true;
    this.dispose();
    this.set({ phase, message, unstable: false, idleLeft: null });
  }

  /** Disconnects the tunnel (the instance keeps running). */
  disconnect(phase = 'idle', message = '') {
    this.intentional = true;
    clearTimeout(this.timer);
    this.dispose();
    this.set({ phase, message, unstable: false, idleLeft: null });
  }

  dispose() {
    const c = this.client;
    this.client = null;
    this.tunnel = null;
    if (c) {
      try {
        c.disconnect();
      } catch {
        /* already gone */
      }
    }
  }

  /** Ends everything (the tab closes or the view unmounts). */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.intentional = true;
    clearTimeout(this.timer);
    clearInterval(this.idleTimer);
    this.dispose();
    this.bindKeyboard(false);
    this.resizeObserver.disconnect();
    window.removeEventListener('focus', this.onFocus);
    document.removeEventListener('visibilitychange', this.onFocus);
    window.removeEventListener('pagehide', this.onPageHide);
  }

  // ---- size ---------------------------------------------------------------------

  /** Fits the remote display into the tab, keeping its aspect. */
  rescale() {
    if (!this.client) return;
    const d = this.client.getDisplay();
    const w = d.getWidth();
    const h = d.getHeight();
    if (!w || !h) return;
    const r = this.container.getBoundingClientRect();
    this.scale = Math.min(r.width / w, r.height / h);
    d.scale(this.scale);
  }

  /** Asks the remote desktop to take the tab's size. */
  sendSize() {
    if (!this.client || this.state.phase !== 'connected') return;
    const r = this.container.getBoundingClientRect();
    const w = Math.max(1, Math.floor(r.width));
    const h = Math.max(1, Math.floor(r.height));
    const key = `${w}x${h}`;
    if (key === this.lastSize && this.state.width === w && this.state.height === h) return;
    this.lastSize = key;
    this.client.sendSize(w, h);
  }

  // ---- keyboard ---------------------------------------------------------------------

  bindKeyboard(on) {
    const k = this.keyboard;
    if (!on) {
      k.onkeydown = null;
      k.onkeyup = null;
      return;
    }
    k.onkeydown = (keysym) => {
      this.activity();
      this.pressed.add(keysym);
      if (this.chord()) {
        this.pressed.clear();
        this.releaseKeys();
        this.onMenuChord && this.onMenuChord();
        return false;
      }
      if (this.client && this.inputOn) this.client.sendKeyEvent(1, keysym);
      return false;
    };
    k.onkeyup = (keysym) => {
      this.pressed.delete(keysym);
      if (this.client && this.inputOn) this.client.sendKeyEvent(0, keysym);
    };
  }

  chord() {
    const has = (set) => set.some((k) => this.pressed.has(k));
    return has(CTRL) && has(ALT) && has(SHIFT);
  }

  /** Releases every key the remote side thinks is down. */
  releaseKeys() {
    this.keyboard.reset();
  }

  /** Routes input to the remote desktop or not (while a menu or dialog is open). */
  setInput(on) {
    if (on === this.inputOn) return;
    if (!on) this.releaseKeys();
    this.inputOn = on;
    this.bindKeyboard(on);
  }

  /** Sends a key combination (keysyms pressed in order, released in reverse). */
  sendKeys(keysyms) {
    if (!this.client) return;
    for (const k of keysyms) this.client.sendKeyEvent(1, k);
    for (const k of [...keysyms].reverse()) this.client.sendKeyEvent(0, k);
  }

  // ---- clipboard ---------------------------------------------------------------------

  receiveClipboard(stream, mimetype) {
    const G = this.G;
    if (!/^text\//.test(mimetype)) {
      stream.sendAck('Only text is copied.', G.Status.Code.UNSUPPORTED);
      return;
    }
    const reader = new G.StringReader(stream);
    let text = '';
    reader.ontext = (t) => {
      text += t;
    };
    reader.onend = () => {
      this.remoteClip = text;
      this.localClip = text;
      this.set({ remoteClip: text });
      if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).catch(() => {});
    };
  }

  /** Reads the browser's clipboard and sends it if it changed. */
  async pullLocalClipboard() {
    if (!this.client || document.visibilityState !== 'visible' || !document.hasFocus()) return;
    if (!navigator.clipboard || !navigator.clipboard.readText) return;
    let text;
    try {
      text = await navigator.clipboard.readText();
    } catch {
      return; // not allowed: the menu's clipboard box still works
    }
    if (typeof text !== 'string' || text === this.localClip) return;
    this.localClip = text;
    this.sendClipboard(text);
  }

  /** Puts text on the remote clipboard. */
  sendClipboard(text) {
    if (!this.client) return;
    const G = this.G;
    const writer = new G.StringWriter(this.client.createClipboardStream('text/plain'));
    writer.sendText(text);
    writer.sendEnd();
    this.remoteClip = text;
    this.set({ remoteClip: text });
  }

  // ---- idle policy --------------------------------------------------------------------

  activity() {
    this.lastInput = Date.now();
    if (this.state.idleLeft !== null) this.set({ idleLeft: null });
  }

  checkIdle() {
    if (this.state.phase !== 'connected') return;
    const idle = (Date.now() - this.lastInput) / 1000;
    const warnAt = Math.max(this.idleSecs - IDLE_WARNING_SECS, this.idleSecs / 2);
    if (idle >= this.idleSecs) {
      const min = Math.round(this.idleSecs / 60);
      this.disconnect(
        'idle',
        `Disconnected after ${min >= 1 ? `${min} minute${min === 1 ? '' : 's'}` : `${this.idleSecs} seconds`} without input. Your desktop is still running.`,
      );
    } else if (idle >= warnAt) {
      this.set({ idleLeft: Math.ceil(this.idleSecs - idle) });
    } else if (this.state.idleLeft !== null) {
      this.set({ idleLeft: null });
    }
  }
}

function debounce(fn, ms) {
  let t = null;
  return () => {
    clearTimeout(t);
    t = setTimeout(fn, ms);
  };
}

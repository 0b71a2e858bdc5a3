// The desktop view: one remote desktop filling its own tab.
import { useEffect, useRef, useState } from 'preact/hooks';
import { get, post } from './api.js';
import { loadGuacamole } from './guac.js';
import { RemoteSession } from './remote.js';
import { ErrorText, setTitle } from './ui.jsx';

const START_POLL_MS = 100;

/**
 * `open`: { plural, id } to open that object first (an App, or a
 * configuration desktop); else `instanceId` of a running instance.
 */
export function Desktop({ open, early, instanceId }) {
  const container = useRef(null);
  const session = useRef(null);
  const [iid, setIid] = useState(instanceId || null);
  const [name, setName] = useState(null);
  const [stage, setStage] = useState(open ? 'opening' : 'waiting'); // opening | waiting | live | failed
  const [error, setError] = useState(null);
  const [remote, setRemote] = useState(null);
  const [menu, setMenu] = useState(false);
  const [full, setFull] = useState(!!document.fullscreenElement);

  useEffect(() => setTitle(name || 'Desktop'), [name]);

  // 1. Open the object (POST …/open) unless we already have an instance.
  useEffect(() => {
    let alive = true;
    (async () => {
      try {
        if (open) {
          get(`/api/v1/${open.plural}/${encodeURIComponent(open.id)}`).then(
            (o) => alive && remember(null, o.name),
            () => {},
          );
          performance.mark('daas-open');
          const r = await ((early && early.catch(() => null)) || Promise.resolve(null)).then(
            (r) => r || post(`/api/v1/${open.plural}/${encodeURIComponent(open.id)}/open`),
          );
          if (!alive) return;
          performance.mark('daas-opened');
          history.replaceState(null, '', `/desktop/${encodeURIComponent(r.instance.id)}${location.search}`);
          remember(r.instance.id, null);
          setStage('waiting');
        } else {
          const saved = recall(instanceId);
          if (saved && saved.name) setName(saved.name);
          else {
            get(`/api/v1/instances/${encodeURIComponent(instanceId)}`)
              .then((i) => get(`/api/v1/apps/${encodeURIComponent(i.object_id)}`))
              .then(
                (o) => alive && setName(o.name),
                () => {},
              );
          }
        }
      } catch (e) {
        if (alive && e.status !== 401) {
          setError(e);
          setStage('failed');
        }
      }
    })();
    return () => {
      alive = false;
    };
  }, []);

  function remember(id, n) {
    if (n) setName(n);
    if (id) setIid(id);
  }

  // Keep the name for a reload of this tab.
  useEffect(() => {
    if (!iid || !name) return;
    try {
      sessionStorage.setItem(`daas.desktop.${iid}`, JSON.stringify({ name }));
    } catch {
      /* private mode */
    }
  }, [iid, name]);

  // 2. Wait until the instance runs.
  useEffect(() => {
    if (stage !== 'waiting' || !iid) return;
    let alive = true;
    let timer = null;
    const started = Date.now();
    const poll = async () => {
      try {
        const i = await get(`/api/v1/instances/${encodeURIComponent(iid)}`);
        if (!alive) return;
        if (i.state === 'running') {
          performance.mark('daas-running');
          setStage('live');
          return;
        }
        if (i.state !== 'starting') {
          setError(new Error(i.error ? `The desktop could not start: ${i.error}` : `This desktop is ${i.state}.`));
          setStage('failed');
          return;
        }
      } catch (e) {
        if (!alive || e.status === 401) return;
        if (e.status === 404) {
          setError(e);
          setStage('failed');
          return;
        }
      }
      const elapsed = Date.now() - started;
      timer = setTimeout(poll, elapsed < 5000 ? START_POLL_MS : 1000);
    };
    poll();
    return () => {
      alive = false;
      clearTimeout(timer);
    };
  }, [stage, iid]);

  // 3. Connect.
  useEffect(() => {
    if (stage !== 'live') return;
    let s = null;
    let alive = true;
    loadGuacamole().then((Guacamole) => {
      if (!alive) return;
      const idle = Number(new URLSearchParams(location.search).get('idle')) || 0;
      s = new RemoteSession({ Guacamole, instanceId: iid, container: container.current, onChange: setRemote, idleSecs: idle });
      s.onMenuChord = () => setMenu((m) => !m);
      session.current = s;
      s.connect();
    });
    return () => {
      alive = false;
      if (s) s.close();
    };
  }, [stage]);

  // Input goes to the desktop only while no menu or dialog covers it.
  const phase = remote ? remote.phase : 'connecting';
  useEffect(() => {
    if (session.current) session.current.setInput(!menu && phase === 'connected');
  }, [menu, phase]);

  useEffect(() => {
    const f = () => setFull(!!document.fullscreenElement);
    document.addEventListener('fullscreenchange', f);
    return () => document.removeEventListener('fullscreenchange', f);
  }, []);

  async function toggleFullscreen() {
    try {
      if (document.fullscreenElement) await document.exitFullscreen();
      else {
        await document.documentElement.requestFullscreen();
        // In full screen, let Escape, Alt+Tab and the like reach the desktop where the browser can.
        if (navigator.keyboard && navigator.keyboard.lock) navigator.keyboard.lock().catch(() => {});
      }
    } catch {
      /* refused */
    }
  }

  async function stop() {
    setMenu(false);
    const s = session.current;
    if (s) s.disconnect('ended', 'Stopping this desktop…');
    try {
      await post(`/api/v1/instances/${encodeURIComponent(iid)}/stop`);
      if (s) s.end('ended', 'This desktop was stopped.');
    } catch (e) {
      if (s) s.end('ended', e.message);
    }
  }

  const overlay = overlayFor(stage, phase, remote, error);
  return (
    <div class="desktop-page" data-phase={stage === 'live' ? phase : stage}>
      <div class="desktop" ref={container} aria-label={name ? `Desktop of ${name}` : 'Desktop'} role="application" />
      {remote && remote.unstable && phase === 'connected' ? (
        <div class="banner unstable" role="status">
          Unstable connection: waiting for the network…
        </div>
      ) : null}
      {remote && remote.idleLeft !== null && phase === 'connected' ? (
        <div class="banner idle" role="alert">
          <span>
            No input for a while: this desktop disconnects in <strong>{remote.idleLeft} s</strong>.
          </span>
          <button type="button" class="small" onClick={() => session.current && session.current.activity()}>
            Stay connected
          </button>
        </div>
      ) : null}
      {overlay ? (
        <div class="desktop-overlay">
          <div class="card narrow" role={overlay.alert ? 'alert' : 'status'}>
            <h1>{overlay.title}</h1>
            {overlay.text ? <p>{overlay.text}</p> : null}
            {overlay.busy ? <div class="spinner" aria-hidden="true" /> : null}
            {overlay.error ? <ErrorText error={overlay.error} /> : null}
            <div class="actions">
              {overlay.reconnect ? (
                <button type="button" class="primary" autofocus onClick={() => session.current && session.current.reconnectNow()}>
                  {overlay.reconnect}
                </button>
              ) : null}
              <a href="/" class="button">
                My apps
              </a>
            </div>
          </div>
        </div>
      ) : null}
      <button
        type="button"
        class={`menu-handle ${menu ? 'open' : ''}`}
        aria-expanded={menu}
        aria-controls="desktop-menu"
        title="Menu (Ctrl+Alt+Shift)"
        onClick={() => setMenu((m) => !m)}
      >
        <span aria-hidden="true">☰</span>
        <span class="sr-only">Desktop menu</span>
      </button>
      {menu ? (
        <DesktopMenu
          name={name}
          remote={remote}
          full={full}
          onFullscreen={toggleFullscreen}
          onClose={() => setMenu(false)}
          onStop={stop}
          session={session.current}
        />
      ) : null}
    </div>
  );
}

function overlayFor(stage, phase, remote, error) {
  if (stage === 'failed') return { title: 'This desktop cannot open', error, alert: true };
  if (stage === 'opening') return { title: 'Opening…', busy: true };
  if (stage === 'waiting') return { title: 'Starting your desktop…', busy: true };
  if (!remote || phase === 'connecting') return { title: 'Connecting…', busy: true };
  if (phase === 'reconnecting') {
    return {
      title: 'Reconnecting…',
      text: `${remote.message ? remote.message + ' ' : ''}Your desktop keeps running. ${remote.retryIn ? `Next try in ${remote.retryIn} s.` : 'Trying now.'}`,
      busy: true,
      reconnect: 'Reconnect now',
    };
  }
  if (phase === 'idle') return { title: 'Disconnected', text: remote.message, reconnect: 'Reconnect' };
  if (phase === 'ended')
    return { title: remote.message === 'Stopping this desktop…' ? 'Stopping…' : 'Desktop closed', text: remote.message, alert: true };
  if (phase === 'failed') return { title: 'Disconnected', text: remote.message, reconnect: 'Try again', alert: true };
  return null;
}

function DesktopMenu({ name, remote, full, onFullscreen, onClose, onStop, session }) {
  const ref = useRef(null);
  const [clip, setClip] = useState((remote && remote.remoteClip) || '');
  useEffect(() => {
    const first = ref.current && ref.current.querySelector('button, textarea');
    if (first) first.focus();
    const esc = (e) => {
      const chord = !e.repeat && e.ctrlKey && e.altKey && e.shiftKey && ['Control', 'Alt', 'Shift'].includes(e.key);
      if (e.key === 'Escape' || chord) {
        e.preventDefault();
        onClose();
      }
    };
    document.addEventListener('keydown', esc);
    return () => document.removeEventListener('keydown', esc);
  }, []);
  useEffect(() => {
    if (remote && remote.remoteClip !== undefined) setClip(remote.remoteClip);
  }, [remote && remote.remoteClip]);
  return (
    <aside class="desktop-menu" id="desktop-menu" ref={ref} aria-label="Desktop menu">
      <header class="dialog-head">
        <h2>{name || 'Desktop'}</h2>
        <button type="button" class="icon" aria-label="Close the menu" onClick={onClose}>
          ×
        </button>
      </header>
      <div class="menu-group">
        <button type="button" onClick={onFullscreen}>
          {full ? 'Leave full screen' : 'Full screen'}
        </button>
        <button
          type="button"
          onClick={() => {
            session && session.sendKeys([0xffe3, 0xffe9, 0xffff]);
            onClose();
          }}
        >
          Send Ctrl+Alt+Del
        </button>
      </div>
      <label>
        Clipboard
        <textarea rows={5} value={clip} onInput={(e) => setClip(e.currentTarget.value)} aria-describedby="clip-help" />
      </label>
      <p id="clip-help" class="muted small">
        Text copied in the desktop appears here and in your clipboard. Edit it and press “Send to desktop” to paste it there.
      </p>
      <div class="menu-group">
        <button type="button" onClick={() => session && session.sendClipboard(clip)}>
          Send to desktop
        </button>
      </div>
      <div class="menu-group">
        <a class="button" href="/" target="_blank" rel="noopener">
          My apps
        </a>
        <button type="button" class="danger" onClick={onStop}>
          Stop this desktop
        </button>
      </div>
      <p class="muted small">
        <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+<kbd>Shift</kbd> opens and closes this menu; <kbd>Esc</kbd> closes it.
      </p>
    </aside>
  );
}

function recall(id) {
  try {
    return JSON.parse(sessionStorage.getItem(`daas.desktop.${id}`) || 'null');
  } catch {
    return null;
  }
}

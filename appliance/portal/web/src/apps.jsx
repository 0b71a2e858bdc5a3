// "My apps": the apps this user may open, each with its state, Open and Stop.
import { useEffect, useRef, useState } from 'preact/hooks';
import { get, post } from './api.js';
import { Badge, ErrorText, setTitle, usePoll } from './ui.jsx';

/** Opens (or focuses) the tab of an app's desktop. */
export function openDesktopTab(url, name) {
  // A named tab per object: opening an app twice focuses its tab.
  let w = null;
  try {
    w = window.open('', name);
  } catch {
    w = null;
  }
  if (!w) {
    // The browser refused a new tab: use this one.
    location.assign(url);
    return;
  }
  let blank = true;
  try {
    blank = w.location.href === 'about:blank' || !w.location.pathname.startsWith('/desktop/');
  } catch {
    blank = true;
  }
  if (blank) w.location.replace(url);
  w.focus();
}

export function Apps() {
  const [pending, setPending] = useState({}); // app id -> 'opening' | 'stopping'
  const [error, setError] = useState(null);
  const busyRef = useRef(false);
  const [data, loadError, reload] = usePoll(
    () => get('/api/v1/apps'),
    () => (busyRef.current ? 1000 : 4000),
  );
  const items = (data && data.items) || [];
  busyRef.current = items.some((a) => a.instance && ['starting', 'stopping'].includes(a.instance.state));
  useEffect(() => setTitle('My apps'), []);

  function open(app) {
    setError(null);
    openDesktopTab(`/open/apps/${encodeURIComponent(app.id)}`, `daas-app-${app.id}`);
    setPending((p) => ({ ...p, [app.id]: 'opening' }));
    setTimeout(() => {
      setPending((p) => ({ ...p, [app.id]: undefined }));
      reload();
    }, 1500);
  }

  async function stop(app) {
    setError(null);
    setPending((p) => ({ ...p, [app.id]: 'stopping' }));
    try {
      await post(`/api/v1/instances/${app.instance.id}/stop`);
    } catch (e) {
      if (e.status !== 401) setError(e);
    }
    setPending((p) => ({ ...p, [app.id]: undefined }));
    reload();
  }

  return (
    <section class="apps">
      <h1>My apps</h1>
      <ErrorText error={error || loadError} />
      {data && items.length === 0 ? (
        <p class="empty">No apps yet. An admin makes apps in the Lifecycle pages and shares them with every user.</p>
      ) : null}
      {!data && !loadError ? (
        <p class="muted" aria-busy="true">
          Loading your apps…
        </p>
      ) : null}
      <ul class="app-grid" aria-label="Apps">
        {items.map((app) => {
          const inst = app.instance;
          const state = pending[app.id] === 'stopping' ? 'stopping' : inst ? inst.state : null;
          const live = inst && ['starting', 'running'].includes(inst.state);
          return (
            <li class="app-card" key={app.id} data-app={app.name}>
              <span class="app-icon" aria-hidden="true">
                {initials(app.name)}
              </span>
              <div class="app-main">
                <h2 class="app-name">{app.name}</h2>
                <p class="app-state">{state ? <Badge state={state} /> : <span class="muted">Not running</span>}</p>
              </div>
              <div class="app-actions">
                <button
                  type="button"
                  class="primary"
                  onClick={() => open(app)}
                  disabled={state === 'stopping'}
                  aria-label={`${live ? 'Show' : 'Open'} ${app.name}`}
                >
                  {pending[app.id] === 'opening' ? 'Opening…' : live ? 'Show' : 'Open'}
                </button>
                {inst && inst.state !== 'stopping' ? (
                  <button type="button" onClick={() => stop(app)} aria-label={`Stop ${app.name}`} disabled={!!pending[app.id]}>
                    Stop
                  </button>
                ) : null}
              </div>
            </li>
          );
        })}
      </ul>
      <p class="hint muted">
        Each app opens in its own browser tab. In a desktop, press <kbd>Ctrl</kbd>+<kbd>Alt</kbd>+<kbd>Shift</kbd> for its menu (clipboard,
        full screen, stop).
      </p>
    </section>
  );
}

/** Two letters for an app's tile: "Office Writer" → "OW", "XTerm" → "XT". */
function initials(name) {
  const words = String(name || '?').trim().split(/\s+/);
  const s = words.length > 1 ? words[0][0] + words[1][0] : [...words[0]].slice(0, 2).join('');
  return s.toUpperCase();
}

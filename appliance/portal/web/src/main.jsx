// The portal: boots, knows who is logged in, routes.
import './style.css';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, setUnauthorizedHandler } from './api.js';
import { match, navigate, safeNext, useLocation } from './router.js';
import { ErrorText, Link, setTitle } from './ui.jsx';
import { Login } from './login.jsx';
import { Apps } from './apps.jsx';
import { Lifecycle } from './lifecycle.jsx';
import { JobDetail, Jobs } from './jobs.jsx';
import { Users } from './users.jsx';
import { Sessions } from './sessions.jsx';
import { Account } from './account.jsx';
import { System } from './system.jsx';
import { loadGuacamole } from './guac.js';

const isDesktop = (p) => p.startsWith('/desktop/') || p.startsWith('/open/');

// A desktop tab starts loading the remote-desktop code at once.
let desktopModule = null;
function loadDesktop() {
  desktopModule ||= Promise.all([import('./desktop.jsx'), loadGuacamole()]).then(([m]) => m);
  return desktopModule;
}
if (isDesktop(location.pathname)) loadDesktop();

// A tab opened on /open/… asks for its instance at once, while its code loads.
const early = location.pathname.match(/^\/open\/([a-z]+)\/([^/?]+)$/);
let earlyOpen = early
  ? {
      path: location.pathname,
      promise: api('POST', `/api/v1/${early[1]}/${early[2]}/open`, undefined, { quiet401: true }),
    }
  : null;
if (earlyOpen) earlyOpen.promise.catch(() => {});

/** The early answer for `path`, once. */
function takeEarlyOpen(path) {
  const e = earlyOpen && earlyOpen.path === path ? earlyOpen.promise : null;
  earlyOpen = null;
  return e;
}

function App() {
  const loc = useLocation();
  const path = loc.split('?')[0];
  // undefined: asking; null: logged out; else the user.
  const [me, setMe] = useState(undefined);
  const [bootError, setBootError] = useState(null);

  useEffect(() => {
    setUnauthorizedHandler(() => {
      setMe(null);
      const here = location.pathname + location.search;
      if (!location.pathname.startsWith('/login')) navigate(`/login?expired=1&next=${encodeURIComponent(here)}`, { replace: true });
    });
    boot();
  }, []);

  async function boot() {
    setBootError(null);
    try {
      setMe(await api('GET', '/api/v1/me', undefined, { quiet401: true }));
    } catch (e) {
      if (e.status === 401) {
        setMe(null);
        if (!location.pathname.startsWith('/login')) {
          const here = location.pathname + location.search;
          navigate(here === '/' ? '/login' : `/login?next=${encodeURIComponent(here)}`, { replace: true });
        }
      } else setBootError(e);
    }
  }

  if (bootError) {
    return (
      <main class="center-page">
        <div class="card narrow">
          <h1>The portal cannot start</h1>
          <ErrorText error={bootError} />
          <button class="primary" onClick={boot}>
            Try again
          </button>
        </div>
      </main>
    );
  }
  if (me === undefined) return <div class="loading" aria-busy="true" />;
  if (me === null) {
    const next = new URLSearchParams(location.search).get('next');
    return (
      <Login
        onLogin={(u) => {
          setMe(u);
          navigate(safeNext(next), { replace: true });
        }}
      />
    );
  }
  if (path.startsWith('/login')) {
    navigate(safeNext(new URLSearchParams(location.search).get('next')), { replace: true });
    return null;
  }
  if (isDesktop(path)) return <DesktopRoute path={path} me={me} />;
  return (
    <Shell me={me} path={path} onLogout={() => setMe(null)}>
      <Page path={path} me={me} />
    </Shell>
  );
}

function DesktopRoute({ path, me }) {
  const [mod, setMod] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    loadDesktop().then(setMod, () => setError(new Error('The desktop view could not be loaded. Reload the page to try again.')));
  }, []);
  if (error)
    return (
      <main class="center-page">
        <ErrorText error={error} />
      </main>
    );
  if (!mod) return <div class="desktop-page" aria-busy="true" />;
  const open = match('/open/:plural/:id', path);
  const desk = match('/desktop/:id', path);
  return <mod.Desktop me={me} open={open} early={open ? takeEarlyOpen(path) : null} instanceId={desk && desk.id} />;
}

function Page({ path, me }) {
  let m;
  if (path === '/') return <Apps me={me} />;
  if (path === '/lifecycle') return <Lifecycle me={me} plural="baseimages" />;
  if ((m = match('/lifecycle/:plural', path))) return <Lifecycle me={me} plural={m.plural} />;
  if (path === '/jobs') return <Jobs me={me} />;
  if ((m = match('/jobs/:id', path))) return <JobDetail id={m.id} />;
  if (path === '/admin/users' && me.role === 'admin') return <Users me={me} />;
  if (path === '/admin/sessions' && me.role === 'admin') return <Sessions me={me} />;
  if (path === '/admin/system' && me.role === 'admin') return <System />;
  if (path === '/account') return <Account me={me} />;
  setTitle('Not found');
  return (
    <section>
      <h1>Nothing here</h1>
      <p>
        This page does not exist. <Link href="/">Go to my apps</Link>.
      </p>
    </section>
  );
}

const NAV = [
  ['/', 'My apps', false],
  ['/lifecycle', 'Lifecycle', false],
  ['/jobs', 'Jobs', false],
  ['/admin/users', 'Users', true],
  ['/admin/sessions', 'Sessions', true],
  ['/admin/system', 'System', true],
];

function Shell({ me, path, children, onLogout }) {
  const admin = me.role === 'admin';
  async function logout() {
    try {
      await api('DELETE', '/api/v1/session', undefined, { quiet401: true });
    } catch {
      /* logged out either way */
    }
    onLogout();
    navigate('/login', { replace: true });
  }
  // Focus the page's heading after navigating, for keyboard and screen reader users.
  useEffect(() => {
    const h = document.querySelector('main h1');
    if (h && document.activeElement === document.body) {
      h.setAttribute('tabindex', '-1');
      h.focus({ preventScroll: true });
    }
  }, [path]);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link href="/" class="brand" aria-label="DaaS, my apps">
          <span class="logo" aria-hidden="true" />
          DaaS
        </Link>
        <nav aria-label="Main">
          <ul>
            {NAV.filter(([, , a]) => admin || !a).map(([href, text]) => {
              const current = href === '/' ? path === '/' : path.startsWith(href);
              return (
                <li>
                  <Link href={href} aria-current={current ? 'page' : undefined}>
                    {text}
                  </Link>
                </li>
              );
            })}
          </ul>
        </nav>
        <div class="account">
          <Link href="/account" class="who" title="Account">
            {me.name}
            {admin ? <span class="role">admin</span> : null}
          </Link>
          <button type="button" class="link" onClick={logout}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabindex="-1">
        {children}
      </main>
    </>
  );
}

render(<App />, document.getElementById('root'));

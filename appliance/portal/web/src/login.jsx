import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from './api.js';
import { ErrorText, setTitle } from './ui.jsx';

export function Login({ onLogin }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const user = useRef(null);
  const q = new URLSearchParams(location.search);
  const note = q.has('changed')
    ? 'Your password is changed. Log in with the new one.'
    : q.has('expired')
      ? 'Your session has ended. Log in to go on where you were.'
      : 'Log in to open your apps.';
  useEffect(() => {
    setTitle('Log in');
    user.current && user.current.focus();
  }, []);
  async function submit(e) {
    e.preventDefault();
    const f = new FormData(e.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const r = await api(
        'POST',
        '/api/v1/session',
        { username: String(f.get('username')).trim(), password: String(f.get('password')) },
        { quiet401: true },
      );
      onLogin(r.user);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  }
  return (
    <main class="center-page login">
      <form class="card narrow" onSubmit={submit} aria-describedby={error ? 'login-error' : undefined}>
        <h1>
          <span class="logo" aria-hidden="true" /> DaaS
        </h1>
        <p class="muted">{note}</p>
        <label>
          User name
          <input ref={user} name="username" autocomplete="username" autocapitalize="none" spellcheck={false} required />
        </label>
        <label>
          Password
          <input name="password" type="password" autocomplete="current-password" required />
        </label>
        <ErrorText error={error} id="login-error" />
        <button class="primary wide" type="submit" disabled={busy}>
          {busy ? 'Logging in…' : 'Log in'}
        </button>
      </form>
    </main>
  );
}

import { useEffect, useState } from 'preact/hooks';
import { post } from './api.js';
import { ErrorText, setTitle, useAction } from './ui.jsx';

/** The caller's own account: change the password. */
export function Account({ me }) {
  const act = useAction();
  const [done, setDone] = useState(false);
  useEffect(() => setTitle('Account'), []);
  async function submit(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const f = new FormData(form);
    setDone(false);
    if (f.get('password') !== f.get('again')) {
      act.setError(new Error('The two new passwords differ.'));
      return;
    }
    const r = await act.run(() =>
      post(`/api/v1/users/${me.id}/password`, { password: f.get('password'), current_password: f.get('current') }),
    );
    if (r !== undefined) {
      // The appliance ends every session of the user, this one included.
      form.reset();
      setDone(true);
      location.assign('/login?changed=1');
    }
  }
  return (
    <section>
      <h1>Account</h1>
      <p>
        You are <strong>{me.name}</strong>, {me.role === 'admin' ? 'an admin' : 'a user'}.
      </p>
      <form class="card narrow" onSubmit={submit}>
        <h2>Change your password</h2>
        <label>
          Current password
          <input name="current" type="password" autocomplete="current-password" required />
        </label>
        <label>
          New password (at least 8 characters)
          <input name="password" type="password" autocomplete="new-password" minLength={8} required />
        </label>
        <label>
          New password again
          <input name="again" type="password" autocomplete="new-password" minLength={8} required />
        </label>
        <ErrorText error={act.error} />
        {done ? (
          <p class="ok" role="status">
            Your password is changed. Log in with the new one.
          </p>
        ) : null}
        <button class="primary" disabled={act.busy}>
          Change password
        </button>
      </form>
    </section>
  );
}

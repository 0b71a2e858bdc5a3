// Users (admins): create, disable and enable, reset a password.
import { useEffect, useState } from 'preact/hooks';
import { get, post } from './api.js';
import { ago, Badge, Dialog, ErrorText, setTitle, usePoll, useAction, when } from './ui.jsx';

export function Users({ me }) {
  const [data, error, reload] = usePoll(() => get('/api/v1/users'), 10000);
  const [reset, setReset] = useState(null);
  const [note, setNote] = useState(null);
  const act = useAction();
  useEffect(() => setTitle('Users'), []);
  const users = (data && data.items) || [];

  async function create(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const f = new FormData(form);
    const name = String(f.get('name')).trim();
    const r = await act.run(() => post('/api/v1/users', { name, role: f.get('role'), password: f.get('password') }));
    if (r) {
      form.reset();
      setNote(`The user ${name} can log in now.`);
      reload();
    }
  }

  async function toggle(u) {
    setNote(null);
    const r = await act.run(() => post(`/api/v1/users/${u.id}/${u.disabled ? 'enable' : 'disable'}`));
    if (r) {
      setNote(u.disabled ? `${u.name} can log in again.` : `${u.name} is disabled; their sessions have ended.`);
      reload();
    }
  }

  return (
    <section>
      <h1>Users</h1>
      <ErrorText error={error || act.error} />
      {note ? (
        <p class="ok" role="status">
          {note}
        </p>
      ) : null}
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Role</th>
              <th scope="col">State</th>
              <th scope="col">Made</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {users.map((u) => (
              <tr key={u.id} data-user={u.name}>
                <th scope="row">
                  {u.name}
                  {u.id === me.id ? <span class="muted"> (you)</span> : null}
                </th>
                <td>{u.role}</td>
                <td>{u.disabled ? <Badge state="failed">Disabled</Badge> : <Badge state="running">Active</Badge>}</td>
                <td title={when(u.created_at)}>{ago(u.created_at)}</td>
                <td>
                  <div class="actions-cell">
                    {u.id !== me.id ? (
                      <button
                        type="button"
                        class="small"
                        disabled={act.busy}
                        onClick={() => toggle(u)}
                        aria-label={`${u.disabled ? 'Enable' : 'Disable'} ${u.name}`}
                      >
                        {u.disabled ? 'Enable' : 'Disable'}
                      </button>
                    ) : null}
                    <button type="button" class="small" onClick={() => setReset(u)} aria-label={`Reset the password of ${u.name}`}>
                      Reset password
                    </button>
                  </div>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <form class="card" onSubmit={create} aria-labelledby="new-user">
        <h2 id="new-user">New user</h2>
        <div class="row">
          <label>
            User name
            <input
              name="name"
              required
              maxLength={64}
              pattern="[A-Za-z0-9][A-Za-z0-9._@\-]*"
              title="Letters, digits and . _ - @, starting with a letter or digit"
              autocomplete="off"
            />
          </label>
          <div class="field">
            <label for="f-role">Role</label>
            <select id="f-role" name="role">
              <option value="user">user</option>
              <option value="admin">admin</option>
            </select>
          </div>
          <label>
            Password (at least 8 characters)
            <input name="password" type="password" minLength={8} required autocomplete="new-password" />
          </label>
        </div>
        <button class="primary" disabled={act.busy}>
          Create user
        </button>
      </form>
      {reset ? (
        <ResetPassword
          user={reset}
          onClose={() => setReset(null)}
          onDone={() => {
            setNote(`The password of ${reset.name} is changed; their sessions have ended.`);
            setReset(null);
            if (reset.id === me.id) location.assign('/login?changed=1');
          }}
        />
      ) : null}
    </section>
  );
}

function ResetPassword({ user, onClose, onDone }) {
  const act = useAction();
  async function submit(e) {
    e.preventDefault();
    const f = new FormData(e.currentTarget);
    const r = await act.run(() => post(`/api/v1/users/${user.id}/password`, { password: f.get('password') }));
    if (r !== undefined) onDone();
  }
  return (
    <Dialog title={`Reset the password of ${user.name}`} onClose={onClose}>
      <form onSubmit={submit}>
        <label>
          New password (at least 8 characters)
          <input name="password" type="password" minLength={8} required autocomplete="new-password" autofocus />
        </label>
        <p class="muted small">Their open sessions end; their running desktops stay.</p>
        <ErrorText error={act.error} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button class="primary" disabled={act.busy}>
            Set password
          </button>
        </div>
      </form>
    </Dialog>
  );
}

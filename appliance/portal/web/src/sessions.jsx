// Open sessions (admins): every user's live instances, with a stop action.
import { useEffect, useState } from 'preact/hooks';
import { get, post } from './api.js';
import { PHASES } from './lifecycle.jsx';
import { ago, Badge, Confirm, ErrorText, setTitle, usePoll, useAction, when } from './ui.jsx';

export function Sessions() {
  const act = useAction();
  const [confirm, setConfirm] = useState(null);
  const [data, error, reload] = usePoll(async () => {
    const [inst, users, ...objs] = await Promise.all([
      get('/api/v1/instances?all=true&active=true'),
      get('/api/v1/users'),
      ...PHASES.map((p) => get(`/api/v1/${p.plural}`)),
    ]);
    return { items: inst.items, users: users.items, objects: objs.flatMap((o) => o.items) };
  }, 3000);
  useEffect(() => setTitle('Sessions'), []);
  const items = (data && data.items) || [];
  const user = (id) => ((data && data.users.find((u) => u.id === id)) || {}).name || id.slice(0, 8);
  const object = (id) => (data && data.objects.find((o) => o.id === id)) || { name: id.slice(0, 8), phase: '' };

  return (
    <section>
      <h1>Open sessions</h1>
      <p class="muted">Every user’s running desktops. Stopping one ends its desktop and disconnects its tab.</p>
      <ErrorText error={error || act.error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">User</th>
              <th scope="col">Desktop</th>
              <th scope="col">State</th>
              <th scope="col">Since</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {items.map((i) => {
              const o = object(i.object_id);
              return (
                <tr key={i.id} data-instance={i.id}>
                  <th scope="row">{user(i.user_id)}</th>
                  <td>
                    {o.name}
                    <div class="muted small">
                      {o.phase}
                      {i.purpose === 'configure' ? ', configuration' : ''}
                    </div>
                  </td>
                  <td>
                    <Badge state={i.state} />
                  </td>
                  <td title={when(i.created_at)}>{ago(i.created_at)}</td>
                  <td>
                    {i.state !== 'stopping' ? (
                      <button
                        type="button"
                        class="small danger-text"
                        aria-label={`Stop ${o.name} of ${user(i.user_id)}`}
                        onClick={() =>
                          setConfirm({
                            title: `Stop ${o.name} of ${user(i.user_id)}?`,
                            text: 'The desktop ends and its tab disconnects. Unsaved work in it is lost.',
                            yes: 'Stop',
                            danger: true,
                            go: async () => {
                              await act.run(() => post(`/api/v1/instances/${i.id}/stop`));
                              reload();
                            },
                          })
                        }
                      >
                        Stop
                      </button>
                    ) : null}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {data && items.length === 0 ? <p class="empty">No open sessions.</p> : null}
      {confirm ? (
        <Confirm
          {...confirm}
          onAnswer={(yes) => {
            const c = confirm;
            setConfirm(null);
            if (yes) c.go();
          }}
        />
      ) : null}
    </section>
  );
}

// System (admins): the configured backends and what they can do, and what
// the reconciler found on them that the appliance does not know (orphans).
import { useEffect, useState } from 'preact/hooks';
import { del, get } from './api.js';
import { Confirm, ErrorText, setTitle, usePoll, useAction } from './ui.jsx';

const CAPS = [
  ['vm', 'VMs'],
  ['container', 'containers'],
  ['linked_clone', 'linked clones'],
  ['live_snapshot', 'live snapshots'],
  ['resize', 'resize'],
  ['clipboard', 'clipboard'],
];

export function System() {
  const act = useAction();
  const [confirm, setConfirm] = useState(null);
  const [note, setNote] = useState(null);
  const [data, error, reload] = usePoll(async () => {
    const [b, o] = await Promise.all([get('/api/v1/backends'), get('/api/v1/admin/orphans')]);
    return { backends: b.items, orphans: o.items };
  }, 10000);
  useEffect(() => setTitle('System'), []);
  const backends = (data && data.backends) || [];
  const orphans = (data && data.orphans) || [];
  return (
    <section>
      <h1>System</h1>
      <ErrorText error={error || act.error} />
      {note ? (
        <p class="ok" role="status">
          {note}
        </p>
      ) : null}
      <h2>Backends</h2>
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Backend</th>
              <th scope="col">Can do</th>
            </tr>
          </thead>
          <tbody>
            {backends.map((b) => (
              <tr key={b.kind} data-backend={b.kind}>
                <th scope="row">{b.kind}</th>
                <td>
                  {CAPS.filter(([k]) => b.capabilities && b.capabilities[k])
                    .map(([, t]) => t)
                    .join(', ') || '—'}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <h2>Orphans</h2>
      <p class="muted">Things on the backends marked as this appliance’s that its store does not know, from the reconciler’s last pass.</p>
      {data && orphans.length === 0 ? <p class="empty">No orphans.</p> : null}
      {orphans.length ? (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Backend</th>
                <th scope="col">What</th>
                <th scope="col">Id</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {orphans.map((o) => (
                <tr key={`${o.backend}/${o.what}/${o.id}`}>
                  <td>{o.backend}</td>
                  <td>{o.what}</td>
                  <td class="mono small">{o.id}</td>
                  <td>
                    <button
                      type="button"
                      class="small danger-text"
                      onClick={() =>
                        setConfirm({
                          title: `Remove this ${o.what} from ${o.backend}?`,
                          text: `${o.id} is removed from the backend. This cannot be undone.`,
                          yes: 'Remove',
                          danger: true,
                          go: async () => {
                            const r = await act.run(() => del(`/api/v1/admin/orphans/${o.backend}/${o.what}/${encodeURIComponent(o.id)}`));
                            if (r !== undefined) setNote(`Removed ${o.id}.`);
                            reload();
                          },
                        })
                      }
                    >
                      Remove
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
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

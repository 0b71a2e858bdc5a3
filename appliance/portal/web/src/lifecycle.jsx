// The lifecycle: Baseimages → Environments → Deployments → Apps, with
// their subphases, actions and jobs.
import { useEffect, useRef, useState } from 'preact/hooks';
import { del, get, post } from './api.js';
import { openDesktopTab } from './apps.jsx';
import { JobPanel } from './jobs.jsx';
import { ObjectForm } from './objectForm.jsx';
import { Badge, Confirm, ErrorText, Link, Progress, Stepper, setTitle, usePoll, useAction, SUBPHASE_TEXT } from './ui.jsx';

export const PHASES = [
  { plural: 'baseimages', phase: 'baseimage', one: 'Baseimage', many: 'Baseimages', child: 'environments', transition: 'CloneTemplate' },
  {
    plural: 'environments',
    phase: 'environment',
    one: 'Environment',
    many: 'Environments',
    child: 'deployments',
    transition: 'CreateSnapshot',
  },
  { plural: 'deployments', phase: 'deployment', one: 'Deployment', many: 'Deployments', child: 'apps', transition: 'RunApp' },
  { plural: 'apps', phase: 'app', one: 'App', many: 'Apps', child: null, transition: null },
];
export const phaseOf = (plural) => PHASES.find((p) => p.plural === plural);
const byPhase = (phase) => PHASES.find((p) => p.phase === phase);

const HELP = {
  baseimages: 'A Baseimage is a desktop template (phase 0). Admins make them; every user may clone a ready one into an Environment.',
  environments: 'An Environment is a user’s own copy of a Baseimage (phase 1), made with CloneTemplate from a ready Baseimage.',
  deployments: 'A Deployment is a snapshot of an Environment with the apps installed and configured (phase 2), made with CreateSnapshot.',
  apps: 'An App runs one program from a Deployment (phase 3), made with RunApp. Shared Apps appear in every user’s “My apps”.',
};

export function Lifecycle({ me, plural }) {
  const info = phaseOf(plural) || PHASES[0];
  const admin = me.role === 'admin';
  const [form, setForm] = useState(null); // { phase info, parent }
  const [jobs, setJobs] = useState([]); // [{ id, title }]
  const [confirm, setConfirm] = useState(null);
  const act = useAction();
  const busyRef = useRef(false);
  const [data, error, reload] = usePoll(
    async () => {
      const [objs, jobList, users] = await Promise.all([
        get(`/api/v1/${info.plural}`),
        get(`/api/v1/jobs?limit=200${admin ? '&all=true' : ''}`),
        admin ? get('/api/v1/users') : Promise.resolve({ items: [me] }),
      ]);
      let parents = { items: [] };
      if (info.phase !== 'baseimage') parents = await get(`/api/v1/${PHASES[PHASES.indexOf(info) - 1].plural}`);
      return { objs: objs.items, jobs: jobList.items, users: users.items, parents: parents.items };
    },
    () => (busyRef.current ? 1000 : 5000),
    [info.plural, admin],
  );
  useEffect(() => setTitle(info.many), [info.plural]);
  const objs = (data && data.objs) || [];
  busyRef.current = objs.some((o) => o.status === 'busy');
  const userName = (id) => ((data && data.users.find((u) => u.id === id)) || {}).name || id.slice(0, 8);
  const parentName = (id) => ((data && data.parents.find((o) => o.id === id)) || {}).name;
  const latestJob = (oid) => data && data.jobs.find((j) => j.object_id === oid);

  function started(r, title) {
    if (r && r.job) setJobs((js) => [{ id: r.job.id, title }, ...js.filter((j) => j.id !== r.job.id)].slice(0, 4));
    reload();
  }

  async function action(o, what) {
    const p = byPhase(o.phase);
    const path = `/api/v1/${p.plural}/${o.id}`;
    if (what === 'delete') {
      setConfirm({
        title: `Delete ${p.one.toLowerCase()} “${o.name}”?`,
        text: 'Its backend artefacts are removed too. This cannot be undone.',
        yes: 'Delete',
        danger: true,
        go: async () => started(await act.run(() => del(path)), `Delete “${o.name}”`),
      });
      return;
    }
    if (what === 'finalize') {
      setConfirm({
        title: `Finalize “${o.name}”?`,
        text: `This seals the ${p.one.toLowerCase()} (for a Baseimage: clears SSH host keys and the machine id, then makes it a template). Close its configuration desktop first.`,
        yes: 'Finalize',
        go: async () => started(await act.run(() => post(`${path}/finalize`)), `Finalize “${o.name}”`),
      });
      return;
    }
    if (what === 'retry') started(await act.run(() => post(`${path}/retry`)), `Retry “${o.name}”`);
    if (what === 'open') openDesktopTab(`/open/${p.plural}/${encodeURIComponent(o.id)}`, `daas-config-${o.id}`);
  }

  return (
    <section class="lifecycle">
      <h1>Lifecycle</h1>
      <nav class="tabs" aria-label="Phases">
        {PHASES.map((p, i) => (
          <Link href={`/lifecycle/${p.plural}`} aria-current={p.plural === info.plural ? 'page' : undefined}>
            <span class="tab-n" aria-hidden="true">
              {i}
            </span>
            {p.many}
          </Link>
        ))}
      </nav>
      <p class="muted">{HELP[info.plural]}</p>
      {info.phase === 'baseimage' && admin ? (
        <p>
          <button type="button" class="primary" onClick={() => setForm({ info, parent: null })}>
            New Baseimage
          </button>
        </p>
      ) : null}
      <ErrorText error={error || act.error} />
      {jobs.map((j) => (
        <JobPanel
          key={j.id}
          id={j.id}
          title={j.title}
          compact
          onFinished={() => reload()}
          onHide={() => setJobs((js) => js.filter((x) => x.id !== j.id))}
        />
      ))}
      <div class="table-wrap">
        <table class="objects">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Subphase</th>
              <th scope="col">Status</th>
              <th scope="col">Details</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {objs.map((o) => {
              const job = latestJob(o.id);
              const mine = o.owner_id === me.id;
              const child = info.child && phaseOf(info.child);
              return (
                <tr key={o.id} data-object={o.name}>
                  <th scope="row">
                    {o.name}
                    {o.parent_id ? <div class="muted small">from {parentName(o.parent_id) || o.parent_id.slice(0, 8)}</div> : null}
                  </th>
                  <td>
                    <Stepper object={o} />
                    <div class="small">{SUBPHASE_TEXT[o.subphase] || o.subphase}</div>
                  </td>
                  <td>
                    <Badge state={o.status} />
                    {o.status === 'busy' && job && !['succeeded', 'failed', 'cancelled'].includes(job.state) ? (
                      <div>
                        <Progress value={job.progress} label={`${o.name} job progress`} />
                      </div>
                    ) : null}
                    {o.error ? <div class="error small">{o.error}</div> : null}
                    {job ? (
                      <div class="small">
                        <Link href={`/jobs/${job.id}`}>Last job</Link>
                      </div>
                    ) : null}
                  </td>
                  <td class="small">
                    {o.backend} · {o.kind} · {o.platform} · {o.protocol}
                    {o.shared ? ' · shared' : ''}
                    <div class="muted">owner {mine ? 'you' : userName(o.owner_id)}</div>
                    {o.spec && o.spec.command && o.spec.command.length ? <div class="muted mono">{o.spec.command.join(' ')}</div> : null}
                  </td>
                  <td>
                    <div class="actions-cell">
                      {o.subphase === 'config_interactive' && o.status !== 'busy' && mine ? (
                        <>
                          <button type="button" class="primary small" onClick={() => action(o, 'open')}>
                            Open desktop
                          </button>
                          <button type="button" class="small" onClick={() => action(o, 'finalize')}>
                            Finalize
                          </button>
                        </>
                      ) : null}
                      {o.subphase === 'ready' && o.status !== 'failed' && child ? (
                        <button type="button" class="small" onClick={() => setForm({ info: child, parent: o })}>
                          New {child.one}
                        </button>
                      ) : null}
                      {o.status === 'failed' ? (
                        <button type="button" class="small" onClick={() => action(o, 'retry')}>
                          Retry
                        </button>
                      ) : null}
                      {o.status !== 'busy' && (mine || admin) ? (
                        <button type="button" class="small danger-text" onClick={() => action(o, 'delete')} aria-label={`Delete ${o.name}`}>
                          Delete
                        </button>
                      ) : null}
                    </div>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {data && objs.length === 0 ? <p class="empty">No {info.many.toLowerCase()} yet.</p> : null}
      {form ? (
        <ObjectForm
          me={me}
          info={form.info}
          parent={form.parent}
          parentInfo={form.parent ? byPhase(form.parent.phase) : null}
          onClose={() => setForm(null)}
          onCreated={(r, title) => {
            setForm(null);
            started(r, title);
          }}
        />
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

// Jobs: a list with progress bars, and one job with its steps and live log.
import { useEffect, useRef, useState } from 'preact/hooks';
import { get, post, wsUrl } from './api.js';
import { ago, Badge, ErrorText, Link, Progress, setTitle, usePoll, useAction, when } from './ui.jsx';

const KIND_TEXT = {
  create: 'Create',
  finalize: 'Finalize',
  start_instance: 'Start instance',
  stop_instance: 'Stop instance',
  delete_object: 'Delete',
};
export const jobKind = (k) => KIND_TEXT[k] || k;
const final = (s) => ['succeeded', 'failed', 'cancelled'].includes(s);

/**
 * One job, live: progress bar, steps and log lines streamed over the
 * job's WebSocket (`/api/v1/jobs/{id}/logs/stream`). Reconnects the
 * stream (from the last line seen) if it drops before the job ends.
 */
export function JobPanel({ id, title, onFinished, compact, onHide }) {
  const [job, setJob] = useState(null);
  const [lines, setLines] = useState([]);
  const [error, setError] = useState(null);
  const [streamDown, setStreamDown] = useState(false);
  const act = useAction();
  const logRef = useRef(null);
  const stick = useRef(true);
  const done = useRef(onFinished);
  done.current = onFinished;

  useEffect(() => {
    let alive = true;
    let ws = null;
    let last = 0;
    let retry = null;
    let attempts = 0;
    let ended = false;
    const refresh = () =>
      get(`/api/v1/jobs/${id}`).then(
        (j) => alive && setJob(j),
        (e) => alive && e.status !== 401 && setError(e),
      );
    refresh();
    const connect = () => {
      ws = new WebSocket(wsUrl(`/api/v1/jobs/${encodeURIComponent(id)}/logs/stream?after=${last}`));
      ws.onopen = () => {
        attempts = 0;
        setStreamDown(false);
      };
      ws.onmessage = (ev) => {
        let m;
        try {
          m = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (m.type === 'line' && m.line.seq > last) {
          last = m.line.seq;
          setLines((ls) => (ls.length > 5000 ? [...ls.slice(-4000), m.line] : [...ls, m.line]));
        } else if (m.type === 'progress') {
          setJob((j) => (j ? { ...j, progress: m.progress, state: j.state === 'queued' ? 'running' : j.state } : j));
          refresh();
        } else if (m.type === 'finished') {
          ended = true;
          refresh().then(() => done.current && done.current(m.state));
        }
      };
      ws.onclose = () => {
        if (!alive || ended) return;
        setStreamDown(true);
        attempts++;
        // Refresh the job, then try the stream again with a growing delay.
        refresh();
        retry = setTimeout(connect, Math.min(10000, 500 * 2 ** Math.min(attempts, 5)));
      };
    };
    connect();
    return () => {
      alive = false;
      clearTimeout(retry);
      if (ws) ws.close();
    };
  }, [id]);

  useEffect(() => {
    const el = logRef.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [lines]);

  const state = job ? job.state : 'queued';
  return (
    <section class={`job-panel ${compact ? 'compact' : ''}`} aria-label={title || 'Job'} data-job={id}>
      <div class="job-head">
        <h2 class="job-title">{title || (job ? jobKind(job.kind) : 'Job')}</h2>
        <Badge state={state} />
        <Progress value={job ? job.progress : 0} state={state} label={`${title || 'Job'} progress`} />
        {job && !final(job.state) ? (
          <button type="button" class="small" disabled={act.busy} onClick={() => act.run(() => post(`/api/v1/jobs/${id}/cancel`))}>
            Cancel
          </button>
        ) : null}
        {compact ? <Link href={`/jobs/${id}`}>Details</Link> : null}
        {onHide ? (
          <button type="button" class="link small" onClick={onHide} aria-label={`Hide ${title || 'job'}`}>
            Hide
          </button>
        ) : null}
      </div>
      <ErrorText error={error || act.error} />
      {job && job.error ? <p class="error">{job.error}</p> : null}
      {!compact && job && job.steps ? (
        <ol class="steps" aria-label="Steps">
          {job.steps.map((s) => (
            <li class={`step step-${s.state}`}>
              <span class="step-mark" aria-hidden="true" />
              {s.label} <span class="muted">({s.state})</span>
              {s.error ? <span class="error"> — {s.error}</span> : null}
            </li>
          ))}
        </ol>
      ) : null}
      {streamDown && !final(state) ? <p class="muted">The live log was interrupted; reconnecting…</p> : null}
      <ol
        class="log"
        ref={logRef}
        role="log"
        aria-live="polite"
        aria-label="Log"
        tabindex="0"
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
        }}
      >
        {lines.length === 0 ? <li class="muted">{final(state) ? 'No log lines.' : 'Waiting for log lines…'}</li> : null}
        {lines.map((l) => (
          <li class={`log-${l.level}`} key={l.seq}>
            <time dateTime={new Date(l.ts * 1000).toISOString()}>{new Date(l.ts * 1000).toLocaleTimeString()}</time> {l.line}
          </li>
        ))}
      </ol>
    </section>
  );
}

export function Jobs({ me }) {
  const admin = me.role === 'admin';
  const [data, error] = usePoll(() => get(`/api/v1/jobs?limit=100${admin ? '&all=true' : ''}`), 2000, [admin]);
  useEffect(() => setTitle('Jobs'), []);
  const items = (data && data.items) || [];
  return (
    <section>
      <h1>Jobs</h1>
      <p class="muted">{admin ? 'Every user’s jobs, newest first.' : 'Your jobs, newest first.'}</p>
      <ErrorText error={error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">Job</th>
              <th scope="col">State</th>
              <th scope="col">Progress</th>
              <th scope="col">Asked</th>
            </tr>
          </thead>
          <tbody>
            {items.map((j) => (
              <tr key={j.id}>
                <td>
                  <Link href={`/jobs/${j.id}`}>{jobKind(j.kind)}</Link>
                  <div class="muted small">
                    {j.object_id ? `object ${j.object_id.slice(0, 8)}` : j.instance_id ? `instance ${j.instance_id.slice(0, 8)}` : ''}
                  </div>
                </td>
                <td>
                  <Badge state={j.state} />
                  {j.error ? <div class="error small">{j.error}</div> : null}
                </td>
                <td>
                  <Progress value={j.progress} state={j.state} label={`${jobKind(j.kind)} progress`} />
                </td>
                <td title={when(j.created_at)}>{ago(j.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {data && items.length === 0 ? <p class="empty">No jobs yet.</p> : null}
    </section>
  );
}

export function JobDetail({ id }) {
  useEffect(() => setTitle('Job'), []);
  return (
    <section>
      <p>
        <Link href="/jobs">← All jobs</Link>
      </p>
      <h1>Job</h1>
      <JobPanel id={id} />
    </section>
  );
}

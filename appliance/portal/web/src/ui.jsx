// Small shared pieces: links, errors, badges, progress, dialogs, polling.
import { useEffect, useRef, useState, useCallback } from 'preact/hooks';
import { onLinkClick } from './router.js';

export function Link({ href, children, ...rest }) {
  return (
    <a href={href} onClick={onLinkClick} {...rest}>
      {children}
    </a>
  );
}

/** An error sentence from the API (or null). */
export function ErrorText({ error, id }) {
  if (!error) return null;
  return (
    <p class="error" role="alert" id={id}>
      {error.message || String(error)}
    </p>
  );
}

const STATE_TEXT = {
  starting: 'Starting',
  running: 'Running',
  stopping: 'Stopping',
  stopped: 'Stopped',
  failed: 'Failed',
  lost: 'Lost',
  queued: 'Queued',
  succeeded: 'Succeeded',
  cancelled: 'Cancelled',
  idle: 'Idle',
  busy: 'Working',
};

/** A coloured label for an instance, job or object state. */
export function Badge({ state, children }) {
  return <span class={`badge badge-${state}`}>{children || STATE_TEXT[state] || state}</span>;
}

/** A progress bar with its percentage. */
export function Progress({ value, label, state }) {
  const v = Math.max(0, Math.min(100, Number(value) || 0));
  return (
    <span class={`progress progress-${state || 'running'}`}>
      <progress max="100" value={v} aria-label={label || 'Progress'} />
      <span class="progress-value">{v}%</span>
    </span>
  );
}

export const SUBPHASES = ['create', 'config_auto', 'config_interactive', 'finalize', 'ready'];
export const SUBPHASE_TEXT = {
  create: 'Create',
  config_auto: 'Automatic configuration',
  config_interactive: 'Interactive configuration',
  finalize: 'Finalize',
  ready: 'Ready',
};

/** Where an object stands among its subphases. */
export function Stepper({ object }) {
  const steps = object.phase === 'app' ? ['create', 'ready'] : SUBPHASES;
  const at = steps.indexOf(object.subphase);
  return (
    <ol class="stepper" aria-label={`Subphase: ${SUBPHASE_TEXT[object.subphase] || object.subphase}`}>
      {steps.map((s, i) => {
        const cls = i < at || (i === at && s === 'ready') ? 'done' : i === at ? `current ${object.status}` : 'todo';
        return (
          <li class={cls} title={SUBPHASE_TEXT[s]} aria-current={i === at ? 'step' : undefined}>
            <span class="stepper-label">{SUBPHASE_TEXT[s]}</span>
          </li>
        );
      })}
    </ol>
  );
}

/** A modal dialog (the browser's <dialog>: focus trap, Escape closes). */
export function Dialog({ title, onClose, children, wide }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d && d.open && d.close();
  }, []);
  return (
    <dialog
      ref={ref}
      class={wide ? 'wide' : ''}
      aria-labelledby="dialog-title"
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
    >
      <header class="dialog-head">
        <h2 id="dialog-title">{title}</h2>
        <button type="button" class="icon" aria-label="Close" onClick={onClose}>
          ×
        </button>
      </header>
      {children}
    </dialog>
  );
}

/** A yes/no question; resolves through onAnswer(true|false). */
export function Confirm({ title, text, yes, danger, onAnswer }) {
  return (
    <Dialog title={title} onClose={() => onAnswer(false)}>
      <p>{text}</p>
      <div class="actions">
        <button type="button" onClick={() => onAnswer(false)}>
          Cancel
        </button>
        <button type="button" class={danger ? 'danger' : 'primary'} autofocus onClick={() => onAnswer(true)}>
          {yes}
        </button>
      </div>
    </Dialog>
  );
}

/**
 * Calls `load` now and every `ms` while the page is visible; returns
 * [data, error, reload]. Results of an older call never replace a newer one.
 */
export function usePoll(load, ms, deps = []) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const seq = useRef(0);
  const reload = useCallback(async () => {
    const n = ++seq.current;
    try {
      const d = await load();
      if (n === seq.current) {
        setData(d);
        setError(null);
      }
    } catch (e) {
      if (n === seq.current && e.status !== 401) setError(e);
    }
  }, deps);
  useEffect(() => {
    let timer = null;
    let alive = true;
    const tick = async () => {
      if (document.visibilityState === 'visible') await reload();
      if (alive) timer = setTimeout(tick, typeof ms === 'function' ? ms() : ms);
    };
    tick();
    const vis = () => document.visibilityState === 'visible' && reload();
    document.addEventListener('visibilitychange', vis);
    return () => {
      alive = false;
      clearTimeout(timer);
      seq.current++;
      document.removeEventListener('visibilitychange', vis);
    };
  }, [reload]);
  return [data, error, reload];
}

/** Runs an action, keeping its busy flag and error. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = useCallback(async (fn) => {
    setBusy(true);
    setError(null);
    try {
      return await fn();
    } catch (e) {
      if (e.status !== 401) setError(e);
      return undefined;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, setError };
}

/** "3 minutes ago" for a Unix time in seconds. */
export function ago(ts) {
  if (!ts) return '';
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ts * 1000).toLocaleDateString();
}

/** The full date and time for a Unix time in seconds. */
export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : '';
}

/** Splits a command line into words (quotes '…' and "…" keep spaces). */
export function splitWords(s) {
  const out = [];
  let cur = '';
  let quote = null;
  let any = false;
  for (const c of String(s || '')) {
    if (quote) {
      if (c === quote) quote = null;
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      any = true;
    } else if (/\s/.test(c)) {
      if (cur || any) out.push(cur);
      cur = '';
      any = false;
    } else cur += c;
  }
  if (cur || any) out.push(cur);
  return out;
}

/** Words back to a command line. */
export function joinWords(words) {
  return (words || []).map((w) => (/[\s'"]/.test(w) || w === '' ? `"${w.replace(/"/g, "'")}"` : w)).join(' ');
}

export function setTitle(t) {
  document.title = t ? `${t} — DaaS` : 'DaaS';
}

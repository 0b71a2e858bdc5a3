// The form that makes a Baseimage, or the next phase from a ready parent.
import { useEffect, useState } from 'preact/hooks';
import { get, post } from './api.js';
import { Dialog, ErrorText, splitWords, useAction } from './ui.jsx';

export function ObjectForm({ me, info, parent, parentInfo, onClose, onCreated }) {
  const act = useAction();
  const [backends, setBackends] = useState([]);
  const [scripts, setScripts] = useState([]);
  const isBase = info.phase === 'baseimage';
  const isApp = info.phase === 'app';
  // The edge out of the parent's phase: CloneTemplate, CreateSnapshot, RunApp.
  const transition = parentInfo ? parentInfo.transition : null;
  useEffect(() => {
    if (isBase)
      get('/api/v1/backends').then(
        (b) => setBackends(b.items),
        () => {},
      );
  }, []);

  async function submit(e) {
    e.preventDefault();
    const f = new FormData(e.currentTarget);
    const s = (k) => String(f.get(k) || '').trim();
    const spec = {};
    if (!isApp) {
      spec.config_auto = scripts
        .filter((x) => x.name.trim() || x.run.trim())
        .map((x) => ({ name: x.name.trim() || 'script', run: x.run, timeout_secs: Number(x.timeout) || 600 }));
      spec.interactive = f.get('interactive') === 'on';
    }
    if (isBase) {
      if (s('window_manager')) spec.window_manager = splitWords(s('window_manager'));
      if (s('source')) spec.source = s('source');
    }
    if (info.phase === 'deployment') spec.live = f.get('live') === 'on';
    if (isApp) spec.command = splitWords(s('command'));
    if (s('geometry')) spec.geometry = s('geometry');
    const body = { name: s('name'), spec };
    if (isBase) {
      body.backend = s('backend') || 'local';
      body.kind = s('kind') || undefined;
      body.platform = s('platform') || 'linux';
      body.protocol = s('protocol') || 'vnc';
    }
    if (isApp) body.shared = f.get('shared') === 'on';
    const path = parent ? `/api/v1/${parentInfo.plural}/${parent.id}/${info.plural}` : `/api/v1/${info.plural}`;
    const r = await act.run(() => post(path, body));
    if (r) onCreated(r, `${parent ? transition + ': ' : 'Create '}${info.one.toLowerCase()} “${body.name}”`);
  }

  const setScript = (i, k, v) => setScripts((ss) => ss.map((x, j) => (j === i ? { ...x, [k]: v } : x)));
  return (
    <Dialog title={parent ? `New ${info.one} from “${parent.name}”` : `New ${info.one}`} onClose={onClose} wide>
      <form class="object-form" onSubmit={submit}>
        {parent ? (
          <p class="muted">
            {transition} makes {article(info.one)} from the ready {parentInfo.one} “{parent.name}”. Kind, platform and backend are
            inherited.
          </p>
        ) : null}
        <label>
          Name
          <input name="name" required maxLength={128} autofocus />
        </label>
        {isBase ? (
          <div class="row">
            <div class="field">
              <label for="f-backend">Backend</label>
              <select id="f-backend" name="backend">
                {(backends.length ? backends.map((b) => b.kind) : ['local']).map((k) => (
                  <option value={k}>{k}</option>
                ))}
              </select>
            </div>
            <div class="field">
              <label for="f-kind">Kind</label>
              <select id="f-kind" name="kind">
                <option value="">backend default</option>
                <option value="container">container</option>
                <option value="vm">vm</option>
              </select>
            </div>
            <div class="field">
              <label for="f-platform">Platform</label>
              <select id="f-platform" name="platform">
                <option value="linux">linux</option>
                <option value="windows">windows</option>
                <option value="linux-wine">linux-wine</option>
              </select>
            </div>
            <div class="field">
              <label for="f-protocol">Protocol</label>
              <select id="f-protocol" name="protocol">
                <option value="vnc">vnc</option>
                <option value="rdp">rdp</option>
              </select>
            </div>
          </div>
        ) : null}
        {isBase ? (
          <div class="row">
            <label>
              Window manager command <span class="muted">(optional)</span>
              <input name="window_manager" placeholder="e.g. openbox" />
            </label>
            <label>
              Source <span class="muted">(template VMID or image; optional)</span>
              <input name="source" />
            </label>
          </div>
        ) : null}
        {isApp ? (
          <label>
            Command
            <input name="command" required placeholder='e.g. xterm -fa "DejaVu Sans Mono"' class="mono" />
          </label>
        ) : null}
        <label>
          Desktop size <span class="muted">(WIDTHxHEIGHT; optional)</span>
          <input name="geometry" pattern="[0-9]+x[0-9]+" placeholder="1280x800" />
        </label>
        {info.phase === 'deployment' ? (
          <label class="check">
            <input type="checkbox" name="live" /> Live snapshot (with memory, where the backend can)
          </label>
        ) : null}
        {isApp && me.role === 'admin' ? (
          <label class="check">
            <input type="checkbox" name="shared" defaultChecked /> Share with every user
          </label>
        ) : null}
        {!isApp ? (
          <fieldset>
            <legend>Automatic configuration (config_auto)</legend>
            <p class="muted small">Scripts run in order with /bin/sh inside the {info.one.toLowerCase()}, through the guest proxy.</p>
            {scripts.map((x, i) => (
              <div class="script" key={i}>
                <div class="row">
                  <label>
                    Script name
                    <input value={x.name} onInput={(e) => setScript(i, 'name', e.currentTarget.value)} required />
                  </label>
                  <label class="narrow-field">
                    Timeout (s)
                    <input
                      type="number"
                      min="1"
                      max="86400"
                      value={x.timeout}
                      onInput={(e) => setScript(i, 'timeout', e.currentTarget.value)}
                    />
                  </label>
                  <button type="button" class="small danger-text" onClick={() => setScripts((ss) => ss.filter((_, j) => j !== i))}>
                    Remove
                  </button>
                </div>
                <label>
                  Shell script
                  <textarea class="mono" rows={4} value={x.run} onInput={(e) => setScript(i, 'run', e.currentTarget.value)} required />
                </label>
              </div>
            ))}
            <button type="button" class="small" onClick={() => setScripts((ss) => [...ss, { name: '', run: '', timeout: 600 }])}>
              Add script
            </button>
            <label class="check">
              <input type="checkbox" name="interactive" /> Stop in interactive configuration, so I can configure it by hand in its desktop
              before it is finalized
            </label>
          </fieldset>
        ) : null}
        <ErrorText error={act.error} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={act.busy}>
            {act.busy ? 'Creating…' : parent ? transition : `Create ${info.one}`}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

const article = (word) => (/^[AEIOU]/.test(word) ? `an ${word}` : `a ${word}`);

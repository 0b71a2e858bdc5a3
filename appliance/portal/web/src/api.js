// The REST API: JSON in and out, errors as sentences, 401 handled once.

/** An API failure: `message` is a sentence for people. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** Sets what happens when a call finds the session gone (HTTP 401). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/**
 * Calls the API. Resolves with the JSON body (null for 204); rejects with
 * an ApiError. A 401 (other than a failed login) also calls the handler.
 */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'The appliance cannot be reached. Check the network connection and try again.');
  }
  let data = null;
  const text = await r.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (r.ok) return data;
  const e = data && data.error;
  const err = new ApiError(
    r.status,
    (e && e.code) || 'http_' + r.status,
    sentence((e && e.message) || `The appliance answered ${r.status} ${r.statusText}.`),
  );
  if (r.status === 401 && !quiet401) onUnauthorized(err);
  throw err;
}

/** The API's messages are sentences without the capital and the full stop. */
export function sentence(m) {
  const s = String(m || '').trim();
  if (!s) return s;
  const first = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(first) ? first : first + '.';
}

export const get = (p) => api('GET', p);
export const post = (p, b) => api('POST', p, b);
export const del = (p) => api('DELETE', p);

/** The WebSocket URL of an API path on this host. */
export function wsUrl(path) {
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path;
}

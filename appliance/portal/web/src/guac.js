// guacamole-common-js is a chunk of its own, loaded only by desktop views.
let mod = null;
export function loadGuacamole() {
  mod ||= import('guacamole-common-js').then((m) => m.default || m);
  return mod;
}

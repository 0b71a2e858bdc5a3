// Builds the portal into OUTDIR (argument; default dist/): esbuild bundles
// src/main.jsx (code-split: guacamole-common-js is a chunk of its own that
// only the desktop view loads), names files by content hash, writes
// index.html, a gzipped copy of each file and manifest.tsv for build.rs.
// Prints the sizes and fails when the portal's own JS+CSS exceed 150 KiB
// gzipped.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { gzipSync, constants } from 'node:zlib';

const OWN_GZIP_LIMIT = 150 * 1024;
const outdir = resolve(process.argv[2] || 'dist');
rmSync(outdir, { recursive: true, force: true });
mkdirSync(join(outdir, 'assets'), { recursive: true });

const result = await build({
  entryPoints: ['src/main.jsx'],
  bundle: true,
  splitting: true,
  format: 'esm',
  minify: true,
  target: ['chrome100', 'firefox100', 'safari15.4'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: join(outdir, 'assets'),
  entryNames: '[name]-[hash]',
  chunkNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
});

const types = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
};
const typeOf = (f) => types[f.slice(f.lastIndexOf('.'))] || 'application/octet-stream';
const files = []; // [path, file, type, etag, immutable, gzip]
let own = 0;
let guac = 0;
let mainJs = null;
let mainCss = null;
let icon = null;
let preload = [];
for (const [out, meta] of Object.entries(result.metafile.outputs)) {
  const rel = relative(outdir, resolve(out));
  const inputs = Object.keys(meta.inputs);
  const isGuac = inputs.length > 0 && inputs.every((i) => i.includes('node_modules/guacamole-common-js/'));
  const gz = add(rel, true);
  if (rel.endsWith('.js') || rel.endsWith('.css')) {
    if (isGuac) guac += gz;
    else own += gz;
  }
  if (meta.entryPoint === 'src/main.jsx') {
    mainJs = '/' + rel;
    if (meta.cssBundle) mainCss = '/' + relative(outdir, resolve(meta.cssBundle));
    // Chunks the entry imports statically load in parallel with it.
    preload = meta.imports.filter((i) => i.kind === 'import-statement').map((i) => '/' + relative(outdir, resolve(i.path)));
  }
}
{
  // The icon, named by its hash like the rest.
  const svg = readFileSync('src/icon.svg');
  const rel = `assets/icon-${createHash('sha256').update(svg).digest('hex').slice(0, 8).toUpperCase()}.svg`;
  writeFileSync(join(outdir, rel), svg);
  add(rel, true);
  icon = '/' + rel;
}
if (!mainJs || !mainCss || !icon) throw new Error(`build.mjs: missing main script, stylesheet or icon (${mainJs}, ${mainCss}, ${icon})`);

const html = readFileSync('src/index.html', 'utf8')
  .replaceAll('%MAIN_JS%', mainJs)
  .replaceAll('%MAIN_CSS%', mainCss)
  .replaceAll('%ICON%', icon)
  .replace('%PRELOAD%', preload.map((p) => `<link rel="modulepreload" href="${p}">`).join('\n'));
writeFileSync(join(outdir, 'index.html'), html);
add('index.html', false);

function add(rel, immutable) {
  const bytes = readFileSync(join(outdir, rel));
  const etag = '"' + createHash('sha256').update(bytes).digest('base64url').slice(0, 22) + '"';
  const gz = gzipSync(bytes, { level: constants.Z_BEST_COMPRESSION });
  let gzFile = '';
  if (gz.length < bytes.length) {
    gzFile = rel + '.gz';
    writeFileSync(join(outdir, gzFile), gz);
  }
  files.push([rel, rel, typeOf(rel), etag, String(immutable), gzFile]);
  return gz.length;
}

const lines = files.map((f) => f.join('\t'));
lines.push(`#size\tOWN_GZIP_BYTES\t${own}`);
lines.push(`#size\tGUACAMOLE_GZIP_BYTES\t${guac}`);
writeFileSync(join(outdir, 'manifest.tsv'), lines.join('\n') + '\n');

const kib = (n) => (n / 1024).toFixed(1) + ' KiB';
console.error(`daas-portal: own JS+CSS ${kib(own)} gzipped (limit ${kib(OWN_GZIP_LIMIT)}), guacamole-common-js ${kib(guac)} gzipped`);
if (own > OWN_GZIP_LIMIT) {
  console.error(`daas-portal: the portal's own JS+CSS are ${kib(own)} gzipped, over the ${kib(OWN_GZIP_LIMIT)} budget`);
  process.exit(1);
}

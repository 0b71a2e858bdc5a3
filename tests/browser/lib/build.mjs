// Prepares the browser tests: Debian's Chromium (installed with apt-get
// when missing and we are root, as on CI), then the appliance binary the
// tests start (debug profile; honours CARGO_TARGET_DIR), unless
// DAAS_APPLIANCE_BIN names one.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { CHROMIUM, ROOT, applianceBin } from './harness.mjs';

if (!existsSync(CHROMIUM) && process.getuid && process.getuid() === 0 && existsSync('/usr/bin/apt-get')) {
  console.log(`browser tests: ${CHROMIUM} is missing; apt-get install chromium`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'chromium', 'xclip', 'fonts-dejavu-core'], {
    stdio: 'inherit',
    env,
  });
}

if (process.env.DAAS_APPLIANCE_BIN) {
  console.log(`browser tests: using ${process.env.DAAS_APPLIANCE_BIN}`);
} else {
  console.log('browser tests: cargo build -p daas-appliance');
  const r = spawnSync('cargo', ['build', '-p', 'daas-appliance'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error('browser tests: building daas-appliance failed');
    process.exit(r.status || 1);
  }
  console.log(`browser tests: using ${applianceBin()}`);
}

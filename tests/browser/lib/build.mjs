// Builds the appliance binary the tests start (debug profile), unless
// DAAS_APPLIANCE_BIN names one. Honours CARGO_TARGET_DIR.
import { spawnSync } from 'node:child_process';
import { ROOT, applianceBin } from './harness.mjs';

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

// One instance of the PM2 example (cluster mode). Each instance caches the
// "settings" and is told when any process — another instance, or an
// operator's `generation-sync bump settings` — changes them. It records what
// it saw in STATUS_DIR/<instance>.json so that you (and the tests) can look.
const { mkdirSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const { SynchronizedValue } = require('generation-sync');

const instance = process.env.NODE_APP_INSTANCE ?? String(process.pid);
const statusDir = process.env.STATUS_DIR ?? join(__dirname, 'status');
mkdirSync(statusDir, { recursive: true });

let reloads = 0;
const settings = new SynchronizedValue('settings', () => {
  reloads++;
  // A real application would read its database here.
  return { loadedAt: new Date().toISOString() };
});

function report() {
  settings.get();
  const status = { instance, pid: process.pid, generation: settings.synchronizer.syncGen, reloads };
  writeFileSync(join(statusDir, `${instance}.json`), JSON.stringify(status));
  console.log(`instance ${instance}: generation ${status.generation}, ${reloads} loads`);
}

// Push: reload as soon as the generation changes anywhere on the host.
settings.synchronizer.watch(() => report());
report();

// Stands in for the application's work; also what keeps the instance running.
setInterval(() => settings.get(), 1000);

// One instance of the relayed PM2 example: the same app on every host, each
// host running it under its own PM2 with its own store directory, all hosts
// sharing one Redis. The instances of a host share the host's file; one of
// them is the host's relay. Each instance records what it saw in
// STATUS_DIR/<host>-<instance>.json.
const { mkdirSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const { RelayStore, SynchronizedValue } = require('generation-sync');

const host = process.env.HOST_NAME ?? require('node:os').hostname();
const instance = process.env.NODE_APP_INSTANCE ?? String(process.pid);
const statusDir = process.env.STATUS_DIR ?? join(__dirname, 'status');
mkdirSync(statusDir, { recursive: true });

const store = RelayStore.open(join(process.env.GENERATION_SYNC_DIR, 'relayed.shm'), {
  redis: { url: process.env.REDIS_URL, namespace: process.env.REDIS_NAMESPACE ?? 'gensync-example' },
});

let reloads = 0;
const settings = new SynchronizedValue(
  'settings',
  () => {
    reloads++;
    // A real application would read its database here.
    return { loadedAt: new Date().toISOString() };
  },
  { store },
);

function report() {
  settings.get();
  const status = { host, instance, pid: process.pid, generation: settings.synchronizer.syncGen, reloads, relaying: store.relayStatus().relaying };
  writeFileSync(join(statusDir, `${host}-${instance}.json`), JSON.stringify(status));
}

// Push: reload as soon as the generation changes on any host.
settings.synchronizer.watch(() => report());
report();

// Stands in for the application's work; also what keeps the instance running.
setInterval(report, 500);

// PM2 stops an instance with SIGINT: hand the relay over at once.
process.on('SIGINT', () => {
  store.close();
  process.exit(0);
});

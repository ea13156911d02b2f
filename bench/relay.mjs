// Redis connections per relayed host: N processes of one host open the
// same relayed store and watch a key; only the host's relay connects. The
// count comes from the server itself (CLIENT LIST), less this process's own
// connection.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GenerationSynchronizer, RelayStore } from 'generation-sync';

import { CHILD, withRedis } from './support.mjs';

/** A process of the host: open the store, watch a key, wait to be stopped. */
export async function relayHostProcess(dir, url) {
  const store = RelayStore.open(join(dir, 'host.shm'), { redis: { url, namespace: 'bench-connections' } });
  const sync = new GenerationSynchronizer('watched', { store });
  sync.watch(() => undefined);
  process.send('ready');
  process.on('message', async (message) => {
    if (message === 'stop') {
      store.close();
      await store.whenClosed();
      process.exit(0);
    }
  });
}

async function countConnections(url, processes) {
  const { createClient } = await import('redis');
  const admin = createClient({ url });
  admin.on('error', () => undefined);
  await admin.connect();
  const dir = mkdtempSync(join(tmpdir(), 'gensync-relay-bench-'));
  const children = [];
  try {
    for (let i = 0; i < processes; i++) {
      const child = fork(CHILD, ['relay-host-process', dir, url], { stdio: 'inherit' });
      children.push(child);
      await new Promise((resolve, reject) => {
        child.once('message', resolve);
        child.once('exit', (code) => reject(new Error(`relay host process exited with ${code}`)));
      });
    }
    const ownId = String(await admin.sendCommand(['CLIENT', 'ID']));
    // The relay connects and subscribes within a second or two; take the count once it holds still for 500 ms.
    let last = '';
    let stableSince = Date.now();
    const deadline = Date.now() + 10_000;
    for (;;) {
      const lines = String(await admin.sendCommand(['CLIENT', 'LIST'])).split('\n').filter((line) => line.startsWith('id=') && !line.startsWith(`id=${ownId} `));
      const now = `${lines.length}/${lines.filter((line) => / sub=[1-9]/.test(line)).length}`;
      if (now !== last) {
        last = now;
        stableSince = Date.now();
      } else if (Date.now() - stableSince >= 500 && lines.length > 0) {
        const [connections, subscribers] = now.split('/').map(Number);
        return { processes, connections, subscribers };
      }
      if (Date.now() > deadline) throw new Error(`connections did not settle within 10 s (last ${now})`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    for (const child of children) child.send('stop');
    await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
    await admin.quit();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** @param {{ processes: number[] }} options */
export async function runRelay({ processes }) {
  return (
    (await withRedis(async (url) => {
      const rows = [];
      for (const n of processes) rows.push(await countConnections(url, n));
      return rows;
    })) ?? []
  );
}

// Scaling: isExpired() and markUpdated() on the shared-memory store with 1,
// 2, 4 and 8 processes at once, all on one key (contended: one cache line)
// or each on its own key. Every process runs for the same wall-clock window
// and counts its operations; the table shows total operations per second.
// (The machines here have few cores: more processes than cores share them.)
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GenerationSynchronizer, SharedMemoryStore } from 'generation-sync';

import { CHILD } from './support.mjs';

/** One scaling worker: `op`, on `key`, from startAt for durationMs; reports its count. */
export async function scalingWorker([path, key, op, startAt, durationMs]) {
  const store = SharedMemoryStore.open(path);
  const sync = new GenerationSynchronizer(key, { store, normalizeCacheKey: false });
  const start = Number(startAt);
  const end = start + Number(durationMs);
  while (Date.now() < start) {
    // line the processes up
  }
  let count = 0;
  let stale = 0;
  const batch = 4096;
  if (op === 'isExpired') {
    while (Date.now() < end) {
      for (let i = 0; i < batch; i++) if (sync.isExpired()) stale++;
      count += batch;
    }
  } else {
    while (Date.now() < end) {
      for (let i = 0; i < batch; i++) sync.markUpdated();
      count += batch;
    }
  }
  process.send({ count, stale });
  store.close();
}

/**
 * @param {{ processes: number[], durationMs: number }} options
 * @returns {Promise<Array<{ op: string, keys: string, processes: number, opsPerSecond: number }>>}
 */
export async function runScaling({ processes, durationMs }) {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-scaling-'));
  const path = join(dir, 'scaling.shm');
  SharedMemoryStore.open(path, { capacity: 64 }).close();
  const rows = [];
  try {
    for (const op of ['isExpired', 'markUpdated']) {
      for (const keys of ['one key', 'distinct keys']) {
        for (const count of processes) {
          const startAt = Date.now() + 300 + count * 30;
          const children = Array.from({ length: count }, (_, i) =>
            fork(CHILD, ['scaling-worker', path, keys === 'one key' ? 'contended' : `key-${i}`, op, String(startAt), String(durationMs)], {
              stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
            }),
          );
          const counts = await Promise.all(
            children.map(
              (child) =>
                new Promise((resolve, reject) => {
                  child.once('message', (message) => resolve(message.count));
                  child.once('exit', (code) => code && reject(new Error(`scaling worker exited with ${code}`)));
                }),
            ),
          );
          const total = counts.reduce((sum, value) => sum + value, 0);
          rows.push({ op, keys, processes: count, opsPerSecond: total / (durationMs / 1000) });
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

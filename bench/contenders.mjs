// Benchmark contenders. Each runs in its own process (see run.mjs): it is
// handed a repetition count and an operation count, and returns the time of
// each repetition in nanoseconds per operation.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GenerationSynchronizer, SharedMemoryStore } from 'generation-sync';

/** Time `body(ops)` `reps` times after `warmup` untimed runs; returns ns/op for each timed run. */
function measure(body, { reps, ops, warmup = 2 }) {
  for (let i = 0; i < warmup; i++) body(ops);
  const samples = [];
  for (let i = 0; i < reps; i++) {
    const start = process.hrtime.bigint();
    body(ops);
    samples.push(Number(process.hrtime.bigint() - start) / ops);
  }
  return samples;
}

/** A store in a fresh temporary directory, removed at exit. */
function temporaryShmStore() {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-bench-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return SharedMemoryStore.open(join(dir, 'bench.shm'));
}

// Results are folded into this so that no loop is optimized away.
let sink = 0;
process.on('exit', () => {
  if (sink === 0.5) console.error('unreachable');
});

export const contenders = {
  'floor: Atomics.load': {
    group: 'check',
    run(options) {
      const words = new BigInt64Array(8);
      Atomics.store(words, 0, 1_700_000_000n);
      const expected = 1_700_000_000n;
      return measure((ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (Atomics.load(words, 0) !== expected) stale++;
        sink += stale;
      }, options);
    },
  },
  'shm isExpired()': {
    group: 'check',
    baseline: 'floor: Atomics.load',
    run(options) {
      const sync = new GenerationSynchronizer('bench-key', { store: temporaryShmStore() });
      return measure((ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (sync.isExpired()) stale++;
        sink += stale;
      }, options);
    },
  },
  'floor: Atomics.add': {
    group: 'update',
    run(options) {
      const words = new BigInt64Array(8);
      return measure((ops) => {
        let last = 0n;
        for (let i = 0; i < ops; i++) last = Atomics.add(words, 0, 1n);
        sink += Number(last & 1n);
      }, options);
    },
  },
  'shm markUpdated()': {
    group: 'update',
    baseline: 'floor: Atomics.add',
    run(options) {
      const sync = new GenerationSynchronizer('bench-key', { store: temporaryShmStore() });
      return measure((ops) => {
        let failures = 0;
        for (let i = 0; i < ops; i++) if (!sync.markUpdated()) failures++;
        sink += failures;
      }, options);
    },
  },
};

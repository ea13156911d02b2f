// Benchmark contenders. Each runs in its own process (see run.mjs): it is
// handed a repetition count and an operation count, and returns the time of
// each repetition in nanoseconds per operation.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { FileStore, GenerationSynchronizer, SharedMemoryStore } from 'generation-sync';

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

/** A fresh temporary directory, removed at exit. */
function temporaryDir() {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-bench-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function temporaryShmStore() {
  return SharedMemoryStore.open(join(temporaryDir(), 'bench.shm'));
}

/** A file store holding `keys` keys, as a small application's would. */
function temporaryFileStore(keys = 20) {
  const store = FileStore.open(join(temporaryDir(), 'bench.json'));
  for (let i = 0; i < keys; i++) new GenerationSynchronizer(`bench-key-${i}`, { store });
  return store;
}

// Results are folded into this so that no loop is optimized away.
let sink = 0;
process.on('exit', () => {
  if (sink === 0.5) console.error('unreachable');
});

// Each contender: `ops` per timed repetition (scaled by --scale), an
// optional `baseline` (another contender's name) for the ratio column, and
// run({ reps, ops }) returning ns/op per repetition.
export const contenders = {
  'floor: Atomics.load': {
    ops: 5_000_000,
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
    ops: 5_000_000,
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
    ops: 5_000_000,
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
    ops: 5_000_000,
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
  'floor: readFileSync + JSON.parse': {
    ops: 20_000,
    run(options) {
      const store = temporaryFileStore();
      return measure((ops) => {
        let keys = 0;
        for (let i = 0; i < ops; i++) keys += JSON.parse(readFileSync(store.path, 'utf8')).entries.length;
        sink += keys;
      }, options);
    },
  },
  'file isExpired()': {
    ops: 200_000,
    baseline: 'floor: readFileSync + JSON.parse',
    run(options) {
      const sync = new GenerationSynchronizer('bench-key-0', { store: temporaryFileStore() });
      return measure((ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (sync.isExpired()) stale++;
        sink += stale;
      }, options);
    },
  },
  'file markUpdated()': {
    ops: 300,
    baseline: 'floor: readFileSync + JSON.parse',
    run(options) {
      const sync = new GenerationSynchronizer('bench-key-0', { store: temporaryFileStore() });
      return measure((ops) => {
        let failures = 0;
        for (let i = 0; i < ops; i++) if (!sync.markUpdated()) failures++;
        sink += failures;
      }, { ...options, warmup: 1 });
    },
  },
};

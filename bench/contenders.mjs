// Benchmark contenders. Each runs in its own process (bench/child.mjs): it
// is handed a repetition count and an operation count, and returns the time
// of each repetition in nanoseconds per operation.
import cluster from 'node:cluster';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { open as openLmdb } from 'lmdb';
import { createClient } from 'redis';

const lockfile = createRequire(import.meta.url)('proper-lockfile');

import { AsyncGenerationSynchronizer, FileStore, GenerationSynchronizer, RedisStore, RelayStore, SharedMemoryStore } from 'generation-sync';

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

/** measure() for bodies that return a promise: each operation is a round trip. */
async function measureAsync(body, { reps, ops, warmup = 1 }) {
  for (let i = 0; i < warmup; i++) await body(ops);
  const samples = [];
  for (let i = 0; i < reps; i++) {
    const start = process.hrtime.bigint();
    await body(ops);
    samples.push(Number(process.hrtime.bigint() - start) / ops);
  }
  return samples;
}

/** An LMDB environment in a fresh directory holding one counter, as an application would keep one. */
function temporaryLmdb(options = {}) {
  const db = openLmdb({ path: join(temporaryDir(), 'lmdb'), ...options });
  db.putSync('generation', 1_700_000_000);
  return db;
}

/**
 * The worker side of 'cluster: ask the primary': ask for the current
 * generation over IPC and wait for the answer, `ops` times per repetition.
 */
export async function clusterAsker(reps, ops) {
  let answer;
  process.on('message', (message) => answer?.(message));
  const ask = () =>
    new Promise((resolve) => {
      answer = resolve;
      process.send('generation?');
    });
  const samples = await measureAsync(async (count) => {
    let stale = 0;
    for (let i = 0; i < count; i++) if ((await ask()) !== 1_700_000_000) stale++;
    sink += stale;
  }, { reps, ops });
  process.send({ samples });
}

/** The redis-server the runner started for this run (see run.mjs). */
function benchRedisUrl() {
  const url = process.env.GENSYNC_BENCH_REDIS_URL;
  if (!url) throw new Error('GENSYNC_BENCH_REDIS_URL is not set; run the Redis contenders through bench/run.mjs');
  return url;
}

async function benchRedisClient() {
  const client = createClient({ url: benchRedisUrl() });
  await client.connect();
  return client;
}

/** A fresh temporary directory, removed at exit. */
function temporaryDir() {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-bench-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Run `body(sync)` on a synchronizer of a relayed store of which this process is the host's relay, connected
 * and watching the key, as on a relayed host; then close the store.
 */
async function onRelayedHost(body) {
  const store = RelayStore.open(join(temporaryDir(), 'bench-relay.shm'), { redis: { url: benchRedisUrl(), namespace: `bench-relay-${process.pid}` } });
  try {
    const sync = new GenerationSynchronizer('bench-key', { store });
    if (!(await store.flush(10_000))) throw new Error('the relay did not connect within 10 s');
    return body(sync);
  } finally {
    store.close();
    await store.whenClosed();
  }
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
    fasterThan: ['lmdb: get', 'redis: GET', 'redis isExpired()', 'cluster: ask the primary'],
    run(options) {
      const sync = new GenerationSynchronizer('bench-key', { store: temporaryShmStore() });
      return measure((ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (sync.isExpired()) stale++;
        sink += stale;
      }, options);
    },
  },
  'relay isExpired()': {
    ops: 5_000_000,
    needs: 'redis',
    baseline: 'floor: Atomics.load',
    async run(options) {
      // This process is its host's relay, connected and watching the key, as on a relayed host.
      return onRelayedHost((sync) =>
        measure((ops) => {
          let stale = 0;
          for (let i = 0; i < ops; i++) if (sync.isExpired()) stale++;
          sink += stale;
        }, options),
      );
    },
  },
  'relay markUpdated()': {
    ops: 1_000_000,
    needs: 'redis',
    baseline: 'floor: Atomics.add',
    async run(options) {
      // On a relayed host the first bump after the relay forwarded the key marks it changed and wakes the relay;
      // the bumps after it, until the relay has forwarded the key again, are plain atomic adds.
      return onRelayedHost((sync) =>
        measure((ops) => {
          let failures = 0;
          for (let i = 0; i < ops; i++) if (!sync.markUpdated()) failures++;
          sink += failures;
        }, options),
      );
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
    fasterThan: ['lmdb: increment (write txn, noSync)', 'lmdb: increment (write txn)', 'redis: INCR', 'redis markUpdated()'],
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
  'floor: proper-lockfile write': {
    ops: 300,
    run(options) {
      // What a hand-rolled file store does for one update: lock, read, parse, change, write a temporary file,
      // rename it over the store, unlock. No flush, no owner record, no fence: the floor for 'file markUpdated()'.
      const store = temporaryFileStore();
      const path = store.path;
      const temporary = `${path}.floor.tmp`;
      return measure((ops) => {
        for (let i = 0; i < ops; i++) {
          const release = lockfile.lockSync(path, { realpath: false });
          const document = JSON.parse(readFileSync(path, 'utf8'));
          document.entries[0].generation += 1;
          writeFileSync(temporary, JSON.stringify(document));
          renameSync(temporary, path);
          release();
          sink += document.entries.length;
        }
      }, { ...options, warmup: 1 });
    },
  },
  'file markUpdated()': {
    ops: 300,
    baseline: 'floor: proper-lockfile write',
    run(options) {
      const sync = new GenerationSynchronizer('bench-key-0', { store: temporaryFileStore() });
      return measure((ops) => {
        let failures = 0;
        for (let i = 0; i < ops; i++) if (!sync.markUpdated()) failures++;
        sink += failures;
      }, { ...options, warmup: 1 });
    },
  },
  'redis: GET': {
    ops: 5_000,
    needs: 'redis',
    async run(options) {
      const client = await benchRedisClient();
      await client.set('bench:get', '1700000000');
      const samples = await measureAsync(async (ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if ((await client.get('bench:get')) !== '1700000000') stale++;
        sink += stale;
      }, options);
      client.destroy();
      return samples;
    },
  },
  'redis isExpired()': {
    ops: 5_000,
    needs: 'redis',
    baseline: 'redis: GET',
    async run(options) {
      const store = await RedisStore.connect({ url: benchRedisUrl(), namespace: `bench-${process.pid}:` });
      const sync = await AsyncGenerationSynchronizer.create('bench-key', { store });
      const samples = await measureAsync(async (ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (await sync.isExpired()) stale++;
        sink += stale;
      }, options);
      await store.close();
      return samples;
    },
  },
  'redis: INCR': {
    ops: 5_000,
    needs: 'redis',
    async run(options) {
      const client = await benchRedisClient();
      const samples = await measureAsync(async (ops) => {
        let last = 0;
        for (let i = 0; i < ops; i++) last = await client.incr('bench:incr');
        sink += last & 1;
      }, options);
      client.destroy();
      return samples;
    },
  },
  'redis markUpdated()': {
    ops: 5_000,
    needs: 'redis',
    baseline: 'redis: INCR',
    async run(options) {
      const store = await RedisStore.connect({ url: benchRedisUrl(), namespace: `bench-${process.pid}:` });
      const sync = await AsyncGenerationSynchronizer.create('bench-key', { store });
      const samples = await measureAsync(async (ops) => {
        let failures = 0;
        for (let i = 0; i < ops; i++) if (!(await sync.markUpdated())) failures++;
        sink += failures;
      }, options);
      await store.close();
      return samples;
    },
  },
  'lmdb: get': {
    ops: 500_000,
    run(options) {
      const db = temporaryLmdb();
      return measure((ops) => {
        let stale = 0;
        for (let i = 0; i < ops; i++) if (db.get('generation') !== 1_700_000_000) stale++;
        sink += stale;
      }, options);
    },
  },
  'lmdb: increment (write txn, noSync)': {
    ops: 20_000,
    run(options) {
      const db = temporaryLmdb({ noSync: true });
      return measure((ops) => {
        for (let i = 0; i < ops; i++) db.transactionSync(() => db.putSync('generation', db.get('generation') + 1));
        sink += db.get('generation') & 1;
      }, options);
    },
  },
  'lmdb: increment (write txn)': {
    ops: 300,
    run(options) {
      const db = temporaryLmdb();
      return measure((ops) => {
        for (let i = 0; i < ops; i++) db.transactionSync(() => db.putSync('generation', db.get('generation') + 1));
        sink += db.get('generation') & 1;
      }, { ...options, warmup: 1 });
    },
  },
  'cluster: ask the primary': {
    ops: 5_000,
    run({ reps, ops }) {
      // This process is the primary; one worker asks it, as a worker would ask for the current generation.
      cluster.setupPrimary({ exec: fileURLToPath(new URL('./child.mjs', import.meta.url)), args: ['cluster-asker', String(reps), String(ops)], silent: true });
      const worker = cluster.fork();
      return new Promise((resolve, reject) => {
        worker.on('message', (message) => {
          if (message === 'generation?') worker.send(1_700_000_000);
          else if (message?.samples) {
            worker.kill();
            resolve(message.samples);
          }
        });
        worker.on('exit', (code) => code && reject(new Error(`cluster worker exited with ${code}`)));
      });
    },
  },
};

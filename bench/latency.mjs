// Cross-process change notification latency: how long after one process
// changes a key does a listener in another process run?
//
// Measured as a ping-pong, so no clocks are compared across processes: A
// bumps "ping"; B's watcher sees it and bumps "pong"; A's watcher sees that.
// One-way latency = round trip / 2. The baseline is what a node:cluster
// application does without this library: a worker messages the primary,
// which broadcasts to the workers, and the reply travels the same way.
import cluster from 'node:cluster';
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { AsyncGenerationSynchronizer, FileStore, GenerationSynchronizer, RedisStore, RelayStore, SharedMemoryStore } from 'generation-sync';

import { CHILD, quantile, withRedis } from './support.mjs';

const WARMUP = 50;

async function openStore(kind, location, side) {
  if (kind === 'shm') return SharedMemoryStore.open(location);
  if (kind === 'relay') {
    // Two simulated hosts: each side has its own store directory, and is its host's relay.
    const { dir, url } = JSON.parse(location);
    return RelayStore.open(join(dir, `${side}.shm`), { redis: { url, namespace: 'latency-relay' } });
  }
  if (kind === 'file') return FileStore.open(location);
  return RedisStore.connect({ url: location, namespace: 'latency:' });
}

async function synchronizer(store, key) {
  return store.asynchronous ? AsyncGenerationSynchronizer.create(key, { store }) : new GenerationSynchronizer(key, { store });
}

/** A client of the redis package for the bare pub/sub baseline. */
async function pubSubClient(url) {
  const { createClient } = await import('redis');
  const client = createClient({ url });
  client.on('error', () => undefined); // the server is stopped after the run; a reset then is expected
  await client.connect();
  return client;
}

/** The far side of the bare pub/sub ping-pong: publish "pong" for every "ping" heard. */
export async function pubSubPonger(url) {
  const publisher = await pubSubClient(url);
  const subscriber = await pubSubClient(url);
  await subscriber.subscribe('latency:ping', () => void publisher.publish('latency:pong', 'pong'));
  process.send('ready');
  process.on('message', async (message) => {
    if (message === 'stop') {
      await Promise.all([publisher.quit(), subscriber.quit()]);
      process.exit(0);
    }
  });
}

/**
 * What a Redis watch costs at the least: one PUBLISH heard by another
 * process's subscriber, with no store in between (round trip / 2).
 */
async function measureBarePubSub(url, rounds) {
  const child = fork(CHILD, ['pubsub-ponger', url], { stdio: 'inherit' });
  await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`pub/sub ponger exited with ${code}`)));
  });
  const publisher = await pubSubClient(url);
  const subscriber = await pubSubClient(url);
  let answer = () => undefined;
  await subscriber.subscribe('latency:pong', () => answer());
  const times = [];
  try {
    for (let i = 0; i < WARMUP + rounds; i++) {
      const answered = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no pong within 5 s (round ${i})`)), 5000);
        answer = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      const start = process.hrtime.bigint();
      await publisher.publish('latency:ping', 'ping');
      await answered;
      if (i >= WARMUP) times.push(Number(process.hrtime.bigint() - start) / 2);
    }
  } finally {
    await Promise.all([publisher.quit(), subscriber.quit()]);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.send('stop');
    await exited;
  }
  return times;
}

export const PUBSUB_BASELINE = 'redis: bare pub/sub';

/** Host A's markUpdated() to a watcher woken on host B, through both hosts' relays and Redis. */
export const RELAY_LATENCY = 'relay: host to host';

/** The far side of the ping-pong: answer every ping with a pong. */
export async function ponger(kind, location) {
  const store = await openStore(kind, location, 'host-b');
  const ping = await synchronizer(store, 'ping');
  const pong = await synchronizer(store, 'pong');
  await relayed(store);
  ping.watch(() => void pong.markUpdated());
  process.send('ready');
  process.on('message', async (message) => {
    if (message === 'stop') {
      await store.close();
      await store.whenClosed?.();
      process.exit(0);
    }
  });
}

/** A relayed store: wait until this process relays its keys to Redis. */
async function relayed(store) {
  if (store.kind === 'relay' && !(await store.flush(10_000))) throw new Error('the relay did not connect within 10 s');
}

/** The near side: time `rounds` round trips through the store. */
async function pinger(kind, location, rounds, waitEachRound) {
  const store = await openStore(kind, location, 'host-a');
  const ping = await synchronizer(store, 'ping');
  const pong = await synchronizer(store, 'pong');
  await relayed(store);
  if (waitEachRound) return waitForChangeRounds(store, ping, pong, rounds);
  // One long-lived watcher, as an application has; each round waits for its next call.
  let answer = () => undefined;
  const unwatch = pong.watch(() => answer());
  const times = [];
  for (let i = 0; i < WARMUP + rounds; i++) {
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no pong within 5 s (round ${i})`)), 5000);
      answer = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    const start = process.hrtime.bigint();
    await ping.markUpdated();
    await answered;
    if (i >= WARMUP) times.push(Number(process.hrtime.bigint() - start) / 2);
  }
  unwatch();
  await store.close();
  await store.whenClosed?.();
  return times;
}

/** The same ping-pong, but each round is `await waitForChange()`, as a loop in an application would be. */
async function waitForChangeRounds(store, ping, pong, rounds) {
  const times = [];
  for (let i = 0; i < WARMUP + rounds; i++) {
    const start = process.hrtime.bigint();
    const answered = pong.waitForChange({ timeoutMs: 5000 });
    await ping.markUpdated();
    if ((await answered) === null) throw new Error(`no pong within 5 s (round ${i})`);
    await pong.refresh();
    if (i >= WARMUP) times.push(Number(process.hrtime.bigint() - start) / 2);
  }
  await store.close();
  return times;
}

async function measureStore(kind, location, rounds, waitEachRound = false) {
  const child = fork(CHILD, ['ponger', kind, location], { stdio: 'inherit' });
  await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`ponger exited with ${code}`)));
  });
  try {
    return await pinger(kind, location, rounds, waitEachRound);
  } finally {
    // Wait for it to go: a relayed ponger writes its relay state into the run's directory as it closes.
    const exited = child.exitCode === null && child.signalCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined;
    child.send('stop');
    await exited;
  }
}

/** node:cluster: worker 1 → primary → broadcast → worker 2 → primary → broadcast → worker 1. */
async function measureCluster(rounds) {
  cluster.setupPrimary({ exec: CHILD, args: ['cluster-pinger', String(rounds)] });
  const workers = [cluster.fork(), cluster.fork()];
  const broadcast = (from, message) => {
    for (const worker of workers) if (worker !== from) worker.send(message);
  };
  return new Promise((resolve, reject) => {
    let ready = 0;
    for (const worker of workers) {
      worker.on('message', (message) => {
        if (message === 'ready' && ++ready === workers.length) workers[0].send('start');
        else if (message?.times) {
          for (const w of workers) w.kill();
          resolve(message.times);
        } else if (message === 'ping' || message === 'pong') broadcast(worker, message);
      });
      worker.on('error', reject);
    }
  });
}

export function clusterWorker(rounds) {
  let resolvePong;
  process.on('message', async (message) => {
    if (message === 'ping') process.send('pong');
    else if (message === 'pong') resolvePong?.();
    else if (message === 'start') {
      const times = [];
      for (let i = 0; i < WARMUP + rounds; i++) {
        const start = process.hrtime.bigint();
        const answered = new Promise((resolve) => (resolvePong = resolve));
        process.send('ping');
        await answered;
        if (i >= WARMUP) times.push(Number(process.hrtime.bigint() - start) / 2);
      }
      process.send({ times });
    }
  });
  process.send('ready');
}

export const CLUSTER_BASELINE = 'node:cluster broadcast via the primary';

/**
 * @param {{ rounds: number, only?: string }} options
 * @returns {Promise<{ results: Record<string, { p50: number, p99: number, max: number, samples: number }>, skipped: string[] }>}
 */
export async function runLatency({ rounds, only }) {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-latency-'));
  const contenders = [
    [CLUSTER_BASELINE, () => measureCluster(rounds)],
    ['shm watch (futex)', () => measureStore('shm', join(dir, 'latency.shm'), rounds)],
    ['shm waitForChange() per round', () => measureStore('shm', join(dir, 'latency-wait.shm'), rounds, true)],
    ['file watch (fs.watch)', () => measureStore('file', join(dir, 'latency.json'), rounds)],
    [PUBSUB_BASELINE, () => withRedis((url) => measureBarePubSub(url, rounds))],
    ['redis watch (pub/sub)', () => withRedis((url) => measureStore('redis', url, rounds))],
    [RELAY_LATENCY, () => withRedis((url) => measureStore('relay', JSON.stringify({ dir, url }), rounds))],
  ].filter(([name]) => {
    // `only`: contenders whose names contain any of its comma-separated parts, and the baselines they need.
    const parts = only?.split(',').filter(Boolean) ?? [];
    const wanted = (contender) => parts.length === 0 || parts.some((part) => contender.includes(part));
    return wanted(name) || name === CLUSTER_BASELINE || (name === PUBSUB_BASELINE && (wanted('redis watch (pub/sub)') || wanted(RELAY_LATENCY)));
  });

  const results = {};
  const skipped = [];
  try {
    for (const [name, run] of contenders) {
      const times = await run();
      if (times === undefined) {
        skipped.push(name);
        continue;
      }
      const sorted = times.sort((a, b) => a - b);
      results[name] = { p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), max: sorted.at(-1), samples: sorted.length };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  }
  return { results, skipped };
}

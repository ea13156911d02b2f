// RelayStore: hosts simulated on this machine as separate store directories,
// several real processes each, one real redis-server. Each host elects one
// relay; the relays keep the hosts' shared memory in step through Redis.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { InvalidArgumentError, RelayStore } from 'generation-sync';

import { ask, eventually, startWorker, stopAll, tempDir, type Worker } from './helpers';
import { RedisServer } from './redis-server';
import { scaled } from './support/time-scale';

interface Status {
  relaying: boolean;
  connected: boolean;
  counters: { forwarded: number; takenIn: number; outages: number };
  pid: number;
  log: string[];
}
interface Read {
  generation: number | null;
  expired: boolean;
  syncGen: number | null;
}

let server: RedisServer;
let namespaceCounter = 0;
const workers: Worker[] = [];

beforeAll(async () => {
  server = await RedisServer.start();
});
afterAll(async () => {
  await server?.stop();
});
afterEach(() => {
  stopAll(workers);
  workers.length = 0;
});

/** A simulated host: its own store directory, `processes` processes on it. */
interface Host {
  readonly dir: string;
  readonly path: string;
  readonly processes: Worker[];
}

async function startHosts(count: number, processes: number, namespace = `relay-${process.pid}-${namespaceCounter++}`): Promise<{ hosts: Host[]; namespace: string }> {
  const hosts: Host[] = [];
  for (let h = 0; h < count; h++) {
    const dir = tempDir(`gensync-host${h}-`);
    const host: Host = { dir, path: join(dir, 'generations.shm'), processes: [] };
    for (let p = 0; p < processes; p++) host.processes.push(startProcess(host, namespace));
    hosts.push(host);
  }
  for (const host of hosts) for (const worker of host.processes) await worker.next();
  for (const host of hosts) await relayOf(host);
  return { hosts, namespace };
}

function startProcess(host: Host, namespace: string): Worker {
  const worker = startWorker('relay-worker.mjs', [host.path, server.url, namespace]);
  workers.push(worker);
  return worker;
}

/** The host's relay, once exactly one live process of it is relaying and connected. */
async function relayOf(host: Host, timeoutMs = scaled(10_000)): Promise<Worker> {
  return eventually(
    `one connected relay on ${host.dir}`,
    async () => {
      const live = host.processes.filter((worker) => worker.child.exitCode === null && worker.child.signalCode === null);
      const statuses = await Promise.all(live.map((worker) => ask<Status>(worker, { op: 'status' })));
      const relays = live.filter((_, i) => statuses[i]?.relaying === true);
      expect(relays.length).toBeLessThanOrEqual(1);
      const index = statuses.findIndex((status) => status.relaying && status.connected);
      return index >= 0 ? live[index] : undefined;
    },
    timeoutMs,
  );
}

async function read(worker: Worker, key: string): Promise<Read> {
  return ask<Read>(worker, { op: 'read', key });
}

/** Wait until every live process of every host reads the same generation for `key`, equal to Redis'; return it. */
async function converged(hosts: Host[], namespace: string, key: string, timeoutMs = scaled(10_000)): Promise<number> {
  return eventually(
    `every host converges on ${key}`,
    async () => {
      const values = new Set<number | null>();
      for (const host of hosts) {
        for (const worker of host.processes) {
          if (worker.child.exitCode !== null || worker.child.signalCode !== null) continue;
          values.add((await read(worker, key)).generation);
        }
      }
      const stored = server.cli('GET', `${namespace}:${key}`);
      if (values.size !== 1 || String([...values][0]) !== stored) return undefined;
      return [...values][0] as number;
    },
    timeoutMs,
  );
}

describe('RelayStore across simulated hosts', () => {
  it('concurrent bumps on three hosts converge exactly: every host ends at Redis, which counts every bump once', async () => {
    const { hosts, namespace } = await startHosts(3, 2);
    const key = 'converge';
    const first = hosts[0]!.processes[0]!;
    await ask(first, { op: 'read', key });
    const base = await converged(hosts, namespace, key);
    for (const host of hosts) for (const worker of host.processes) await ask(worker, { op: 'refresh', key });
    const perProcess = 300;
    await Promise.all(hosts.flatMap((host) => host.processes.map((worker) => ask(worker, { op: 'stream', key, count: perProcess }))));
    const final = await converged(hosts, namespace, key);
    // One process created the key; the others met it (mirrored, or created here and counted once as a change).
    const created = hosts.length - 1;
    expect(final - base).toBeGreaterThanOrEqual(hosts.length * 2 * perProcess);
    expect(final - base).toBeLessThanOrEqual(hosts.length * 2 * perProcess + created);
    // Each process sees the other hosts' bumps, unless its own was the last one counted.
    for (const host of hosts) {
      for (const worker of host.processes) {
        const now = await read(worker, key);
        expect(now.expired).toBe(now.syncGen !== final);
      }
    }
  });

  it('only one process per host is the relay, and a host holds two Redis connections whatever its number of processes', async () => {
    const { hosts, namespace } = await startHosts(2, 4);
    for (const host of hosts) for (const worker of host.processes) await ask(worker, { op: 'bump', key: 'counted' });
    await converged(hosts, namespace, 'counted');
    const clients = server.cli('CLIENT', 'LIST').split('\n').filter((line) => line.includes('cmd=') && !line.includes('cmd=client'));
    // Two per host (commands, subscriber), whatever the number of processes.
    expect(clients.length).toBe(2 * hosts.length);
    const subscribers = clients.filter((line) => / sub=[1-9]/.test(line) || / psub=[1-9]/.test(line));
    expect(subscribers.length).toBe(hosts.length);
  });
});

describe('RelayStore options', () => {
  it('refuses a client, a signal or a logger for Redis, and bad numbers, with typed errors', () => {
    const dir = tempDir();
    for (const redis of [{ client: {} }, { signal: new AbortController().signal }, { logger: console }]) {
      expect(() => RelayStore.open(join(dir, 'r.shm'), { redis: redis as never })).toThrow(InvalidArgumentError);
    }
    expect(() => RelayStore.open(join(dir, 'r.shm'), { electionIntervalMs: 0 })).toThrow(/electionIntervalMs/);
    expect(() => RelayStore.open(join(dir, 'r.shm'), { expirationSecs: -1 })).toThrow(/expirationSecs/);
  });
});

void readFileSync;
void writeFileSync;

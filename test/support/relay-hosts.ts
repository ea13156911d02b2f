// Hosts of a relayed store, simulated on this machine: each host is its own
// store directory with several real processes (test/fixtures/relay-worker.mjs),
// one of which the host elects its relay; all of them talk to one real
// redis-server. Shared by the relay test files.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';

import { ask, eventually, startWorker, stopAll, tempDir, type Worker } from '../helpers';
import type { RedisServer } from '../redis-server';
import { scaled } from './time-scale';

export interface Status {
  relaying: boolean;
  connected: boolean;
  counters: { forwarded: number; takenIn: number; outages: number; failed: number; implausible: number };
  pid: number;
  log: string[];
  backlog: { queued: number; inFlight: number; retrying: number; reading: number | null };
}

export interface Read {
  generation: number | null;
  expired: boolean;
  syncGen: number | null;
}

/** A simulated host: its own store directory, processes on it. */
export interface Host {
  readonly dir: string;
  readonly path: string;
  readonly processes: Worker[];
}

let namespaceCounter = 0;

/** A fresh namespace, so that tests sharing a server never share keys. */
export function relayNamespace(): string {
  return `relay-${process.pid}-${namespaceCounter++}`;
}

/** The hosts of one test file, on `server()` (a function: a test may swap the server it uses). */
export class SimulatedHosts {
  readonly workers: Worker[] = [];

  constructor(
    readonly server: () => RedisServer,
    /** Extra environment for every process. */
    private readonly env: NodeJS.ProcessEnv = {},
  ) {
    afterEach(() => this.stopAll());
  }

  stopAll(): void {
    stopAll(this.workers);
    this.workers.length = 0;
  }

  /** `count` hosts of `processes` processes each, every one with a connected relay. */
  async start(count: number, processes: number, namespace = relayNamespace()): Promise<{ hosts: Host[]; namespace: string }> {
    const hosts: Host[] = [];
    for (let h = 0; h < count; h++) {
      const host = this.host(`gensync-host${h}-`);
      for (let p = 0; p < processes; p++) host.processes.push(this.process(host, namespace));
      hosts.push(host);
    }
    for (const host of hosts) for (const worker of host.processes) await worker.next();
    for (const host of hosts) await this.relayOf(host);
    return { hosts, namespace };
  }

  /** `count` hosts of `processes` processes each, every process holding `key` at Redis' value (one bump made it). */
  async holding(count: number, processes: number, key: string): Promise<{ hosts: Host[]; namespace: string; before: number }> {
    const { hosts, namespace } = await this.start(count, processes);
    await ask(hosts[0]!.processes[0]!, { op: 'bump', key });
    const before = await this.converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    return { hosts, namespace, before };
  }

  /** A host with no process yet. */
  host(prefix = 'gensync-host-'): Host {
    const dir = tempDir(prefix);
    return { dir, path: join(dir, 'generations.shm'), processes: [] };
  }

  /** Start one more process on `host` (not waited for: `await worker.next()`), reaching Redis at `url` (the server's by default). */
  process(host: Host, namespace: string, url = this.server().url): Worker {
    const worker = startWorker('relay-worker.mjs', [host.path, url, namespace], this.env);
    this.workers.push(worker);
    return worker;
  }

  /** The host's relay, once exactly one live process of it is relaying and connected. */
  async relayOf(host: Host, timeoutMs = scaled(10_000)): Promise<Worker> {
    let last: Status[] = [];
    try {
      return await eventually(
        `one connected relay on ${host.dir}`,
        async () => {
          const live = alive(host.processes);
          const statuses = await Promise.all(live.map((worker) => ask<Status>(worker, { op: 'status' })));
          last = statuses;
          const relays = live.filter((_, i) => statuses[i]?.relaying === true);
          expect(relays.length).toBeLessThanOrEqual(1);
          const index = statuses.findIndex((status) => status.relaying && status.connected);
          return index >= 0 ? live[index] : undefined;
        },
        timeoutMs,
      );
    } catch (error) {
      // What each process said last, for whoever reads the failure.
      const said = last.map((status) => `pid ${status.pid}: relaying ${status.relaying}, connected ${status.connected}, ${JSON.stringify(status.counters)}${status.relaying ? `, backlog ${JSON.stringify(status.backlog)}` : ''}, log ${JSON.stringify(status.log.slice(-5))}`);
      throw new Error(`${(error as Error).message}\n${said.join('\n')}`);
    }
  }

  /** Wait until every live process of every host reads the same generation for `key`, equal to Redis'; return it. */
  async converged(hosts: Host[], namespace: string, key: string, timeoutMs = scaled(10_000)): Promise<number> {
    return eventually(
      `every host converges on ${key}`,
      async () => {
        const values = new Set<number | null>();
        for (const worker of everyProcess(hosts)) values.add((await read(worker, key)).generation);
        const stored = this.server().cli('GET', `${namespace}:${key}`);
        if (values.size !== 1 || String([...values][0]) !== stored) return undefined;
        return [...values][0] as number;
      },
      timeoutMs,
    );
  }
}

export function alive(workers: Worker[]): Worker[] {
  return workers.filter((worker) => worker.child.exitCode === null && worker.child.signalCode === null);
}

/** Every live process of the hosts. */
export function everyProcess(hosts: Host[]): Worker[] {
  return hosts.flatMap((host) => alive(host.processes));
}

export async function read(worker: Worker, key: string): Promise<Read> {
  return ask<Read>(worker, { op: 'read', key });
}

export async function refreshAll(hosts: Host[], key: string): Promise<void> {
  for (const worker of everyProcess(hosts)) await ask(worker, { op: 'refresh', key });
}

/** How many acknowledged bumps a log file records. */
export function logged(log: string): number {
  try {
    return readFileSync(log, 'utf8').split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
}

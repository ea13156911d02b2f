// RelayStore: hosts simulated on this machine as separate store directories,
// several real processes each, one real redis-server. Each host elects one
// relay; the relays keep the hosts' shared memory in step through Redis.
import { existsSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { GenerationSynchronizer, InvalidArgumentError, OutOfRangeError, RelayStore } from 'generation-sync';

import { ask, eventually, ROOT, tempDir } from './helpers';
import { RedisServer } from './redis-server';
import { effort } from './support/effort';
import { everyProcess, logged, read, refreshAll, SimulatedHosts, type Host, type Status } from './support/relay-hosts';
import { scaled } from './support/time-scale';

let server: RedisServer;
const simulated = new SimulatedHosts(() => server);
const startHosts = (count: number, processes: number): ReturnType<SimulatedHosts['start']> => simulated.start(count, processes);
const startProcess = (host: Host, namespace: string) => simulated.process(host, namespace);
const relayOf = (host: Host, timeoutMs?: number) => simulated.relayOf(host, timeoutMs);
const converged = (hosts: Host[], namespace: string, key: string, timeoutMs?: number) => simulated.converged(hosts, namespace, key, timeoutMs);

beforeAll(async () => {
  // The server's clock stands still: every change in Redis is then exactly one more (a change moves a key to the
  // larger of one more and the clock), so that these tests can count that every acknowledged bump reached Redis
  // once. Tests that need a clock that runs start their own server.
  server = await RedisServer.start({ frozenClockUs: 1_700_000_000_000_000 });
});
afterAll(async () => {
  await server?.stop();
});

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
    console.log(`relay convergence: ${hosts.length * 2 * perProcess} bumps on ${hosts.length} hosts, Redis moved by ${final - base}`);
    expect(final - base).toBe(hosts.length * 2 * perProcess);
    // Each process sees the other hosts' bumps, unless its own was the last one counted.
    for (const host of hosts) {
      for (const worker of host.processes) {
        const now = await read(worker, key);
        expect(now.expired).toBe(now.syncGen !== final);
      }
    }
  });

  it('on a server whose clock runs, concurrent bumps on three hosts converge: every host ends at Redis, which moved by at least every bump', async () => {
    const own = await RedisServer.start();
    const saved = server;
    server = own;
    try {
      const { hosts, namespace } = await startHosts(3, 2);
      const key = 'converge-clock';
      await ask(hosts[0]!.processes[0]!, { op: 'read', key });
      const base = await converged(hosts, namespace, key);
      const perProcess = 100;
      await Promise.all(hosts.flatMap((host) => host.processes.map((worker) => ask(worker, { op: 'stream', key, count: perProcess }))));
      const final = await converged(hosts, namespace, key);
      expect(final - base).toBeGreaterThanOrEqual(hosts.length * 2 * perProcess);
    } finally {
      server = saved;
      simulated.stopAll();
      await own.stop();
    }
  });

  it('a new host meeting keys the others hold changes nothing for them: Redis keeps its value, nobody else reloads', async () => {
    const { hosts, namespace } = await startHosts(2, 2);
    const keys = ['met-1', 'met-2', 'met-3'];
    for (const key of keys) await ask(hosts[0]!.processes[0]!, { op: 'bump', key });
    const before = new Map<string, number>();
    for (const key of keys) before.set(key, await converged(hosts, namespace, key));
    for (const key of keys) await refreshAll(hosts, key);
    // A third host starts, empty: its processes create the keys in its own file, then its relay meets Redis.
    const dir = tempDir('gensync-host-new-');
    const newHost: Host = { dir, path: join(dir, 'generations.shm'), processes: [] };
    newHost.processes.push(startProcess(newHost, namespace));
    await newHost.processes[0]!.next();
    for (const key of keys) await ask(newHost.processes[0]!, { op: 'read', key });
    await relayOf(newHost);
    for (const key of keys) expect(await converged([...hosts, newHost], namespace, key)).toBe(before.get(key));
    for (const key of keys) for (const worker of everyProcess(hosts)) expect((await read(worker, key)).expired).toBe(false);
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




describe('RelayStore failures', () => {
  it(`a relay SIGKILLed mid-stream is replaced, and every acknowledged bump reaches the other host (${effort.relayKills} rounds)`, async () => {
    const { hosts, namespace } = await startHosts(2, 3);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'failover';
    await ask(hostA.processes[0]!, { op: 'read', key });
    const base = await converged(hosts, namespace, key);
    const log = join(hostA.dir, 'acknowledged.log');
    const logB = join(hostB.dir, 'acknowledged.log');
    const takeovers: number[] = [];
    for (let round = 0; round < effort.relayKills; round++) {
      const relay = await relayOf(hostA);
      // Host B bumps meanwhile, so Redis moves on while host A's relay is down: a new relay must know what
      // host A has not forwarded yet, not take Redis' value or its own as the answer.
      const streams = everyProcess(hosts).map((worker) =>
        ask(worker, { op: 'stream', key, count: 200, perTick: 2, log: hostA.processes.includes(worker) ? log : logB }).catch(() => undefined),
      );
      await new Promise((resolve) => setTimeout(resolve, 20 + round * 7));
      relay.child.kill('SIGKILL');
      const killedAt = Date.now();
      hostA.processes.splice(hostA.processes.indexOf(relay), 1);
      await relayOf(hostA, scaled(30_000)); // a takeover must happen; how fast is measured in bench/relay-cost.mjs
      takeovers.push(Date.now() - killedAt);
      await Promise.all(streams);
      hostA.processes.push(startProcess(hostA, namespace));
      await hostA.processes.at(-1)!.next();
    }
    const final = await converged(hosts, namespace, key);
    const acknowledged = logged(log) + logged(logB);
    expect(logged(log)).toBeGreaterThan(0);
    expect(logged(logB)).toBeGreaterThan(0);
    // Never fewer than every acknowledged bump (a relay that dies between forwarding and writing its state
    // may have some counted twice: one change more for the other hosts, never one less).
    expect(final - base).toBeGreaterThanOrEqual(acknowledged);
    expect((await read(hostB.processes[0]!, key)).generation).toBe(final);
    expect((await read(hostA.processes[0]!, key)).generation).toBe(final);
    takeovers.sort((a, b) => a - b);
    // How long a takeover takes is measured by the benchmarks (bench/relay-cost.mjs), not asserted here.
    console.log(`relay failover: ${acknowledged} acknowledged, counted ${final - base}; takeover (kill to connected relay, incl. status polling) median ${takeovers[Math.floor(takeovers.length / 2)]} ms, max ${takeovers.at(-1)} ms`);
  });
});

describe('RelayStore when Redis or a host fails', () => {
  it('Redis killed: every key reads as expired once on every host, the relay logs it once; restarted empty, the hosts converge above every value held', async () => {
    const own = await RedisServer.start();
    const saved = server;
    server = own;
    try {
      const { hosts, namespace } = await startHosts(2, 2);
      const [hostA, hostB] = hosts as [Host, Host];
      const key = 'outage';
      await ask(hostA.processes[0]!, { op: 'read', key });
      const before = await converged(hosts, namespace, key);
      await refreshAll(hosts, key);
      await own.kill();
      // Expired once on every host: the relays mark every key absent.
      await eventually('every process sees the outage as a change', async () => {
        for (const worker of everyProcess(hosts)) if (!(await read(worker, key)).expired) return undefined;
        return true;
      });
      // One load: after a refresh the key holds still while Redis is away.
      await refreshAll(hosts, key);
      const held = new Set<number>();
      for (const worker of everyProcess(hosts)) held.add((await read(worker, key)).syncGen!);
      await new Promise((resolve) => setTimeout(resolve, scaled(1500)));
      for (const worker of everyProcess(hosts)) expect((await read(worker, key)).expired).toBe(false);
      // Bumps on host A during the outage are acknowledged there, and reach host B after it.
      const during = await ask<{ acknowledged: number; syncGen: number }>(hostA.processes[0]!, { op: 'bump', key, count: 5 });
      expect(during.acknowledged).toBe(5);
      held.add(during.syncGen);
      await own.restart();
      const after = await converged(hosts, namespace, key, scaled(15_000));
      for (const value of [before, ...held]) expect(after).toBeGreaterThan(value);
      for (const worker of hostB.processes) expect((await read(worker, key)).expired).toBe(true);
      for (const host of hosts) {
        const status = await ask<Status>(await relayOf(host), { op: 'status' });
        const lost = status.log.filter((line) => line.includes('lost the connection') || line.includes('cannot connect'));
        expect(lost.length).toBe(1);
      }
    } finally {
      server = saved;
      simulated.stopAll();
      await own.stop();
    }
  });

  it('FLUSHALL: the next change anywhere makes the key again above every value it had, every other process reloads, and every host converges on it', async () => {
    const { hosts, namespace } = await startHosts(2, 2);
    const [hostA] = hosts as [Host, Host];
    const key = 'flushed';
    await ask(hostA.processes[0]!, { op: 'bump', key });
    const before = await converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    server.cli('FLUSHALL');
    const bumper = hostA.processes[1]!;
    await ask(bumper, { op: 'bump', key });
    // Redis had lost the key: the change made it again there, and it reached the other host.
    await eventually('every other process sees the change', async () => {
      for (const worker of everyProcess(hosts)) if (worker !== bumper && !(await read(worker, key)).expired) return undefined;
      return true;
    });
    const after = await converged(hosts, namespace, key);
    expect(after).toBeGreaterThan(before);
    expect((await read(bumper, key)).syncGen).toBe(after);
  });

  it('a host partitioned (its relay SIGSTOPped) and healed: changes on both sides meet, none lost', async () => {
    const { hosts, namespace } = await startHosts(2, 3);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'partition';
    await ask(hostA.processes[0]!, { op: 'read', key });
    const before = await converged(hosts, namespace, key);
    const relay = await relayOf(hostA);
    const others = hostA.processes.filter((worker) => worker !== relay);
    relay.child.kill('SIGSTOP');
    try {
      for (const worker of others) expect((await ask<{ acknowledged: number }>(worker, { op: 'bump', key, count: 50 })).acknowledged).toBe(50);
      for (const worker of hostB.processes) expect((await ask<{ acknowledged: number }>(worker, { op: 'bump', key, count: 50 })).acknowledged).toBe(50);
      // Partitioned: A's processes cannot hear B's changes.
      const b = (await read(hostB.processes[0]!, key)).generation!;
      expect((await read(others[0]!, key)).generation).not.toBe(b);
      await new Promise((resolve) => setTimeout(resolve, scaled(1000)));
    } finally {
      relay.child.kill('SIGCONT');
    }
    const after = await converged(hosts, namespace, key, scaled(15_000));
    expect(after - before).toBe(50 * (others.length + hostB.processes.length));
  });

  it("a host's store file removed while in use (a temp cleaner): the host moves to a new file and stays in step both ways", async () => {
    const { hosts, namespace } = await startHosts(2, 2);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'moved';
    await ask(hostA.processes[0]!, { op: 'bump', key });
    const before = await converged(hosts, namespace, key);
    rmSync(hostA.path);
    // Every process of host A notices (within its check interval) and moves to a new file at the path.
    await eventually('host A to have a new store file', () => (existsSync(hostA.path) ? true : undefined));
    await new Promise((resolve) => setTimeout(resolve, scaled(1000)));
    expect((await ask<{ acknowledged: number }>(hostA.processes[1]!, { op: 'bump', key, count: 3 })).acknowledged).toBe(3);
    expect((await ask<{ acknowledged: number }>(hostB.processes[1]!, { op: 'bump', key, count: 4 })).acknowledged).toBe(4);
    const after = await converged(hosts, namespace, key);
    expect(after).toBeGreaterThanOrEqual(before + 7);
  });

  it('clear() on one host makes the key absent on every host; re-created, it starts above every value it had', async () => {
    const { hosts, namespace } = await startHosts(2, 2);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'cleared';
    await ask(hostA.processes[0]!, { op: 'bump', key, count: 3 });
    const before = await converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    expect((await ask<{ ok: boolean }>(hostA.processes[0]!, { op: 'clear', key })).ok).toBe(true);
    await eventually('host B sees the key absent', async () => ((await read(hostB.processes[1]!, key)).generation === null ? true : undefined));
    expect((await read(hostB.processes[0]!, key)).expired).toBe(true);
    await ask(hostB.processes[0]!, { op: 'refresh', key });
    const after = await converged(hosts, namespace, key);
    expect(after).toBeGreaterThan(before);
  });
});

describe('RelayStore in a process that does not close it', () => {
  it.each(['redis', 'ioredis'])('the relay process (%s package) still exits by itself when its work is done, and its bump reaches the other host', async (driver) => {
    const { hosts, namespace } = await startHosts(1, 1);
    const [hostB] = hosts as [Host];
    await ask(hostB.processes[0]!, { op: 'read', key: 'exits' });
    const before = await converged([hostB], namespace, 'exits');
    const dir = tempDir('gensync-hostA-');
    const script = `
      const { GenerationSynchronizer, RelayStore } = require('generation-sync');
      const store = RelayStore.open(${JSON.stringify(join(dir, 'generations.shm'))}, { redis: { url: ${JSON.stringify(server.url)}, namespace: ${JSON.stringify(namespace)}, driver: ${JSON.stringify(driver)} }, electionIntervalMs: 50 });
      const sync = new GenerationSynchronizer('exits', { store, normalizeCacheKey: false });
      sync.markUpdated();
      // Wait until this process relays and has forwarded the bump; then simply end: nothing may keep it alive.
      store.flush(10000).then((settled) => { if (!settled) process.exitCode = 3; });
    `;
    const started = Date.now();
    const result = spawnSync(process.execPath, ['-e', script], { cwd: ROOT, timeout: scaled(20_000), encoding: 'utf8' });
    expect(result.error).toBeUndefined();
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    console.log(`a relay process with nothing left to do exited ${Date.now() - started} ms after it started`);
    expect(await converged([hostB], namespace, 'exits')).toBeGreaterThan(before);
  });
});

describe('RelayStore options', () => {
  it('refuses a client, a signal or a logger for Redis, and bad numbers, with typed errors', () => {
    const dir = tempDir();
    for (const redis of [{ client: {} }, { signal: new AbortController().signal }, { logger: console }]) {
      expect(() => RelayStore.open(join(dir, 'r.shm'), { redis: redis as never })).toThrow(InvalidArgumentError);
    }
    expect(() => RelayStore.open(join(dir, 'r.shm'), { redis: { url: 'http://127.0.0.1:1' } })).toThrow(InvalidArgumentError);
    expect(() => RelayStore.open(join(dir, 'r.shm'), { redis: { driver: 'memcached' as never } })).toThrow(/redis\.driver/);
    expect(() => RelayStore.open(join(dir, 'r.shm'), { electionIntervalMs: 0 })).toThrow(/electionIntervalMs/);
    // A key the host's file keeps only the start of cannot be relayed: refused, with what to do instead.
    const store = RelayStore.open(join(dir, 'long.shm'), { redis: { url: server.url, namespace: 'long-keys' } });
    try {
      expect(() => new GenerationSynchronizer('é'.repeat(200), { store })).toThrow(OutOfRangeError);
      expect(() => new GenerationSynchronizer('é'.repeat(200), { store })).toThrow(/useEncryption/);
      expect(new GenerationSynchronizer('é'.repeat(128), { store }).syncGen).toBeGreaterThan(0);
    } finally {
      store.close();
    }
    expect(() => RelayStore.open(join(dir, 'r.shm'), { expirationSecs: -1 })).toThrow(/expirationSecs/);
  });
});


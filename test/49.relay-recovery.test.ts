// RelayStore when its relay is replaced, frozen, doubled or overwhelmed, and
// when Redis refuses or cannot be reached: hosts simulated as store
// directories with real processes, one real redis-server. No host may stay
// stale, no acknowledged bump may be lost, no relay may count another's.
import { rmSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ask, eventually, ROOT, type Worker } from './helpers';
import { RedisServer } from './redis-server';
import { effort } from './support/effort';
import { alive, everyProcess, read, refreshAll, relayNamespace, SimulatedHosts, type Host, type Status } from './support/relay-hosts';
import { scaled } from './support/time-scale';

let server: RedisServer;
const simulated = new SimulatedHosts(() => server);
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

beforeAll(async () => {
  // A clock held still: every change in Redis is exactly one more, so that bumps can be counted (see 47.relay).
  server = await RedisServer.start({ frozenClockUs: 1_700_000_000_000_000, args: ['--enable-debug-command', 'yes'] });
});
afterAll(async () => {
  await server?.stop();
});

const status = (worker: Worker): Promise<Status> => ask<Status>(worker, { op: 'status' });
const redisValue = (namespace: string, key: string): number => Number(server.cli('GET', `${namespace}:${key}`));

describe('a relay replaced while another host changes a key', () => {
  it.each(['SIGKILLed', 'closed (pm2 reload)'])(
    `the new relay brings every key of its host up to Redis before it reports itself connected: relay %s, ${effort.takeoverRounds} rounds`,
    async (how) => {
      const { hosts, namespace } = await simulated.start(2, 2);
      const [hostA, hostB] = hosts as [Host, Host];
      const key = 'takeover';
      await ask(hostA.processes[0]!, { op: 'bump', key });
      await simulated.converged(hosts, namespace, key);
      await refreshAll(hosts, key);
      for (let round = 0; round < effort.takeoverRounds; round++) {
        const relay = await simulated.relayOf(hostA);
        const [next] = alive(hostA.processes).filter((worker) => worker !== relay) as [Worker];
        // The process that will take over is stopped meanwhile: it can learn of host B's change only from the takeover.
        next.child.kill('SIGSTOP');
        try {
          if (how === 'SIGKILLed') relay.child.kill('SIGKILL');
          else await ask(relay, { op: 'close' });
          hostA.processes.splice(hostA.processes.indexOf(relay), 1);
          const { syncGen: changed } = await ask<{ syncGen: number }>(hostB.processes[0]!, { op: 'bump', key });
          await eventually('host B\'s change to reach Redis', () => (redisValue(namespace, key) === changed ? true : undefined));
        } finally {
          next.child.kill('SIGCONT');
        }
        await simulated.relayOf(hostA);
        // Connected means in step: no waiting here.
        expect((await read(next, key)).expired, `round ${round}`).toBe(true);
        if (how !== 'SIGKILLed') relay.child.kill('SIGKILL'); // a closed store's process has nothing left to do
        hostA.processes.push(simulated.process(hostA, namespace));
        await hostA.processes.at(-1)!.next();
        await simulated.converged(hosts, namespace, key);
        await refreshAll(hosts, key);
      }
    },
  );
});

describe('a burst of new keys', () => {
  it(`${effort.relayBurstKeys.toLocaleString('en-US')} keys created and bumped at once on one host all reach Redis and the other host, and the relay never holds its event loop`, async () => {
    const { hosts, namespace } = await simulated.start(2, 1);
    const [hostA, hostB] = hosts as [Host, Host];
    const [a] = hostA.processes as [Worker];
    const [b] = hostB.processes as [Worker];
    const count = effort.relayBurstKeys;
    await ask(b, { op: 'many', prefix: 'burst-', count }, scaled(120_000)); // host B holds every key
    await eventually('host B\'s keys to be in Redis', () => (server.cli('EXISTS', `${namespace}:burst-${count - 1}`) === '1' ? true : undefined), scaled(30_000));
    await pause(300);
    await ask(b, { op: 'refreshMany', prefix: 'burst-', count }, scaled(60_000));
    expect((await ask<{ expired: number }>(b, { op: 'readMany', prefix: 'burst-', count }, scaled(60_000))).expired).toBe(0);
    await pause(500);
    const started = Date.now();
    const { acknowledged } = await ask<{ acknowledged: number }>(a, { op: 'many', prefix: 'burst-', count, bump: true }, scaled(120_000));
    expect(acknowledged).toBe(count);
    // From here on the process does nothing but relay (its own loop of bumps above held its event loop, as any
    // application's synchronous work does).
    await ask(a, { op: 'stalls', reset: true });
    const expired = await eventually(
      'every bump to reach host B',
      async () => {
        const seen = await ask<{ expired: number }>(b, { op: 'readMany', prefix: 'burst-', count }, scaled(60_000));
        return seen.expired === count ? seen.expired : undefined;
      },
      scaled(60_000),
    );
    const convergedMs = Date.now() - started;
    const { longestStallMs } = await ask<{ longestStallMs: number }>(a, { op: 'stalls' });
    const counters = (await status(a)).counters;
    console.log(`relay burst: ${count} keys bumped on one host, all ${expired} seen on the other after ${convergedMs} ms; longest event-loop stall of the relay process ${longestStallMs.toFixed(1)} ms; ${JSON.stringify(counters)}`);
    // A bound that only catches a relay doing the burst in one go (2,450 ms at 4,000 keys before), not a speed claim.
    expect(longestStallMs).toBeLessThan(scaled(500));
    expect(counters.failed).toBe(0);
  });
});

describe('flush()', () => {
  it('covers every change made before it, even of a key the relay has not met yet: a one-process host bumps a new key, flushes, exits, and the other host has it', async () => {
    const { hosts, namespace } = await simulated.start(1, 1);
    const [hostB] = hosts as [Host];
    for (let round = 0; round < 4; round++) {
      const key = `flushed-${round}`;
      await ask(hostB.processes[0]!, { op: 'read', key });
      const before = await simulated.converged(hosts, namespace, key);
      await refreshAll(hosts, key); // host B's synchronizer holds Redis' value, not the one it created the key with
      const hostA = simulated.host('gensync-cron-');
      const cron = simulated.process(hostA, namespace);
      hostA.processes.push(cron);
      await cron.next();
      await simulated.relayOf(hostA);
      await ask(cron, { op: 'bump', key });
      expect((await ask<{ settled: boolean }>(cron, { op: 'flush', timeoutMs: 10_000 })).settled).toBe(true);
      // Right after flush(): Redis has the change.
      expect(redisValue(namespace, key)).toBeGreaterThan(before);
      cron.child.kill('SIGKILL');
      await eventually(`host B to see round ${round}'s change`, async () => ((await read(hostB.processes[0]!, key)).expired ? true : undefined));
    }
  });
});

describe('Redis refusing the relay', () => {
  it('a foreign value under the namespace: logged once, counted, and the change lands once the operator removes it', async () => {
    const { hosts, namespace } = await simulated.start(2, 1);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'foreign';
    await ask(hostB.processes[0]!, { op: 'read', key });
    await simulated.converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    server.cli('SET', `${namespace}:${key}`, 'not a generation');
    expect((await ask<{ acknowledged: number }>(hostA.processes[0]!, { op: 'bump', key, count: 3 })).acknowledged).toBe(3);
    const relay = await simulated.relayOf(hostA);
    const refused = await eventually('the refusal to be logged and counted', async () => {
      const now = await status(relay);
      return now.counters.failed > 0 && now.log.some((line) => line.includes('refused or failed')) ? now : undefined;
    });
    await pause(500);
    expect((await status(relay)).log.filter((line) => line.includes('refused or failed'))).toHaveLength(1);
    server.cli('DEL', `${namespace}:${key}`);
    await eventually('host B to see host A\'s bumps', async () => ((await read(hostB.processes[0]!, key)).expired ? true : undefined), scaled(15_000));
    await simulated.converged(hosts, namespace, key, scaled(15_000));
    console.log(`relay refused: ${refused.counters.failed} failed scripts before the fix`);
  });

  it('Redis out of memory (noeviction): logged, counted, and the change lands once memory is given back', async () => {
    const { hosts, namespace } = await simulated.start(2, 1);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'oom';
    await ask(hostB.processes[0]!, { op: 'read', key });
    await simulated.converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    server.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    server.cli('CONFIG', 'SET', 'maxmemory', '1');
    try {
      await ask(hostA.processes[0]!, { op: 'bump', key, count: 3 });
      const relay = await simulated.relayOf(hostA);
      await eventually('the failure to be counted', async () => ((await status(relay)).counters.failed > 0 ? true : undefined));
      expect((await read(hostB.processes[0]!, key)).expired).toBe(false);
    } finally {
      server.cli('CONFIG', 'SET', 'maxmemory', '0');
    }
    await eventually('host B to see the change', async () => ((await read(hostB.processes[0]!, key)).expired ? true : undefined), scaled(15_000));
  });

  it('a Redis user who may not run scripts: logged once, and every change lands once the permission is granted', async () => {
    const user = `noscript${process.pid}`;
    server.cli('ACL', 'SETUSER', user, 'on', '>secret', '~*', '&*', '+@all', '-eval', '-evalsha');
    try {
      const namespace = relayNamespace();
      const { hosts } = await simulated.start(1, 1, namespace);
      const [hostB] = hosts as [Host];
      const key = 'acl';
      await ask(hostB.processes[0]!, { op: 'read', key });
      await simulated.converged(hosts, namespace, key);
      await refreshAll(hosts, key);
      const hostA = simulated.host('gensync-acl-');
      const limited = simulated.process(hostA, namespace, server.url.replace('redis://', `redis://${user}:secret@`));
      hostA.processes.push(limited);
      await limited.next();
      await ask(limited, { op: 'bump', key, count: 3 });
      await eventually('the missing permission to be logged', async () => ((await status(limited)).log.some((line) => /NOPERM|no permissions/i.test(line)) ? true : undefined));
      server.cli('ACL', 'SETUSER', user, '+eval', '+evalsha');
      await eventually('host B to see the change', async () => ((await read(hostB.processes[0]!, key)).expired ? true : undefined), scaled(15_000));
    } finally {
      server.cli('ACL', 'DELUSER', user);
    }
  });
});

describe('a relay process while Redis cannot be reached', () => {
  it.each(['redis', 'ioredis'])('exits by itself when its work is done (%s package)', async (driver) => {
    const closed = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    const dir = simulated.host('gensync-unreachable-').dir;
    const script = `
      const { GenerationSynchronizer, RelayStore } = require('generation-sync');
      const store = RelayStore.open(${JSON.stringify(`${dir}/generations.shm`)}, { redis: { url: 'redis://127.0.0.1:${closed}', driver: ${JSON.stringify(driver)} }, electionIntervalMs: 50, logger: { error() {}, warn() {}, info() {} } });
      const sync = new GenerationSynchronizer('k', { store, normalizeCacheKey: false });
      sync.markUpdated();
      // Work done: nothing may keep the process alive, while its relay keeps trying to reach Redis.
      setTimeout(() => console.log('done'), 300);
    `;
    const started = Date.now();
    const result = spawnSync(process.execPath, ['-e', script], { cwd: ROOT, timeout: scaled(15_000), encoding: 'utf8' });
    expect(result.signal).toBeNull(); // not killed by the timeout
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).toBe('done');
    console.log(`relay process with Redis unreachable (${driver}): exited after ${Date.now() - started} ms`);
  });
});

describe('one relay per host, and per process', () => {
  it('a relay re-elected while its first connection still waits does not start a second relay in the process', async () => {
    const namespace = relayNamespace();
    const host = simulated.host('gensync-reelected-');
    const before = clientCount();
    // Redis is busy for 3 s: a relay elected now waits for its connection; meanwhile its lock file goes, and comes back.
    const sleeper = spawn('redis-cli', ['-p', String(server.port), 'DEBUG', 'SLEEP', '3'], { stdio: 'ignore' });
    const busy = new Promise((resolve) => sleeper.once('exit', resolve));
    await pause(100);
    const worker = simulated.process(host, namespace);
    host.processes.push(worker);
    await worker.next();
    for (let i = 0; i < 5; i++) {
      rmSync(`${host.path}.relay-lock`, { force: true });
      await pause(150);
    }
    await busy;
    await simulated.relayOf(host);
    await ask(worker, { op: 'bump', key: 'one' });
    await pause(1000);
    // Two connections for the host (commands, subscriber), however many times it was elected.
    expect(clientCount() - before).toBeLessThanOrEqual(2);
  });

  it(`a lock file removed while the relay runs: another process takes over, and two relays never count each other's writes (${effort.takeoverRounds} rounds)`, async () => {
    const { hosts, namespace } = await simulated.start(2, 3);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'doubled';
    await ask(hostA.processes[0]!, { op: 'read', key });
    await simulated.converged(hosts, namespace, key);
    const moves: number[] = [];
    for (let round = 0; round < effort.takeoverRounds; round++) {
      const before = redisValue(namespace, key);
      rmSync(`${hostA.path}.relay-lock`);
      // While another process of host A is elected and before its old relay notices its lock is gone, both hosts
      // bump: host B's changes are written into host A's file, which each relay of host A could take for a change
      // made on host A.
      for (let i = 0; i < 5; i++) {
        await ask(hostB.processes[i % 3]!, { op: 'bump', key });
        await ask(hostA.processes[i % 3]!, { op: 'bump', key });
        await pause(40);
      }
      await simulated.converged(hosts, namespace, key);
      await pause(1000);
      moves.push(redisValue(namespace, key) - before);
      const relays = (await Promise.all(hostA.processes.map(status))).filter((s) => s.relaying);
      expect(relays.length).toBeLessThanOrEqual(1);
    }
    console.log(`relay lock file removed: 10 bumps moved Redis by ${moves.join(', ')}`);
    // Counting a bump twice is allowed (a relay that stops between forwarding and writing its bases), a storm is not.
    for (const move of moves) {
      expect(move).toBeGreaterThanOrEqual(10);
      expect(move).toBeLessThanOrEqual(12);
    }
  });

  it('a value past 2^53 in Redis is refused with a log line and counted, never a silent stop', async () => {
    const { hosts, namespace } = await simulated.start(1, 1);
    const [host] = hosts as [Host];
    const key = 'huge';
    await ask(host.processes[0]!, { op: 'read', key });
    await simulated.converged(hosts, namespace, key);
    server.cli('SET', `${namespace}:${key}`, '9007199254740993');
    await ask(host.processes[0]!, { op: 'bump', key });
    await eventually('the refusal to be logged', async () => {
      const now = await status(host.processes[0]!);
      return now.counters.failed > 0 && now.log.some((line) => line.includes('9007199254740993') || line.includes('not a generation')) ? true : undefined;
    });
  });
});

describe('a frozen relay', () => {
  it('stopped (SIGSTOP) while another host bumps: its host gets a new relay and reads the change within 2 s; resumed, it stops without counting anything twice', async () => {
    const { hosts, namespace } = await simulated.start(2, 2);
    const [hostA, hostB] = hosts as [Host, Host];
    const key = 'frozen';
    await ask(hostA.processes[0]!, { op: 'bump', key });
    await simulated.converged(hosts, namespace, key);
    await refreshAll(hosts, key);
    const relay = await simulated.relayOf(hostA);
    const [other] = hostA.processes.filter((worker) => worker !== relay) as [Worker];
    relay.child.kill('SIGSTOP');
    let staleMs = 0;
    try {
      const { syncGen: changed } = await ask<{ syncGen: number }>(hostB.processes[0]!, { op: 'bump', key });
      const bumpedAt = Date.now();
      await eventually('host A to read the change', async () => ((await read(other, key)).expired ? true : undefined), scaled(10_000));
      staleMs = Date.now() - bumpedAt;
      expect((await read(other, key)).generation).toBe(changed);
      console.log(`frozen relay: host A read host B's change ${staleMs} ms after it was made (relay stopped)`);
      await pause(Math.max(0, scaled(10_000) - staleMs));
      const beforeResume = redisValue(namespace, key);
      relay.child.kill('SIGCONT');
      await pause(2000);
      // The resumed relay found another's term and stopped: nothing was counted twice, one relay remains.
      expect(redisValue(namespace, key)).toBe(beforeResume);
      const relaying = (await Promise.all(everyProcess([hostA]).map(status))).filter((s) => s.relaying);
      expect(relaying).toHaveLength(1);
    } finally {
      relay.child.kill('SIGCONT');
    }
    // The bound documented in docs/relay.md: 1 s without a heartbeat, the next election attempt, the new relay's pass.
    expect(staleMs).toBeLessThan(scaled(2000) + 1000);
  }, 60_000);
});

/** Connections the server has, but redis-cli's own. */
function clientCount(): number {
  return server.cli('CLIENT', 'LIST').split('\n').filter((line) => line.includes('cmd=') && !line.includes('cmd=client')).length;
}

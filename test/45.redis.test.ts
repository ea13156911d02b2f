// RedisStore against a real redis-server: outages, restarts, FLUSHALL,
// timeouts, foreign data and bad options.
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import IORedis from 'ioredis';
import { createClient, createClientPool, createCluster, createSentinel } from 'redis';

import {
  AsyncGenerationSynchronizer,
  GenerationSynchronizer,
  InvalidArgumentError,
  OutOfRangeError,
  RedisStore,
  type Logger,
} from 'generation-sync';

import { ask, eventually, recordingLogger, ROOT, startWorker, stopAll, tempDir, type Worker } from './helpers';
import { RedisServer } from './redis-server';
import { makeTlsFiles } from './support/tls-ca.cjs';
import { effort } from './support/effort';

interface Report {
  syncGen: number | null;
  expired: boolean;
  checks: number;
  expiredChecks: number;
  logLines: string[];
  unhandled: string[];
}

let server: RedisServer;
let namespaceCounter = 0;
const namespace = (): string => `test-${process.pid}-${namespaceCounter++}:`;
const workers: Worker[] = [];

beforeAll(async () => {
  server = await RedisServer.start();
});
afterAll(async () => {
  await server.stop();
});
afterEach(async () => {
  stopAll(workers.splice(0));
  // Every test leaves the server running for the next one.
  if (!(await isUp())) await server.restart();
});

async function isUp(): Promise<boolean> {
  try {
    return server.cli('PING') === 'PONG';
  } catch {
    return false;
  }
}

describe('RedisStore outages', () => {
  it.each(['redis', 'ioredis'])('survives redis-server being SIGKILLed mid-run and restarted (clients of the %s package): no process throws, checks answer true while it is down, all agree again after', async (driver) => {
    const ns = namespace();
    const monitors = Array.from({ length: 3 }, () => startWorker('redis-monitor.mjs', [server.url, ns, driver]));
    workers.push(...monitors);
    await Promise.all(monitors.map((monitor) => monitor.next()));
    const [first] = monitors as [Worker];
    const bumped = await ask<{ bumped: boolean; syncGen: number }>(first, { cmd: 'probe', bump: true });
    expect(bumped.bumped).toBe(true);
    const before = bumped.syncGen;

    await server.kill('SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const monitor of monitors) {
      const probe = await ask<{ expired: boolean; bumped: boolean; ms: number }>(monitor, { cmd: 'probe', bump: true });
      expect(probe.expired).toBe(true);
      expect(probe.bumped).toBe(false);
      expect(probe.ms).toBeLessThan(5000);
    }
    // Still down a while later: still answering, still alive.
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (const monitor of monitors) expect((await ask<{ expired: boolean }>(monitor, { cmd: 'probe' })).expired).toBe(true);
    expect(monitors.every((monitor) => monitor.child.exitCode === null)).toBe(true);

    await server.restart(); // empty: no persistence
    // Within a few seconds of its return (eventually() gives up after 10 s), every process agrees again.
    const agreed = await eventually(
      'every process to agree again',
      async () => {
        const reports = await Promise.all(monitors.map((monitor) => ask<Report>(monitor, { cmd: 'report' })));
        const values = new Set(reports.map((report) => report.syncGen));
        return values.size === 1 && reports.every((report) => !report.expired) ? reports : undefined;
      },
      10_000,
    );
    // The key was lost with the server; it was re-created above every value held before.
    expect(agreed[0]?.syncGen).toBeGreaterThan(before);
    for (const report of agreed) {
      expect(report.unhandled).toEqual([]);
      const lost = report.logLines.filter((line) => line.includes('lost the connection to Redis'));
      const back = report.logLines.filter((line) => line.includes('connected to Redis') && line.includes('again'));
      expect(lost).toHaveLength(1);
      expect(back).toHaveLength(1);
      // The synchronizer reports the outage once, not once per check, and its end once.
      const failures = report.logLines.filter((line) => line.includes('synchronization state key "monitored"') && line.startsWith('error'));
      expect(failures).toHaveLength(1);
    }

    // And they keep synchronizing: a bump in one reaches the others.
    const bump = await ask<{ bumped: boolean; syncGen: number }>(first, { cmd: 'probe', bump: true });
    expect(bump.bumped).toBe(true);
    await eventually(
      'the bump to reach every process',
      async () => {
        const reports = await Promise.all(monitors.map((monitor) => ask<Report>(monitor, { cmd: 'report' })));
        return reports.every((report) => report.syncGen === bump.syncGen) ? true : undefined;
      },
      5000,
    );
    for (const monitor of monitors) await ask(monitor, { cmd: 'stop' });
    expect(await Promise.all(monitors.map((monitor) => monitor.exited))).toEqual([0, 0, 0]);
  });

  it('bounds every command by the timeout when the server stops answering (SIGSTOP), and recovers on SIGCONT', async () => {
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: server.url, namespace: namespace(), commandTimeoutMs: 200, logger });
    const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
    const pid = server.pid as number;
    process.kill(pid, 'SIGSTOP');
    try {
      const started = Date.now();
      expect(await sync.isExpired()).toBe(true);
      expect(await sync.markUpdated()).toBe(false);
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await eventually('the server to answer again', async () => ((await sync.refresh()) ? true : undefined), 5000);
    expect(await sync.isExpired()).toBe(false);
    expect(await sync.markUpdated()).toBe(true);
    await store.close();
  });

  it('starts while Redis is down, reading keys as expired, and works once it comes up', async () => {
    await server.kill();
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: server.url, namespace: namespace(), connectTimeoutMs: 200, logger });
    const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
    expect(sync.syncGen).toBeNull();
    expect(await sync.isExpired()).toBe(true);
    expect(logger.lines.filter((line) => line.includes('cannot connect to Redis'))).toHaveLength(1);
    await server.restart();
    await eventually('the store to reconnect', async () => ((await sync.refresh()) ? true : undefined), 5000);
    expect(sync.syncGen).not.toBeNull();
    expect(await sync.isExpired()).toBe(false);
    await store.close();
  });

  it('FLUSHALL while holders exist: they see expired, and the re-created generation is higher than any they held', async () => {
    const store = await RedisStore.connect({ url: server.url, namespace: namespace() });
    const holders = await Promise.all(Array.from({ length: 5 }, () => AsyncGenerationSynchronizer.create('flushed', { store })));
    for (const [i, holder] of holders.entries()) {
      for (let j = 0; j <= i * 20; j++) await holder.markUpdated();
    }
    const held = holders.map((holder) => holder.syncGen as number);
    server.cli('FLUSHALL');
    for (const holder of holders) expect(await holder.isExpired()).toBe(true);
    await holders[0]?.refresh();
    for (const holder of holders.slice(1)) await holder.refresh();
    const recreated = holders[0]?.syncGen as number;
    expect(recreated).toBeGreaterThan(Math.max(...held));
    for (const holder of holders) {
      expect(holder.syncGen).toBe(recreated);
      expect(await holder.isExpired()).toBe(false);
    }
    await store.close();
  });

  it('keeps a tombstone on clear, with the key\'s expiry, so the next generation continues above it', async () => {
    const ns = namespace();
    const store = await RedisStore.connect({ url: server.url, namespace: ns });
    const sync = await AsyncGenerationSynchronizer.create('k', { store, cacheExpirationSecs: 100 });
    // A value an hour ahead of the server's clock, so that only the tombstone can explain the next generation.
    server.cli('SET', `${ns}k`, String((Date.now() + 3_600_000) * 1000), 'KEEPTTL');
    await sync.refresh();
    await sync.markUpdated();
    const high = sync.syncGen as number;
    expect(Number(server.cli('TTL', `${ns}k`))).toBeGreaterThan(90);
    await sync.clear();
    expect(server.cli('GET', `${ns}k`)).toBe(String(-(high + 1)));
    expect(Number(server.cli('TTL', `${ns}k`))).toBeGreaterThan(90);
    expect((await store.entries()).map((entry) => entry.generation)).toEqual([null]);
    const later = await AsyncGenerationSynchronizer.create('k', { store });
    expect(later.syncGen).toBe(high + 1);
    await store.close();
  });

  it('treats a foreign value under its namespace as a store failure: expired and logged, never thrown', async () => {
    const ns = namespace();
    const store = await RedisStore.connect({ url: server.url, namespace: ns });
    const logger = recordingLogger();
    const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
    server.cli('SET', `${ns}k`, 'not-a-number');
    expect(await sync.isExpired()).toBe(true);
    expect(await sync.markUpdated()).toBe(false);
    expect(await sync.refresh()).toBe(false);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/holds "not-a-number", not a generation.*own "namespace"/);
    await expect(store.entries()).rejects.toMatchObject({ code: 'ERR_GENSYNC_CORRUPT_VALUE' });
    await store.close();
  });

  it('uses a client the application passes in, and leaves it open on close', async () => {
    const client = createClient({ url: server.url, disableOfflineQueue: true });
    await client.connect();
    const store = await RedisStore.connect({ client, namespace: namespace() });
    const a = await AsyncGenerationSynchronizer.create('shared', { store });
    const b = await AsyncGenerationSynchronizer.create('shared', { store });
    await a.markUpdated();
    expect(await b.isExpired()).toBe(true);
    await store.close();
    expect(client.isReady).toBe(true);
    expect(await client.ping()).toBe('PONG');
    client.destroy();
  });
});

describe('RedisStore arguments', () => {
  it('rejects bad options with errors that name them, and refuses the synchronous class', async () => {
    await expect(RedisStore.connect({ url: 'http://localhost' })).rejects.toThrow(InvalidArgumentError);
    await expect(RedisStore.connect({ url: 'http://localhost' })).rejects.toThrow(/"url" must be a redis:\/\/ or rediss:\/\/ URL/);
    await expect(RedisStore.connect({ commandTimeoutMs: 0 })).rejects.toThrow(OutOfRangeError);
    await expect(RedisStore.connect({ namespace: 5 as unknown as string })).rejects.toThrow(/namespace/);
    await expect(RedisStore.connect({ client: {} as never })).rejects.toThrow(/"client" must be a client/);
    await expect(RedisStore.connect({ logger: {} as Logger })).rejects.toThrow(/"logger"/);

    const store = await RedisStore.connect({ url: server.url, namespace: namespace() });
    expect(() => new GenerationSynchronizer('k', { store: store as never })).toThrow(/synchronous store .* not the asynchronous redis store/);
    await store.close();
    await expect(AsyncGenerationSynchronizer.create('k', { store })).rejects.toMatchObject({ code: 'ERR_GENSYNC_STORE_CLOSED' });
  });

  it('says which package to install when redis is missing', () => {
    const dir = tempDir('gensync-noredis-');
    cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
    cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
    mkdirSync(join(dir, 'node_modules'));
    for (const name of readdirSync(join(ROOT, 'node_modules'))) {
      if (name !== 'redis' && name !== '@redis') symlinkSync(join(ROOT, 'node_modules', name), join(dir, 'node_modules', name));
    }
    const script = `
      require(${JSON.stringify(join(dir, 'dist', 'index.js'))}).RedisStore.connect()
        .then(() => console.log('connected'), (error) => console.log(JSON.stringify({ code: error.code, message: error.message })));
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as { code: string; message: string };
    expect(out.code).toBe('ERR_GENSYNC_DEPENDENCY_MISSING');
    expect(out.message).toMatch(/npm install redis/);
  });
});

describe('RedisStore seeds come from the server clock (issue 13 item 8; failed at 1545de2)', () => {
  it('a key changed, lost and re-created at once never repeats a held generation, whatever the hosts\' clocks say (300 tries each)', async () => {
    const ns = namespace();
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: server.url, namespace: ns, logger });
    const raw = createClient({ url: server.url });
    await raw.connect();
    try {
      let repeats = 0;
      // One host with a true clock, and one whose clock is 20 ms behind (the clock option stands for the host's clock).
      for (const skewMs of [0, -20]) {
        for (let i = 0; i < 300; i++) {
          const key = `k${skewMs}-${i}`;
          const holder = await AsyncGenerationSynchronizer.create(key, { store, logger });
          await holder.markUpdated();
          const held = holder.syncGen as number;
          await raw.del(ns + key); // the data is lost (FLUSHALL, eviction, restart without persistence)
          const recreated = await AsyncGenerationSynchronizer.create(key, { store, logger, clock: () => Date.now() + skewMs });
          if ((recreated.syncGen as number) <= held) repeats++;
        }
      }
      expect(repeats).toBe(0);
    } finally {
      await raw.quit();
      await store.close();
    }
  });
});

describe('closing a RedisStore (issue 13 item 5; failed at 1545de2)', () => {
  it('close() returns promptly while a command is unanswered, and the connection dropping afterwards crashes nothing', async () => {
    const own = await RedisServer.start();
    try {
      const child = startWorker('redis-close.mjs', [own.url, namespace()]);
      workers.push(child);
      await child.next();
      process.kill(own.pid as number, 'SIGSTOP');
      child.send('close-while-stalled');
      const { closedMs } = await child.next<{ closedMs: number }>(15_000);
      // Bounded by the store (its command timeout and then a forced disconnect), not by the server; generous, to stay clear of noise.
      expect(closedMs).toBeLessThan(5000);
      await own.kill('SIGKILL'); // the connection drops now
      await new Promise((resolve) => setTimeout(resolve, 1000));
      child.send('still-alive?');
      expect(await child.next(5000)).toEqual({ alive: true });
      expect(await child.exited).toBe(0);
    } finally {
      own.stop();
    }
  });
});

describe('a Redis connection that silently stops answering (issue 13 item 6; failed at 1545de2)', () => {
  /** A loopback TCP proxy to the server whose open connections can be frozen (they go silent) while new ones work. */
  async function freezingProxy(targetPort: number): Promise<{ port: number; freeze: () => void; close: () => void }> {
    const frozen = new WeakSet<Socket>();
    const sockets = new Set<Socket>();
    const proxy = createServer((inbound) => {
      const outbound = connect(targetPort, '127.0.0.1');
      for (const socket of [inbound, outbound]) {
        sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => sockets.delete(socket));
      }
      inbound.on('data', (data) => frozen.has(inbound) || outbound.write(data));
      outbound.on('data', (data) => frozen.has(inbound) || inbound.write(data));
      inbound.on('close', () => outbound.destroy());
      outbound.on('close', () => inbound.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    return {
      port: (proxy.address() as AddressInfo).port,
      freeze: () => sockets.forEach((socket) => frozen.add(socket)),
      close: () => {
        proxy.close();
        sockets.forEach((socket) => socket.destroy());
      },
    };
  }

  it('after repeated timeouts the store drops the connection and reconnects: checks and updates work again', async () => {
    const proxy = await freezingProxy(Number(new URL(server.url).port));
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: `redis://127.0.0.1:${proxy.port}`, namespace: namespace(), commandTimeoutMs: 200, logger });
    try {
      const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
      const before = sync.syncGen as number;
      proxy.freeze();
      expect(await sync.isExpired()).toBe(true); // the first command times out
      await eventually('an update to reach Redis over a new connection', async () => ((await sync.markUpdated()) ? true : undefined), 15_000);
      expect(sync.syncGen).toBeGreaterThan(before);
      expect(server.cli('GET', `${store.namespace}k`)).toBe(String(sync.syncGen));
      expect(await sync.isExpired()).toBe(false);
      expect(logger.lines.join('\n')).toMatch(/lost the connection[\s\S]*connected to Redis[^\n]* again/);
    } finally {
      await store.close();
      proxy.close();
    }
  });
});

describe('a Redis user without pub/sub channel access (issue 13 item 4; failed at 1545de2)', () => {
  it('updates and clears still succeed and say so; the missing permission is logged once, with the fix', async () => {
    const ns = namespace();
    const user = `limited-${process.pid}`;
    // Redis 7's default for a new user: no channels (acl-pubsub-default resetchannels).
    server.cli('ACL', 'SETUSER', user, 'on', '>secret', `~${ns}*`, 'resetchannels', '+@all');
    const url = new URL(server.url);
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: `redis://${user}:secret@127.0.0.1:${url.port}`, namespace: ns, logger });
    try {
      const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
      const start = sync.syncGen as number;
      expect(await sync.markUpdated()).toBe(true);
      expect(sync.syncGen).toBeGreaterThan(start);
      expect(server.cli('GET', `${ns}k`)).toBe(String(sync.syncGen));
      expect(await sync.clear()).toBe(true);
      expect(await sync.refresh()).toBe(true);
      expect(await sync.markUpdated()).toBe(true);
      await eventually('the permission problem to be logged', () => (logger.lines.some((line) => /channel/i.test(line)) ? true : undefined), 3000);
      const about = logger.lines.filter((line) => /channel/i.test(line));
      expect(about).toHaveLength(1);
      expect(about[0]).toMatch(/ACL SETUSER/);
      expect(about[0]).not.toMatch(/secret/);
    } finally {
      await store.close();
      server.cli('ACL', 'DELUSER', user);
    }
  });
});

describe('a slow event loop is not a Redis outage (issue 13 item 7; failed at 1545de2)', () => {
  it('checks in flight across a 600 ms stall of this process answer from Redis, and nothing is logged', async () => {
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: server.url, namespace: namespace(), commandTimeoutMs: 200, logger });
    try {
      const syncs = await Promise.all(['a', 'b', 'c'].map((key) => AsyncGenerationSynchronizer.create(key, { store, logger })));
      const checks = syncs.map((sync) => sync.isExpired());
      const until = Date.now() + 600;
      while (Date.now() < until) {
        // the application blocks its event loop (a long synchronous task)
      }
      expect(await Promise.all(checks)).toEqual([false, false, false]);
      expect(await syncs[0]?.markUpdated()).toBe(true);
      expect(logger.lines).toEqual([]);
    } finally {
      await store.close();
    }
  });
});

describe('one stalled command does not fail the next updates unsent (issue 13 item 3; failed at 1545de2)', () => {
  it('an update made while an earlier one is unanswered is sent, and succeeds once Redis answers within its timeout', async () => {
    // The server's clock stands still, so that each change is exactly one more and the late one can be counted.
    const frozen = await RedisServer.start({ frozenClockUs: 1_700_000_000_000_000, args: ['--enable-debug-command', 'yes'] });
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: frozen.url, namespace: namespace(), commandTimeoutMs: 200, logger });
    const raw = createClient({ url: frozen.url });
    await raw.connect();
    try {
      const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
      expect(await sync.markUpdated()).toBe(true); // the server has the script now (a late EVALSHA must not meet NOSCRIPT)
      const start = sync.syncGen as number;
      // Redis is busy for 300 ms (DEBUG SLEEP): everything sent meanwhile waits.
      const busy = raw.sendCommand(['DEBUG', 'SLEEP', '0.3']);
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(await sync.markUpdated()).toBe(false); // unanswered within 200 ms
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(await sync.markUpdated()).toBe(true); // sent at ~220 ms, answered at ~300 ms
      await busy;
      // The first update was only late: Redis applied it. Its caller heard false, and nobody lost a change.
      expect(Number(frozen.cli('GET', `${store.namespace}k`))).toBe(start + 2);
    } finally {
      await raw.quit();
      await store.close();
      await frozen.stop();
    }
  });
});

describe('a client shared with an application that blocks on it (issue 13 item 7; failed at 1545de2)', () => {
  it('the outage it causes is logged with the reason and the fix, and ends when the blocking command does', async () => {
    const client = createClient({ url: server.url });
    await client.connect();
    const logger = recordingLogger();
    const store = await RedisStore.connect({ client, namespace: namespace(), commandTimeoutMs: 200, logger });
    const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
    const blocked = client.blPop(`${namespace()}queue`, 1); // the application waits on a queue, on the shared connection
    expect(await sync.isExpired()).toBe(true);
    expect(logger.lines.join('\n')).toMatch(/blocking command on it \(BLPOP.*holds up every command.*client\.duplicate\(\)/);
    expect(await blocked).toBeNull();
    await eventually('the checks to answer again', async () => ((await sync.isExpired()) ? undefined : true));
    await store.close();
    await client.quit();
  });
});

describe('watchers after the main connection comes back (issue 13 item 11; failed at 1545de2)', () => {
  it('a change announced while only the main connection was down reaches watchers when it returns, not at the next poll', async () => {
    const ns = namespace();
    const logger = recordingLogger();
    // Reconnects wait 1.5 s, so the announcement surely arrives (on the subscriber) while the main connection is down.
    const store = await RedisStore.connect({ url: server.url, namespace: ns, watchPollMs: 120_000, socket: { reconnectStrategy: () => 1500 }, logger });
    const sync = await AsyncGenerationSynchronizer.create('k', { store, normalizeCacheKey: false, logger });
    const seen: Array<number | null> = [];
    const stop = store.watch('k', sync.syncGen, (generation) => seen.push(generation));
    await new Promise((resolve) => setTimeout(resolve, 300)); // the subscriber is subscribed

    server.cli('CLIENT', 'KILL', 'TYPE', 'normal'); // the main connection only; the subscriber stays
    const changed = Number(server.cli('INCR', `${ns}k`));
    server.cli('PUBLISH', `${ns}changes`, createHash('sha1').update(`${ns}k`).digest('hex'));
    await eventually('the watcher to hear of the change', () => (seen.includes(changed) ? true : undefined), 15_000);
    stop();
    await store.close();
  });
});

describe('namespaces never share a key (issue 13 item 11; failed at 1545de2)', () => {
  it('"app:" with key "sub:x" and "app:sub:" with key "x" stay apart; "app" is "app:"; an empty namespace is refused', async () => {
    const app = `ns${process.pid}-${namespaceCounter++}`;
    const outer = await RedisStore.connect({ url: server.url, namespace: `${app}:` });
    const inner = await RedisStore.connect({ url: server.url, namespace: `${app}:sub:` });
    const bare = await RedisStore.connect({ url: server.url, namespace: app });
    const a = await AsyncGenerationSynchronizer.create('sub:x', { store: outer, normalizeCacheKey: false });
    const b = await AsyncGenerationSynchronizer.create('x', { store: inner, normalizeCacheKey: false });
    const before = b.syncGen;
    expect(await a.markUpdated()).toBe(true);
    expect(await b.isExpired()).toBe(false);
    expect(b.syncGen).toBe(before);
    expect(await b.clear()).toBe(true);
    expect(await a.isExpired()).toBe(false);
    expect((await outer.entries()).map((entry) => entry.key)).toEqual(['sub:x']);
    expect((await inner.entries()).map((entry) => entry.key)).toEqual(['x']);
    // The same namespace with or without its trailing colon.
    const same = await AsyncGenerationSynchronizer.create('sub:x', { store: bare, normalizeCacheKey: false });
    expect(same.syncGen).toBe(a.syncGen);
    await expect(RedisStore.connect({ url: server.url, namespace: ':' })).rejects.toThrow(/must name something/);
    await expect(RedisStore.connect({ url: server.url, namespace: '' })).rejects.toThrow(InvalidArgumentError);
    for (const store of [outer, inner, bare]) await store.close();
  });
});

describe('foreign data, deployments and URLs the Redis store must refuse clearly (issue 13 items 9 and 11; failed at 1545de2)', () => {
  it.each([
    ['"-0"', ['SET', '-0']],
    ['"007"', ['SET', '007']],
    ['a list', ['RPUSH', 'x']],
  ])('a key holding %s is foreign data, classified the same way everywhere: logged once as such, never a live generation', async (_what, command) => {
    const ns = namespace();
    const store = await RedisStore.connect({ url: server.url, namespace: ns });
    const logger = recordingLogger();
    const sync = await AsyncGenerationSynchronizer.create('k', { store, logger });
    server.cli('DEL', `${ns}k`);
    const [verb, value] = command as [string, string];
    server.cli(verb, `${ns}k`, value);
    expect(await sync.isExpired()).toBe(true);
    expect(await sync.markUpdated()).toBe(false);
    expect(await sync.refresh()).toBe(false);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/own "namespace"/);
    await store.close();
  });

  it('refuses a Redis Cluster node at connect, and Cluster and Sentinel clients, with errors that say what to use', async () => {
    // A node in cluster mode, on a port found free (a random one could be taken by another test's server).
    const dir = tempDir();
    const node = await RedisServer.start({ dir, args: ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf')] });
    try {
      await expect(RedisStore.connect({ url: node.url, namespace: namespace() })).rejects.toMatchObject({
        code: 'ERR_GENSYNC_UNSUPPORTED_SERVER',
        message: expect.stringMatching(/Redis Cluster[\s\S]*standalone Redis/),
      });
    } finally {
      await node.stop();
    }
    const cluster = createCluster({ rootNodes: [{ url: server.url }] });
    await expect(RedisStore.connect({ client: cluster as never })).rejects.toThrow(/Redis Cluster client/);
    const sentinel = createSentinel({ name: 'primary', sentinelRootNodes: [{ host: '127.0.0.1', port: 1 }] });
    await expect(RedisStore.connect({ client: sentinel as never })).rejects.toThrow(/Redis Sentinel client/);
  });

  it('never echoes the password of a URL it refuses', async () => {
    const error = await RedisStore.connect({ url: 'http://admin:hunter2@cache:6379' }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).not.toContain('hunter2');
  });
});

describe('a Redis soak: values and watchers through SIGSTOP, SIGKILL and restarts from older snapshots, FLUSHALL, forged change messages and a stalled event loop', () => {
  /** A few seconds in npm test, the full two minutes in npm run test:full (test/support/effort.ts). */
  const SOAK_MS = effort.soakMs;

  it(`for ${SOAK_MS / 1000} s: no value older than a generation its holder saw, no published change lost, no generation repeated, no crash, no unhandled rejection`, async () => {
    // Snapshots go to a directory: a SIGKILLed server restarts from the last one saved, older than what it held.
    const own = await RedisServer.start({ dir: tempDir('gensync-soak-rdb-') });
    const dir = tempDir();
    const database = join(dir, 'database.json');
    writeFileSync(database, JSON.stringify({ version: 0 }));
    const ns = namespace();
    const roles = ['writer', 'reader', 'reader'];
    const group = roles.map((role) => startWorker('redis-soak-worker.mjs', [own.url, ns, database, role]));
    workers.push(...group);
    try {
      await Promise.all(group.map((worker) => worker.next()));
      const actions = { stopped: 0, killed: 0, restoredOlder: 0, saved: 0, flushed: 0, forged: 0, stalled: 0 };
      let savedSince = false;
      const pauseFor = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
      const until = Date.now() + SOAK_MS;
      while (Date.now() < until) {
        await pauseFor(400 + Math.random() * 600);
        const roll = Math.random();
        if (roll < 0.2) {
          process.kill(own.pid as number, 'SIGSTOP');
          await pauseFor(200 + Math.random() * 600);
          process.kill(own.pid as number, 'SIGCONT');
          actions.stopped++;
        } else if (roll < 0.4) {
          await own.kill('SIGKILL');
          await pauseFor(100 + Math.random() * 300);
          await own.restart(); // from the last snapshot, if one was saved: every change since it is lost
          actions.killed++;
          if (savedSince) actions.restoredOlder++;
        } else if (roll < 0.5) {
          own.cli('SAVE');
          savedSince = true;
          actions.saved++;
        } else if (roll < 0.6) {
          own.cli('FLUSHALL');
          actions.flushed++;
        } else if (roll < 0.75) {
          // Anyone may publish on the channel: a value Redis never held, far above every real one.
          const digest = createHash('sha1').update(`${ns}config`).digest('hex');
          own.cli('PUBLISH', `${ns}changes`, `${digest} ${Number.MAX_SAFE_INTEGER - Math.floor(Math.random() * 1000)}`);
          actions.forged++;
        } else {
          group[1 + Math.floor(Math.random() * 2)]?.send('stall');
          actions.stalled++;
        }
      }
      for (const worker of group) {
        worker.send('stop');
        await worker.next(30_000);
      }
      interface Report {
        final: number;
        target: number;
        observations: Array<[number | null, number]>;
        published: Array<[number, number]>;
        failures: number;
        watchEvents: number;
        unhandled: string[];
      }
      const reports: Report[] = [];
      for (const worker of group) {
        worker.send('converge');
        reports.push(await worker.next<Report>(30_000));
      }
      const published = (reports[0] as Report).published;
      let stale = 0;
      let checked = 0;
      for (const report of reports.slice(1)) {
        for (const [generation, loaded] of report.observations) {
          if (generation === null) continue;
          // Every change published at or below the generation this value was loaded for is in it.
          const newest = published.filter(([, at]) => at <= generation).reduce((max, [version]) => Math.max(max, version), 0);
          checked++;
          if (loaded < newest) stale++;
        }
      }
      expect(reports.map((report) => report.unhandled)).toEqual([[], [], []]);
      expect(stale).toBe(0);
      // Each published change was handed a generation above every earlier one, across restores and flushes.
      const repeatedOrBackwards = published.filter(([, generation], i) => i > 0 && generation <= (published[i - 1] as [number, number])[1]).length;
      expect(repeatedOrBackwards).toBe(0);
      expect(reports.map((report) => report.final)).toEqual(reports.map((report) => report.target));
      expect(published.length).toBeGreaterThan(SOAK_MS / 1000);
      expect(checked).toBeGreaterThan(100);
      expect(group.every((worker) => worker.child.signalCode === null)).toBe(true);
      console.log(
        `redis soak ${SOAK_MS / 1000} s: ${JSON.stringify(actions)}; ${published.length} changes published, ${checked} reads checked, 0 stale, 0 generations repeated, ` +
          `final version ${reports[0]?.target} everywhere, ${reports.reduce((sum, report) => sum + report.watchEvents, 0)} watch events, 0 unhandled rejections`,
      );
    } finally {
      await own.stop();
    }
  }, 300_000);
});

describe('the Redis subscriber lingers (issue 13 item 11; failed at 1545de2)', () => {
  it('waitForChange() in a loop reuses one subscriber connection instead of opening one per call', async () => {
    const store = await RedisStore.connect({ url: server.url, namespace: namespace() });
    try {
      const sync = await AsyncGenerationSynchronizer.create('k', { store });
      const connections = (): number => Number(/total_connections_received:(\d+)/.exec(server.cli('INFO', 'stats'))?.[1]);
      const before = connections();
      for (let i = 0; i < 30; i++) await sync.waitForChange({ timeoutMs: 20 });
      expect(connections() - before).toBeLessThanOrEqual(2);
    } finally {
      await store.close();
    }
  });
});

describe('connecting with TLS options, and connectTimeoutMs only bounding connect() (issue 13 item 10; failed at 1545de2)', () => {
  it('reaches a TLS-only redis-server signed by a private CA through the socket option, with connectTimeoutMs 0', async () => {
    const dir = tempDir();
    const tls = makeTlsFiles(dir);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const node = spawn(
      'redis-server',
      ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--tls-cert-file', tls.cert, '--tls-key-file', tls.key, '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    try {
      const logger = recordingLogger();
      // connectTimeoutMs 0: connect() does not wait at all; the connection (a TLS handshake) is made in the background.
      const store = await RedisStore.connect({
        url: `rediss://127.0.0.1:${port}`,
        namespace: namespace(),
        connectTimeoutMs: 0,
        socket: { ca: readFileSync(tls.ca) },
        logger,
      });
      try {
        const sync = await eventually('a generation over TLS', async () => {
          const candidate = await AsyncGenerationSynchronizer.create('k', { store, logger });
          return candidate.syncGen === null ? undefined : candidate;
        });
        expect(await sync.markUpdated()).toBe(true);
        expect(await sync.isExpired()).toBe(false);
      } finally {
        await store.close();
      }
    } finally {
      node.kill('SIGKILL');
    }
  });
});

describe('a client passed in with its offline queue (issue 13 item 11; failed at 1545de2)', () => {
  it('is warned about once, with the fix; a client made with disableOfflineQueue is not', async () => {
    for (const disableOfflineQueue of [false, true]) {
      const client = createClient({ url: server.url, disableOfflineQueue });
      await client.connect();
      const logger = recordingLogger();
      const store = await RedisStore.connect({ client, namespace: namespace(), logger });
      const warnings = logger.lines.filter((line) => /disableOfflineQueue/.test(line));
      expect(warnings).toHaveLength(disableOfflineQueue ? 0 : 1);
      await store.close();
      await client.quit();
    }
  });
});

describe('change messages stay small (issue 13 item 11; failed at 1545de2)', () => {
  it('200 bumps of a 100 kB key announce themselves in a few kilobytes, and watchers still hear each change', async () => {
    const ns = namespace();
    const store = await RedisStore.connect({ url: server.url, namespace: ns });
    const listener = createClient({ url: server.url });
    await listener.connect();
    let bytes = 0;
    await listener.subscribe(`${ns}changes`, (message) => (bytes += Buffer.byteLength(message)));
    try {
      const key = 'k'.repeat(100_000);
      const watcher = await AsyncGenerationSynchronizer.create(key, { store, normalizeCacheKey: false });
      const seen: Array<number | null> = [];
      const unwatch = watcher.watch((change) => seen.push(change.generation));
      const bumper = await AsyncGenerationSynchronizer.create(key, { store, normalizeCacheKey: false });
      for (let i = 0; i < 200; i++) await bumper.markUpdated();
      await eventually('the watcher to hear the last bump', () => (seen.at(-1) === bumper.syncGen ? true : undefined));
      unwatch();
      expect(bytes).toBeLessThan(200 * 100);
    } finally {
      await listener.quit();
      await store.close();
    }
  });
});

describe('clients the Redis store does not support are refused clearly (issue 13 item 11; failed at 1545de2)', () => {
  it('an ioredis Cluster client and a node-redis pool get an error that says what to pass instead; an ioredis client is used (issue 16)', async () => {
    const cluster = new IORedis.Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true });
    await expect(RedisStore.connect({ client: cluster as never })).rejects.toThrow(/ioredis Cluster client/);
    cluster.disconnect();
    const ioredis = new IORedis(server.url, { enableOfflineQueue: false });
    const logger = recordingLogger();
    const given = await RedisStore.connect({ client: ioredis, namespace: namespace(), logger });
    const sync = await AsyncGenerationSynchronizer.create('k', { store: given });
    expect(await sync.markUpdated()).toBe(true);
    expect(await sync.isExpired()).toBe(false);
    await given.close();
    expect(ioredis.status).toBe('ready'); // a client passed in stays open
    expect(logger.lines).toEqual([]); // no offline queue: no warning
    await ioredis.quit();
    const queueing = new IORedis(server.url);
    const warned = recordingLogger();
    await (await RedisStore.connect({ client: queueing, namespace: namespace(), logger: warned })).close();
    expect(warned.lines.join('\n')).toMatch(/enableOfflineQueue: false/);
    await queueing.quit();
    const pool = createClientPool({ url: server.url });
    await expect(RedisStore.connect({ client: pool as never })).rejects.toThrow(/pool[\s\S]*createClient\(\)/);
  });
});

describe('the change subscription failing on its own (issue 13 item 11; failed at 1545de2)', () => {
  it('is logged once when lost and once when back, and watchers hear changes again', async () => {
    const logger = recordingLogger();
    const store = await RedisStore.connect({ url: server.url, namespace: namespace(), watchPollMs: 60_000, logger });
    try {
      const watcher = await AsyncGenerationSynchronizer.create('k', { store, logger });
      const bumper = await AsyncGenerationSynchronizer.create('k', { store, logger });
      const seen: Array<number | null> = [];
      const unwatch = watcher.watch((change) => seen.push(change.generation));
      await eventually('the subscription', () => (Number(server.cli('PUBSUB', 'NUMSUB', `${store.namespace}changes`).split('\n')[1]) === 1 ? true : undefined));
      server.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
      await eventually('the loss and the return to be logged', () => (logger.lines.some((line) => /subscription[^\n]*again/i.test(line)) ? true : undefined));
      expect(logger.lines.filter((line) => /change subscription/i.test(line))).toHaveLength(2);
      await bumper.markUpdated();
      // The poll is a minute away: only the restored subscription can deliver this.
      await eventually('the watcher to hear the bump', () => (seen.at(-1) === bumper.syncGen ? true : undefined), 10_000);
      unwatch();
    } finally {
      await store.close();
    }
  });
});

describe('a Redis watch in one round trip (issue 16)', () => {
  it('hears each change from its message without reading the key, and an older message never takes it back', async () => {
    const ns = namespace();
    // The watcher's own client, to count the GETs it sends (Redis' commandstats would count the scripts' GETs too).
    const client = createClient({ url: server.url, disableOfflineQueue: true });
    let watcherGets = 0;
    const send = client.sendCommand.bind(client);
    client.sendCommand = ((args: string[], ...rest: unknown[]) => {
      if (args[0] === 'GET') watcherGets++;
      return (send as (...all: unknown[]) => unknown)(args, ...rest);
    }) as typeof client.sendCommand;
    await client.connect();
    const watcherStore = await RedisStore.connect({ client, namespace: ns });
    const bumperStore = await RedisStore.connect({ url: server.url, namespace: ns });
    try {
      const watcher = await AsyncGenerationSynchronizer.create('k', { store: watcherStore });
      const bumper = await AsyncGenerationSynchronizer.create('k', { store: bumperStore });
      const seen: Array<number | null> = [];
      const unwatch = watcher.watch(({ generation }) => seen.push(generation));
      const heard = (generation: number | null): Promise<true> =>
        eventually(`the watcher to hear ${generation}`, () => (seen.at(-1) === generation ? true : undefined));
      await bumper.markUpdated();
      await heard(bumper.syncGen); // subscribed and delivering

      const before = watcherGets;
      for (let i = 0; i < 50; i++) {
        await bumper.markUpdated();
        await heard(bumper.syncGen);
      }
      await bumper.clear();
      await heard(null);
      await bumper.markUpdated();
      await heard(bumper.syncGen);
      // Before, every message made the watcher GET the key (52 GETs here); now only its 5 s poll may read.
      expect(watcherGets - before).toBeLessThanOrEqual(2);

      // A message older than what the watcher has (as a re-read can overtake one) is not delivered.
      const current = bumper.syncGen as number;
      const count = seen.length;
      const digest = createHash('sha1').update(`${ns}k`).digest('hex');
      server.cli('PUBLISH', `${ns}changes`, `${digest} ${current - 5}`);
      server.cli('PUBLISH', `${ns}changes`, `${digest} ${-(current - 3) - 1}`); // an older clear's tombstone
      await bumper.markUpdated();
      await heard(bumper.syncGen);
      expect(seen.slice(count)).toEqual([bumper.syncGen]);
      unwatch();
    } finally {
      await Promise.all([watcherStore.close(), bumperStore.close()]);
      await client.quit();
    }
  });
});

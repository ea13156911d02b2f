// The examples are real programs: the node:cluster HTTP service, and the PM2
// cluster-mode app driven by the CLI under a real PM2 with its own PM2_HOME.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { eventually, ROOT, tempDir } from './helpers';
import { sharedRedisUrl } from './redis-server';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

interface Reply {
  pid: number;
  generation: number;
  settings: { version: number; theme: string };
}

function call(port: number, method: string, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    // A new connection per request, so that the cluster spreads them over its workers.
    const req = request({ host: '127.0.0.1', port, path: '/settings', method, agent: false }, (res) => {
      let data = '';
      res.on('data', (chunk: Buffer) => (data += chunk.toString()));
      res.on('end', () => resolve(JSON.parse(data) as Reply));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('examples/cluster/server.mjs', () => {
  it('serves cached settings from every worker, and a PUT to one is seen by all on their next request', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [join(ROOT, 'examples', 'cluster', 'server.mjs')], {
      env: { ...process.env, PORT: String(port), WORKERS: '3', GENERATION_SYNC_DIR: tempDir() },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await eventually('the service to listen', () => new Promise<true | undefined>((resolve) => {
        child.stdout?.once('data', (data: Buffer) => resolve(data.toString().includes('listening') ? true : undefined));
      }));
      const before = await eventually('replies from every worker', async () => {
        const replies = await Promise.all(Array.from({ length: 12 }, () => call(port, 'GET')));
        return new Set(replies.map((reply) => reply.pid)).size === 3 ? replies : undefined;
      });
      expect(before.every((reply) => reply.settings.version === 1)).toBe(true);

      const put = await call(port, 'PUT', JSON.stringify({ theme: 'dark' }));
      expect(put.settings).toEqual({ version: 2, theme: 'dark' });
      // No waiting: the very next request to any worker sees the change.
      const after = await Promise.all(Array.from({ length: 30 }, () => call(port, 'GET')));
      expect(new Set(after.map((reply) => reply.pid)).size).toBe(3);
      for (const reply of after) {
        expect(reply.settings).toEqual({ version: 2, theme: 'dark' });
        expect(reply.generation).toBe(put.generation);
      }
    } finally {
      child.kill('SIGTERM');
    }
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(0);
  });
});

describe('examples/pm2 under real PM2', () => {
  it('two cluster-mode instances reload when `generation-sync bump` runs, and no daemon is left behind', async () => {
    const pm2Home = tempDir('gensync-pm2home-');
    const env = {
      ...process.env,
      PM2_HOME: pm2Home,
      // Keep PM2 quiet and local: no banner, no update checks.
      PM2_DISCRETE_MODE: 'true',
      PM2_DISABLE_VERSION_CHECK: 'true',
      GENERATION_SYNC_DIR: tempDir(),
      STATUS_DIR: tempDir(),
      INSTANCES: '2',
    };
    const statusDir = env.STATUS_DIR;
    const pm2 = (...args: string[]): string => {
      const result = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'pm2', 'bin', 'pm2'), ...args], { env, encoding: 'utf8', timeout: 60_000 });
      if (result.status !== 0) throw new Error(`pm2 ${args.join(' ')} failed: ${result.stdout}${result.stderr}`);
      return result.stdout;
    };
    const statuses = (): Array<{ instance: string; pid: number; generation: number; reloads: number }> =>
      readdirSync(statusDir).map((name) => JSON.parse(readFileSync(join(statusDir, name), 'utf8')) as { instance: string; pid: number; generation: number; reloads: number });

    pm2('start', join(ROOT, 'examples', 'pm2', 'ecosystem.config.cjs'));
    let daemonPid: number | undefined;
    let appPids: number[] = [];
    try {
      daemonPid = Number(readFileSync(join(pm2Home, 'pm2.pid'), 'utf8'));
      const started = await eventually('both instances to report', () => {
        const all = existsSync(statusDir) ? statuses() : [];
        return all.length === 2 ? all : undefined;
      });
      appPids = started.map((status) => status.pid);
      expect(new Set(started.map((status) => status.generation)).size).toBe(1);
      const list = JSON.parse(pm2('jlist')) as Array<{ pm2_env: { exec_mode: string; status: string } }>;
      expect(list.map((app) => [app.pm2_env.exec_mode, app.pm2_env.status])).toEqual([
        ['cluster_mode', 'online'],
        ['cluster_mode', 'online'],
      ]);

      const bump = spawnSync(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'bump', 'settings', '--json'], { env, encoding: 'utf8' });
      expect(bump.status, bump.stderr).toBe(0);
      const { generation } = JSON.parse(bump.stdout) as { generation: number };
      const reloaded = await eventually('every instance to reload', () => {
        const all = statuses();
        return all.every((status) => status.generation === generation) ? all : undefined;
      });
      for (const status of reloaded) expect(status.reloads).toBe(2);
    } finally {
      pm2('kill');
    }
    // The daemon and its instances are gone.
    await eventually('PM2 and its instances to exit', () => {
      const alive = [daemonPid, ...appPids].filter((pid): pid is number => {
        if (pid === undefined || Number.isNaN(pid)) return false;
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      });
      return alive.length === 0 ? true : undefined;
    });
  });
});

describe('examples/pm2-relay: PM2 on three simulated hosts with one Redis (issue 17)', () => {
  it('a bump on one host reloads every instance of every host; after `pm2 reload` on another, a bump there does too', async () => {
    const statusDir = tempDir();
    const namespace = `pm2-relay-${process.pid}`;
    const hosts = ['a', 'b', 'c'].map((name) => {
      const home = tempDir(`gensync-pm2home-${name}-`);
      const env = {
        ...process.env,
        PM2_HOME: home,
        PM2_DISCRETE_MODE: 'true',
        PM2_DISABLE_VERSION_CHECK: 'true',
        GENERATION_SYNC_DIR: tempDir(`gensync-host-${name}-`),
        REDIS_URL: sharedRedisUrl(),
        REDIS_NAMESPACE: namespace,
        HOST_NAME: name,
        STATUS_DIR: statusDir,
        INSTANCES: '2',
      };
      const pm2 = (...args: string[]): string => {
        const result = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'pm2', 'bin', 'pm2'), ...args], { env, encoding: 'utf8', timeout: 60_000 });
        if (result.status !== 0) throw new Error(`pm2 ${args.join(' ')} failed: ${result.stdout}${result.stderr}`);
        return result.stdout;
      };
      return { name, env, pm2, home };
    });
    type Status = { host: string; instance: string; pid: number; generation: number; reloads: number; relaying: boolean };
    const statuses = (): Status[] =>
      readdirSync(statusDir).flatMap((name) => {
        try {
          return [JSON.parse(readFileSync(join(statusDir, name), 'utf8')) as Status];
        } catch {
          return []; // being written
        }
      });
    /** Bump from a short-lived process on `host` (it opens the host's file; the host's relay forwards the bump). */
    const bumpOn = (host: (typeof hosts)[number]): void => {
      const script = `
        const { GenerationSynchronizer, RelayStore } = require('generation-sync');
        const store = RelayStore.open(require('node:path').join(process.env.GENERATION_SYNC_DIR, 'relayed.shm'), { redis: { url: process.env.REDIS_URL, namespace: process.env.REDIS_NAMESPACE } });
        if (!new GenerationSynchronizer('settings', { store }).markUpdated()) process.exit(2);
        store.close();
      `;
      const result = spawnSync(process.execPath, ['-e', script], { cwd: ROOT, env: host.env, encoding: 'utf8', timeout: 30_000 });
      expect(result.status, result.stderr).toBe(0);
    };
    /** Every instance of every host reports the same generation, other than `not`; returns it. */
    const agreed = (not: number | undefined): Promise<number> =>
      eventually(
        'every instance of every host to agree on a new generation',
        () => {
          const all = statuses();
          const generations = new Set(all.map((status) => status.generation));
          if (all.length !== 6 || generations.size !== 1) return undefined;
          const [generation] = generations;
          return generation !== not ? generation : undefined;
        },
        30_000,
      );

    try {
      for (const host of hosts) host.pm2('start', join(ROOT, 'examples', 'pm2-relay', 'ecosystem.config.cjs'));
      const first = await agreed(undefined);
      // One relay per host.
      await eventually('one relay on each host', () => {
        const relays = statuses().filter((status) => status.relaying);
        return relays.length === 3 && new Set(relays.map((status) => status.host)).size === 3 ? true : undefined;
      });
      bumpOn(hosts[0]!);
      const second = await agreed(first);
      expect(second).toBeGreaterThan(first);
      // Host B's instances restart one by one; the relay's lock passes between them.
      hosts[1]!.pm2('reload', 'gensync-relay-example');
      const restarted = await eventually('host b to report from new processes', () => {
        const b = statuses().filter((status) => status.host === 'b');
        return b.length === 2 && b.every((status) => status.reloads === 1) ? b : undefined;
      });
      expect(restarted.length).toBe(2);
      bumpOn(hosts[1]!);
      const third = await agreed(second);
      expect(third).toBeGreaterThan(second);
      await eventually('one relay on host b again', () => (statuses().filter((status) => status.host === 'b' && status.relaying).length === 1 ? true : undefined));
    } finally {
      for (const host of hosts) {
        try {
          host.pm2('kill');
        } catch {
          // already gone
        }
      }
    }
  });
});

describe('examples/web: Express middleware and a Fastify plugin on SynchronizedValue (issue 16)', () => {
  function json(port: number, method: string, body?: unknown): Promise<{ pid: number; settings: { version: number; theme: string } }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const headers = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
      const req = request({ host: '127.0.0.1', port, path: '/settings', method, agent: false, headers }, (res) => {
        let data = '';
        res.on('data', (chunk: Buffer) => (data += chunk.toString()));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(data)) : reject(new Error(`${res.statusCode}: ${data}`))));
      });
      req.on('error', reject);
      req.end(payload);
    });
  }

  it('an Express process and a Fastify process share the settings: a PUT to either is seen by the other on its next request', async () => {
    const dir = tempDir();
    const settingsFile = join(dir, 'settings.json');
    writeFileSync(settingsFile, JSON.stringify({ version: 1, theme: 'light' }));
    const servers = await Promise.all(
      ['express', 'fastify', 'express'].map(async (name) => {
        const port = await freePort();
        const child = spawn(process.execPath, [join(ROOT, 'examples', 'web', `${name}.mjs`)], {
          env: { ...process.env, PORT: String(port), SETTINGS_FILE: settingsFile, GENERATION_SYNC_DIR: join(dir, 'store') },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        await new Promise<void>((resolve, reject) => {
          child.stdout?.on('data', (data: Buffer) => data.toString().includes('listening') && resolve());
          child.once('exit', (code) => reject(new Error(`${name} exited with ${code}`)));
        });
        return { name, port, child };
      }),
    );
    try {
      for (const { port } of servers) expect((await json(port, 'GET')).settings).toEqual({ version: 1, theme: 'light' });
      const [express, fastify, other] = servers as [(typeof servers)[0], (typeof servers)[0], (typeof servers)[0]];
      expect((await json(express.port, 'PUT', { theme: 'dark' })).settings).toEqual({ version: 2, theme: 'dark' });
      for (const { port } of servers) expect((await json(port, 'GET')).settings).toEqual({ version: 2, theme: 'dark' });
      expect((await json(fastify.port, 'PUT', { theme: 'solarized' })).settings).toEqual({ version: 3, theme: 'solarized' });
      expect((await json(other.port, 'GET')).settings).toEqual({ version: 3, theme: 'solarized' });
      expect((await json(express.port, 'GET')).settings).toEqual({ version: 3, theme: 'solarized' });

      // Concurrent writes, as a busy site makes them: each PUT to any process is answered, none is lost, and the file
      // stays valid JSON (before issue 30, 8 concurrent PUTs gave 500s, lost acknowledged changes and broke the file).
      const rounds = 3;
      for (let round = 0; round < rounds; round++) {
        const puts = Array.from({ length: 8 }, (_, i) => json(servers[i % servers.length]!.port, 'PUT', { [`r${round}k${i}`]: i }));
        const answers = await Promise.allSettled(puts);
        expect(answers.filter((answer) => answer.status === 'rejected').map((answer) => String((answer as PromiseRejectedResult).reason))).toEqual([]);
      }
      const stored = JSON.parse(readFileSync(settingsFile, 'utf8')) as Record<string, unknown>;
      expect(stored.version).toBe(3 + rounds * 8);
      for (let round = 0; round < rounds; round++) for (let i = 0; i < 8; i++) expect(stored[`r${round}k${i}`]).toBe(i);
      for (const { port } of servers) expect((await json(port, 'GET')).settings).toEqual(stored);
    } finally {
      for (const { child } of servers) child.kill('SIGTERM');
    }
    for (const { child } of servers) if (child.exitCode === null) await new Promise((resolve) => child.once('exit', resolve));
  });
});

describe('examples/lru-cache: an lru-cache dropped by a generation change in any process (issue 16)', () => {
  it('the demo: another process invalidates one namespace; only that one reloads', () => {
    const result = spawnSync(process.execPath, [join(ROOT, 'examples', 'lru-cache', 'demo.mjs')], {
      encoding: 'utf8',
      env: { ...process.env, GENERATION_SYNC_DIR: tempDir() },
    });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/before: 2 loads for 3 lookups/);
    expect(result.stdout).toMatch(/after another process invalidated "catalog": 3 loads/);
  });

  it('a change made while a value loads is never cached as current; namespaces are independent', async () => {
    const { GenerationCache } = (await import(join(ROOT, 'examples', 'lru-cache', 'generation-cache.mjs'))) as {
      GenerationCache: new (options: Record<string, unknown>) => {
        get(namespace: string, key: string, load: () => Promise<unknown>): Promise<unknown>;
        invalidate(namespace: string): boolean;
      };
    };
    const { SharedMemoryStore } = await import('generation-sync');
    const store = SharedMemoryStore.open(join(tempDir(), 'g.shm'));
    const here = new GenerationCache({ max: 100, store });
    const elsewhere = new GenerationCache({ max: 100, store }); // another process's cache, on the same store
    let data = 'v1';
    // The load reads v1, then another process changes the data and invalidates, then the load returns.
    const first = await here.get('catalog', 'p', async () => {
      const read = data;
      data = 'v2';
      elsewhere.invalidate('catalog');
      return read;
    });
    expect(first).toBe('v1');
    expect(await here.get('catalog', 'p', async () => data)).toBe('v2'); // not the stale v1
    expect(await here.get('catalog', 'p', async () => 'not loaded again')).toBe('v2'); // now a hit
    expect(await here.get('users', 'u', async () => 'u1')).toBe('u1');
    elsewhere.invalidate('catalog');
    expect(await here.get('users', 'u', async () => 'reloaded')).toBe('u1'); // another namespace: still cached
    expect(await here.get('catalog', 'p', async () => 'v3')).toBe('v3');
    store.close();
  });
});

describe('the packages the examples import run on every Node version the package supports (issue 30)', () => {
  it('each declares support for the oldest Node this package supports, or declares no engines', () => {
    const require = createRequire(join(ROOT, 'package.json'));
    const semver = require('semver') as { minVersion(range: string): { version: string } | null; satisfies(version: string, range: string): boolean };
    const { engines } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
    const oldest = semver.minVersion(engines.node)?.version as string;
    const imported = new Set<string>();
    for (const file of readdirSync(join(ROOT, 'examples'), { recursive: true }) as string[]) {
      if (!/\.(m?js|cjs)$/.test(file)) continue;
      for (const match of readFileSync(join(ROOT, 'examples', file), 'utf8').matchAll(/(?:from |import\(|require\()'([^'./][^']*)'/g)) {
        const name = match[1]!.startsWith('@') ? match[1]!.split('/').slice(0, 2).join('/') : match[1]!.split('/')[0]!;
        if (!name.startsWith('node:') && name !== 'generation-sync') imported.add(name);
      }
    }
    expect([...imported]).toContain('keyv');
    const refused = [...imported].flatMap((name) => {
      const manifest = JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string; engines?: { node?: string } };
      const range = manifest.engines?.node;
      return range === undefined || semver.satisfies(oldest, range) ? [] : [`${name}@${manifest.version} needs Node ${range}`];
    });
    expect(refused, `the package supports Node ${engines.node}`).toEqual([]);
  });
});

describe('examples/keyv: Keyv with whole-namespace invalidation across processes (issue 16)', () => {
  it('the demo: another process invalidates the namespace; the next lookup loads again', () => {
    const result = spawnSync(process.execPath, [join(ROOT, 'examples', 'keyv', 'demo.mjs')], { encoding: 'utf8', env: { ...process.env, GENERATION_SYNC_DIR: tempDir() } });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/before: 1 render for 2 lookups/);
    expect(result.stdout).toMatch(/after another process invalidated "pages": 2 renders/);
  });

  it('invalidate() in another process empties the namespace at once; a value loaded across a change is never served as current', async () => {
    const { GenerationKeyv } = (await import(join(ROOT, 'examples', 'keyv', 'generation-keyv.mjs'))) as {
      GenerationKeyv: new (name: string, options: Record<string, unknown>) => {
        get(key: string): Promise<unknown>;
        set(key: string, value: unknown): Promise<unknown>;
        getOrLoad(key: string, load: () => Promise<unknown>): Promise<unknown>;
        invalidate(): boolean;
      };
    };
    const { SharedMemoryStore } = await import('generation-sync');
    const path = join(tempDir(), 'g.shm');
    const syncStore = SharedMemoryStore.open(path);
    const shared = new Map(); // one Keyv backend for every "process", as a shared Redis or SQLite would be
    const pages = new GenerationKeyv('pages', { store: shared, syncStore });
    await pages.set('/a', 'page a');
    expect(await pages.get('/a')).toBe('page a');

    // Another process (a real one) invalidates the namespace through the same generation store.
    const script = `
      const { GenerationSynchronizer, SharedMemoryStore } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const store = SharedMemoryStore.open(${JSON.stringify(path)});
      if (!new GenerationSynchronizer(['keyv', 'pages'], { store }).markUpdated()) process.exit(3);
    `;
    const invalidateElsewhere = (): void => expect(spawnSync(process.execPath, ['-e', script]).status).toBe(0);
    invalidateElsewhere();
    expect(await pages.get('/a')).toBeUndefined();

    // A load during which the namespace is invalidated is filed under the dead generation.
    let version = 1;
    const raced = await pages.getOrLoad('/b', async () => {
      const read = version;
      version = 2;
      invalidateElsewhere();
      return `page b v${read}`;
    });
    expect(raced).toBe('page b v1');
    expect(await pages.getOrLoad('/b', async () => `page b v${version}`)).toBe('page b v2');
    expect(await pages.getOrLoad('/b', async () => 'not loaded again')).toBe('page b v2');
    syncStore.close();
  });
});

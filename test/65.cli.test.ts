// The generation-sync CLI against every store: each command, --json output
// parsed and checked, and bad usage exiting 2 with a helpful message.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';

import { AsyncGenerationSynchronizer, FileStore, RedisStore, SharedMemoryStore, type AsyncStore, type Store } from 'generation-sync';

import { ROOT, tempDir } from './helpers';
import { sharedRedisUrl } from './redis-server';

const CLI = join(ROOT, 'dist', 'cli.js');

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Result {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function json<T = Record<string, unknown>>(args: string[]): T {
  const result = cli([...args, '--json']);
  expect(result.status, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as T;
}

interface Target {
  readonly name: string;
  /** CLI arguments that select this store. */
  args(dir: string): string[];
  /** The same store, opened by the library. */
  open(dir: string): Promise<Store | AsyncStore>;
}

const TARGETS: Target[] = [
  {
    name: 'shm',
    args: (dir) => ['--store', 'shm', '--path', join(dir, 'g.shm')],
    open: async (dir) => SharedMemoryStore.open(join(dir, 'g.shm')),
  },
  {
    name: 'file',
    args: (dir) => ['--store', 'file', '--path', join(dir, 'g.json')],
    open: async (dir) => FileStore.open(join(dir, 'g.json')),
  },
  {
    name: 'redis',
    args: (dir) => ['--redis-url', sharedRedisUrl(), '--namespace', `${basename(dir)}:`],
    open: (dir) => RedisStore.connect({ url: sharedRedisUrl(), namespace: `${basename(dir)}:` }),
  },
];

const stores: Array<Store | AsyncStore> = [];
afterEach(async () => {
  for (const store of stores.splice(0)) await store.close();
});

describe.each(TARGETS)('the CLI on the $name store', (target) => {
  it('bump, get, list and clear hit the same key the library uses', async () => {
    const dir = tempDir();
    const args = target.args(dir);
    const store = await target.open(dir);
    stores.push(store);
    const app = await AsyncGenerationSynchronizer.create('settings', { store, keyPrefix: 'example.com' });

    const bumped = json<{ key: string; generation: number; previous: number }>(['bump', 'settings', '--prefix', 'example.com', ...args]);
    expect(bumped.key).toBe('example.com:settings');
    expect(bumped.previous).toBe(app.syncGen);
    // One more on the local stores; on Redis, the larger of one more and the server's clock in microseconds.
    if (target.name === 'redis') expect(bumped.generation).toBeGreaterThan(app.syncGen as number);
    else expect(bumped.generation).toBe((app.syncGen as number) + 1);
    expect(await app.isExpired()).toBe(true);
    await app.refresh();
    expect(app.syncGen).toBe(bumped.generation);

    const named = expect.objectContaining({ kind: target.name }) as unknown; // every command names the store it used
    expect(json(['get', 'settings', '--prefix', 'example.com', ...args])).toEqual({ key: 'example.com:settings', generation: bumped.generation, store: named });
    expect(cli(['get', 'settings', '--prefix', 'example.com', ...args]).stdout.trim()).toBe(String(bumped.generation));

    json(['bump', 'a b', '--raw', '--create', ...args]);
    const { store: listedFrom, keys: listed } = json<{ store: unknown; keys: Array<Record<string, unknown> & { key: string; generation: number | null }> }>(['list', ...args]);
    expect(listedFrom).toEqual(named);
    expect(listed.map(({ key }) => key).sort()).toEqual(['a b', 'example.com:settings']);
    expect(listed.find(({ key }) => key === 'example.com:settings')?.generation).toBe(bumped.generation);
    // Only the times the store records: every change (file), creation and clearing (shm), none (Redis).
    const times = { file: ['createdAt', 'updatedAt'], shm: ['createdAt', 'createdOrClearedAt'], redis: [] }[target.name] as string[];
    for (const entry of listed) expect(Object.keys(entry).sort()).toEqual(['generation', 'key', 'keyTruncated', ...times].sort());
    const header = { shm: /KEY\s+GENERATION\s+CREATED OR CLEARED\n/, file: /KEY\s+GENERATION\s+UPDATED\n/, redis: /KEY\s+GENERATION\n/ }[target.name];
    expect(cli(['list', ...args]).stdout).toMatch(new RegExp(`^2 keys in the ${target.name} store .*:\n${(header as RegExp).source}`));

    expect(json(['clear', 'settings', '--prefix', 'example.com', ...args])).toEqual({
      key: 'example.com:settings',
      cleared: true,
      previous: bumped.generation,
      store: named,
    });
    expect(await app.isExpired()).toBe(true);
    const absent = cli(['get', 'settings', '--prefix', 'example.com', '--json', ...args]);
    expect(absent.status).toBe(1);
    expect(JSON.parse(absent.stdout)).toEqual({ key: 'example.com:settings', generation: null, store: named });
    expect(json(['clear', 'settings', '--prefix', 'example.com', '--create', ...args])).toMatchObject({ cleared: false });
  });

  it('watch prints each change until interrupted, and exits 0', async () => {
    const dir = tempDir();
    const args = target.args(dir);
    json(['bump', 'watched', '--create', ...args]);
    const child = spawn(process.execPath, [CLI, 'watch', 'watched', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const next = async (): Promise<Record<string, unknown>> => JSON.parse((await lines.next()).value as string) as Record<string, unknown>;
    try {
      const ready = await next();
      expect(ready).toMatchObject({ watching: 'watched' });
      const bumped = json<{ generation: number }>(['bump', 'watched', ...args]);
      expect(await next()).toMatchObject({ key: 'watched', generation: bumped.generation, previous: ready.generation });
      json(['clear', 'watched', ...args]);
      expect(await next()).toMatchObject({ key: 'watched', generation: null, previous: bumped.generation });
    } finally {
      child.kill('SIGINT');
    }
    const code = await new Promise((resolve) => child.once('exit', resolve));
    expect(code).toBe(0);
  });

  it('doctor reports the store and the environment', () => {
    const dir = tempDir();
    json(['bump', 'k', '--create', ...target.args(dir)]);
    const report = json<{ store: Record<string, unknown>; addon: { loaded: boolean }; problems: unknown[]; defaultStore: { kind: string } }>([
      'doctor',
      ...target.args(dir),
    ]);
    expect(report.addon.loaded).toBe(true);
    expect(report.defaultStore.kind).toMatch(/^(shm|file)$/);
    expect(report.store).toMatchObject({ kind: target.name, keys: 1 });
    if (target.name !== 'redis') {
      expect(report.store).toMatchObject({ mode: '0600', filesystem: expect.any(String) as unknown, owner: expect.stringContaining('this user') as unknown });
    }
    if (target.name === 'shm') expect(report.store).toMatchObject({ formatVersion: 2, capacity: 4096, watch: 'futex' });
  });
});

describe('the CLI, misused', () => {
  const usage: Array<[string, string[], RegExp]> = [
    ['no command', [], /a command is needed/],
    ['an unknown command', ['frobnicate'], /unknown command "frobnicate"/],
    ['get without a key', ['get'], /get takes exactly one KEY/],
    ['two keys', ['bump', 'a', 'b'], /quote a key with spaces/],
    ['an unknown option', ['list', '--bogus'], /Unknown option '--bogus'/],
    ['a bad store kind', ['list', '--store', 'memcached'], /--store must be one of shm, file, redis/],
    ['a path for Redis', ['list', '--redis-url', 'redis://127.0.0.1:1', '--path', '/tmp/x'], /the Redis store has none/],
    ['list with arguments', ['list', 'extra'], /list takes no arguments/],
    ['an option without its value', ['list', '--store'], /argument missing/],
  ];
  it.each(usage)('%s exits 2 with a message on stderr', (_name, args, message) => {
    const result = cli(args, { GENERATION_SYNC_DIR: tempDir() });
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(message);
    expect(result.stderr).toMatch(/Run "generation-sync --help" for usage/);
  });

  it('--help and --version exit 0', () => {
    const help = cli(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: generation-sync <command> \[options\]/);
    const version = cli(['--version']);
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toBe((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version);
  });

  it('an unreachable store exits 1 and says so', () => {
    const result = cli(['get', 'k', '--redis-url', 'redis://127.0.0.1:1']);
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/did not answer\. Is it running and reachable\?/);
  });

  it('a path that is not a store exits 1; a missing one asks for --store', () => {
    const dir = tempDir();
    const png = join(dir, 'x.png');
    spawnSync('sh', ['-c', `printf '\\211PNG' > ${png}`]);
    expect(cli(['list', '--path', png]).stderr).toMatch(/is not a generation-sync store/);
    // A command that only reads names where it looked and creates nothing; bump without --store asks which kind to create.
    for (const command of [['list'], ['get', 'k'], ['watch', 'k']]) {
      const missing = cli([...command, '--path', join(dir, 'none.shm')]);
      expect(missing.status).toBe(1);
      expect(missing.stderr).toMatch(/there is no store at .*none\.shm.*Nothing was created/);
      expect(missing.stderr).not.toMatch(/create there|--create/);
    }
    const creating = cli(['bump', 'k', '--create', '--path', join(dir, 'none.shm')]);
    expect(creating.status).toBe(2);
    expect(creating.stderr).toMatch(/--store shm or --store file/);
    expect(existsSync(join(dir, 'none.shm'))).toBe(false);
  });
});

describe('devices, FIFOs and huge files (issue 12 item 7; failed at 1545de2)', () => {
  /** The CLI bounded in time and memory: a hang or a runaway read ends as a failure, not a stuck test. */
  function bounded(args: string[]): { status: number | null; signal: NodeJS.Signals | null; stderr: string } {
    const result = spawnSync(process.execPath, ['--max-old-space-size=256', CLI, ...args], { encoding: 'utf8', timeout: 10_000 });
    return { status: result.status, signal: result.signal, stderr: result.stderr };
  }

  it('the CLI refuses /dev/zero and a FIFO given with --path, at once and without reading them', () => {
    const fifo = join(tempDir(), 'fifo');
    execFileSync('mkfifo', [fifo]);
    for (const path of ['/dev/zero', fifo]) {
      const result = bounded(['list', '--path', path]);
      expect(result.signal, path).toBeNull();
      expect(result.status, path).toBe(1);
      expect(result.stderr, path).toMatch(/not a regular file/);
    }
  });

  it('the file store refuses a file larger than a store can be with a typed error, without reading it', () => {
    const path = join(tempDir(), 'g.json');
    writeFileSync(path, '{ "format": "generation-sync-file-store"');
    truncateSync(path, 2 ** 31); // 2 GiB, sparse: reading it would take the memory of a small machine
    const started = Date.now();
    const error = (() => {
      try {
        FileStore.open(path);
      } catch (caught) {
        return caught;
      }
      return undefined;
    })();
    expect(error).toMatchObject({ code: 'ERR_GENSYNC_CORRUPT_FILE', message: expect.stringMatching(/larger than/) });
    expect(Date.now() - started).toBeLessThan(10_000); // a liveness bound: reading 2 GiB would not end this soon here
  });

  it('importing the library installs no signal handlers (proper-lockfile is loaded only when a file store locks)', () => {
    const probe = `
      const before = ['SIGINT', 'SIGTERM', 'SIGHUP'].map((signal) => process.listenerCount(signal));
      const gensync = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const after = ['SIGINT', 'SIGTERM', 'SIGHUP'].map((signal) => process.listenerCount(signal));
      console.log(JSON.stringify({ before, after }));
    `;
    const { before, after } = JSON.parse(execFileSync(process.execPath, ['-e', probe], { encoding: 'utf8' })) as { before: number[]; after: number[] };
    expect(after).toEqual(before);
  });
});

describe('the CLI as an operator meets it: it never reports success after changing the wrong thing (issue 16)', () => {
  it.each(['shm', 'file'])('list, get, watch and doctor on a %s store that does not exist create nothing, and say where they looked', (kind) => {
    const parent = tempDir();
    const dir = join(parent, 'misspelled');
    const env = { GENERATION_SYNC_DIR: dir, GENERATION_SYNC_STORE: kind };
    for (const args of [['list'], ['get', 'settings'], ['watch', 'settings'], ['doctor'], ['list', '--store', kind, '--path', join(parent, 'g')]]) {
      const result = cli(args, env);
      expect(result.status, `${args.join(' ')}: ${result.stderr}`).toBe(1);
      expect(result.stdout + result.stderr, args.join(' ')).toMatch(new RegExp(`there is no ${kind} store at ${parent}/(misspelled|g)`));
      expect(readdirSync(parent), args.join(' ')).toEqual([]); // no directory, no store file
    }
    expect(cli(['doctor'], env).stdout).not.toMatch(/no problems found/);
  });

  it.each(TARGETS)('bump and clear of an absent key on the $name store fail and change nothing, unless --create', async (target) => {
    const dir = tempDir();
    const args = target.args(dir);
    const store = await target.open(dir);
    stores.push(store);
    const app = await AsyncGenerationSynchronizer.create('settings', { store });
    const keys = async (): Promise<string[]> => (await store.entries()).map((entry) => entry.key).sort();

    for (const command of ['bump', 'clear']) {
      const refused = cli([command, 'setings', ...args]); // misspelled
      expect(refused.status, refused.stderr).toBe(1);
      expect(refused.stdout).toBe('');
      expect(refused.stderr).toMatch(new RegExp(`setings is absent from the ${target.name} store.*nothing was changed.*--create`));
      expect(await keys()).toEqual(['settings']);
    }
    expect(await app.isExpired()).toBe(false);

    const created = json<{ previous: number | null; generation: number; store: { kind: string } }>(['bump', 'fresh', '--create', ...args]);
    expect(created.previous).toBeNull(); // never a "previous" value that did not exist
    expect(created.store.kind).toBe(target.name);
    expect(await keys()).toEqual(['fresh', 'settings']);
    expect(json(['clear', 'never', '--create', ...args])).toMatchObject({ cleared: false, previous: null });

    // Text output names the store too; get keeps stdout to the number and names the store on stderr.
    expect(cli(['bump', 'settings', ...args]).stdout).toMatch(new RegExp(`^settings: \\d+ -> \\d+ in the ${target.name} store `));
    const got = cli(['get', 'settings', ...args]);
    expect(got.stdout).toMatch(/^\d+\n$/);
    expect(got.stderr).toMatch(new RegExp(`settings in the ${target.name} store`));
  });

  it('bump --create creates a store that does not exist yet; bump without it does not', () => {
    const dir = join(tempDir(), 'new');
    const env = { GENERATION_SYNC_DIR: dir };
    expect(cli(['bump', 'settings'], env).status).toBe(1);
    expect(() => readdirSync(dir)).toThrow(/ENOENT/);
    const created = cli(['bump', 'settings', '--create'], env);
    expect(created.status, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^settings: \(absent\) -> \d+ in the (shm|file) store /);
  });

  it('doctor says where it looked for the addon, and never answers a failure with "see the message"', () => {
    const absent = cli(['doctor', '--json', '--store', 'shm', '--path', join(tempDir(), 'absent.shm')]);
    expect(absent.status).toBe(1); // no store there is a problem
    const report = JSON.parse(absent.stdout) as { addonSearch: { platform: string; prebuildTag: string; candidates: Array<{ path: string; exists: boolean }> } };
    expect(report.addonSearch.platform).toBe(`${process.platform}-${process.arch}`);
    expect(report.addonSearch.prebuildTag).toMatch(new RegExp(`^${process.platform}-${process.arch}`));
    expect(report.addonSearch.candidates.some((candidate) => candidate.exists)).toBe(true);
    const dir = tempDir();
    writeFileSync(join(dir, 'g.shm'), 'not a store at all, but long enough to be read as one');
    const damaged = cli(['doctor', '--store', 'shm', '--path', join(dir, 'g.shm')]);
    expect(damaged.status).toBe(1);
    expect(damaged.stdout).toMatch(/problem: .*g\.shm/);
    expect(damaged.stdout).not.toMatch(/see the message/);
    expect(damaged.stdout).toMatch(/fix: .*(move it aside|README)/);
  });
});

describe('--user never passes its value to id(1) as an option (issue 27 item 6; failed at 684a0db)', () => {
  it('refuses a value that looks like an option or does not resolve, with exit 2 and nothing done', () => {
    const dir = tempDir();
    const env = { GENERATION_SYNC_DIR: dir, GENERATION_SYNC_STORE: 'file' };
    for (const value of ['-a', '--help', '-u', '--', 'a b', '']) {
      const result = cli(['bump', 'settings', '--create', `--user=${value}`], env);
      expect(result.status, `--user=${value}: ${result.stderr}`).toBe(2);
      expect(result.stderr, value).toMatch(/--user: .*(not a user name or uid|no user)/);
      expect(result.stderr, value).not.toMatch(/ERR_OUT_OF_RANGE|at .*\.js:\d+/);
    }
    expect(readdirSync(dir)).toEqual([]); // the command never ran
  });
});

describe('the CLI run by root on an application user\'s store (issue 12 item 9; failed at 1545de2)', () => {
  // Needs root (CI runs as root) and the system user "nobody", as which the application runs here.
  it.skipIf(process.getuid?.() !== 0)('is refused with the way out, and with --user acts as the owner: files stay the owner\'s', () => {
    const nobody = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim());
    const parent = tempDir();
    chmodSync(parent, 0o755);
    for (const kind of ['file', 'shm'] as const) {
      // The application's store: its directory and files belong to it.
      const dir = join(parent, `app-${kind}`);
      const env = { GENERATION_SYNC_DIR: dir, GENERATION_SYNC_STORE: kind };
      expect(cli(['bump', 'settings', '--create'], env).status).toBe(0);
      for (const name of readdirSync(dir)) chownSync(join(dir, name), nobody, nobody);
      chownSync(dir, nobody, nobody);

      const refused = cli(['bump', 'settings'], env);
      expect(refused.status, kind).toBe(1);
      expect(refused.stderr).toMatch(/belongs to user \d+.*add --user with the store owner's name or uid/);

      const before = Number(cli(['get', 'settings', '--user', 'nobody'], env).stdout.trim());
      const bumped = cli(['bump', 'settings', '--user', 'nobody'], env);
      expect(bumped.status, bumped.stderr).toBe(0);
      expect(cli(['bump', 'other', '--create', '--user', String(nobody)], env).status).toBe(0); // a uid works too, and creates a key
      expect(Number(cli(['get', 'settings', '--user', 'nobody'], env).stdout.trim())).toBe(before + 1);
      // Nothing in the directory became root's: the application can still use all of it.
      for (const name of readdirSync(dir)) expect(statSync(join(dir, name)).uid, `${kind}: ${name}`).toBe(nobody);
    }
    expect(cli(['list', '--user', 'no-such-user-here']).status).toBe(2);
  });
});

#!/usr/bin/env node
/**
 * The `generation-sync` command: see and change the shared state from a
 * shell. Exit codes: 0 success, 1 failure (store unreachable, key absent for
 * `get`, problems found by `doctor`), 2 bad usage.
 *
 * @module
 */

import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, statfsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

import { AsyncGenerationSynchronizer } from './synchronizers/async-synchronizer';
import { makeCacheKey } from './synchronizers/cache-key';
import { defaultStore, defaultStoreChoice, STORE_ENV } from './stores/default-store';
import { AddonUnavailableError, GenerationSyncError, StoreFormatError, StoreUnavailableError, UnsafeStoreError } from './store/errors';
import { FILE_STORE_NAME, FileStore } from './stores/file/file-store';
import { currentUid, defaultDirectory, DIRECTORY_ENV, networkFilesystemName, OPEN_READ, otherStoreBeside } from './system/filesystem';
import { addonSearch, addonStatus, PACKAGE_ROOT } from './stores/shm/native';
import { RedisStore } from './stores/redis/redis-store';
import { MAGIC } from './stores/shm/shm-format';
import { SHM_FILE_NAME, SharedMemoryStore } from './stores/shm/shm-store';
import type { AsyncStore, Store, StoreEntry } from './store/store';
import type { Logger } from './store/logger';
import { DEFAULT_CACHE_EXPIRATION_SECS } from './synchronizers/synchronizer';

const USAGE = `Usage: generation-sync <command> [options]

Commands:
  list              every key in the store and its generation
  get KEY           print KEY's generation (exit 1 if it is absent)
  bump KEY          mark KEY updated: every process holding it sees it expired
                    (exit 1 if KEY or the store is absent, unless --create)
  clear KEY         remove KEY: every process reloads; it comes back higher
                    (exit 1 if KEY is absent, unless --create)
  watch KEY         print each change of KEY until interrupted (Ctrl-C)
  doctor            which store the library would use and why, and its health

list, get, watch and doctor change nothing and create nothing. Every command
names the store it used.

Options:
  --store KIND      shm, file or redis (default: what the library picks,
                    honouring ${STORE_ENV} and ${DIRECTORY_ENV})
  --path FILE       the store file (default: the library's default path)
  --redis-url URL   the Redis server (implies --store redis)
  --namespace NS    the Redis key namespace (default: generation-sync:)
  --prefix PART     key prefix part, as the application's keyPrefix (repeatable)
  --user NAME       run as this user (a name or uid; needs root): to act, as
                    root, on the store of an application that runs as NAME
  --raw             use KEY exactly, without the library's normalization
  --create          let bump create an absent key (and the store itself), and
                    clear succeed on an absent key
  --json            machine-readable output
  -h, --help        show this help
  -v, --version     show the version

Keys are normalized as the library normalizes them, so "bump settings" hits the
key that new GenerationSynchronizer('settings') uses.`;

const KINDS = ['shm', 'file', 'redis'] as const;
type Kind = (typeof KINDS)[number];

/** Bad usage: exit code 2. */
class UsageError extends Error {}

/** A failure the command reports with exit code 1 (the message says what and why). */
class CommandFailure extends Error {}

interface Options {
  readonly store: Kind | undefined;
  readonly path: string | undefined;
  readonly redisUrl: string | undefined;
  readonly namespace: string | undefined;
  readonly prefix: string[];
  readonly user: string | undefined;
  readonly raw: boolean;
  readonly json: boolean;
  readonly create: boolean;
}

interface Output {
  /** The command's result (stdout). */
  log(line: string): void;
  /** Which store was used, when the result itself cannot say it (stderr). */
  note(line: string): void;
}

function parse(argv: readonly string[]): { command: string | undefined; args: string[]; options: Options; help: boolean; version: boolean } {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        store: { type: 'string' },
        path: { type: 'string' },
        'redis-url': { type: 'string' },
        namespace: { type: 'string' },
        prefix: { type: 'string', multiple: true },
        user: { type: 'string' },
        raw: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        create: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
        version: { type: 'boolean', short: 'v', default: false },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  const store = values.store;
  if (store !== undefined && !(KINDS as readonly string[]).includes(store)) {
    throw new UsageError(`--store must be one of ${KINDS.join(', ')}, not "${store}".`);
  }
  if (values['redis-url'] !== undefined && store !== undefined && store !== 'redis') {
    throw new UsageError('--redis-url is for the Redis store; it cannot be combined with --store ' + store + '.');
  }
  if (values.path !== undefined && (store === 'redis' || values['redis-url'] !== undefined)) {
    throw new UsageError('--path names a store file; the Redis store has none.');
  }
  const [command, ...args] = positionals;
  return {
    command,
    args,
    help: values.help,
    version: values.version,
    options: {
      store: store as Kind | undefined,
      path: values.path,
      redisUrl: values['redis-url'],
      namespace: values.namespace,
      prefix: values.prefix ?? [],
      user: values.user,
      raw: values.raw,
      json: values.json,
      create: values.create,
    },
  };
}

/**
 * Run as `user` from here on (issue 12 item 9): an operator who is root
 * (`docker exec`, `sudo`) acts on an application's store as the application,
 * so the store's ownership checks pass and whatever the command creates
 * belongs to the application, not to root.
 */
function becomeUser(user: string): void {
  // A name as POSIX allows it, or a uid: nothing that id(1) could take for an option (issue 27 item 6).
  if (!/^(?:[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?)$/.test(user)) {
    throw new UsageError(`--user: "${user}" is not a user name or uid (a name starts with a letter or "_"; a uid is digits).`);
  }
  const idOf = (flag: '-u' | '-g'): number => {
    let id: number;
    try {
      // "--" ends id's options: whatever the value, it is taken as a user.
      id = Number(execFileSync('id', [flag, '--', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    } catch {
      throw new UsageError(`--user: there is no user "${user}" on this system.`);
    }
    if (!Number.isSafeInteger(id) || id < 0) throw new UsageError(`--user: the user "${user}" did not resolve to a numeric id.`);
    return id;
  };
  const uid = idOf('-u');
  const gid = idOf('-g');
  if (currentUid() === uid) return;
  if (currentUid() !== 0 || process.setuid === undefined || process.setgid === undefined || process.setgroups === undefined) {
    throw new CommandFailure(`--user ${user} needs root: run the command with sudo, or as ${user} itself.`);
  }
  process.setgroups([gid]); // drop root's supplementary groups
  process.setgid(gid);
  process.setuid(uid);
}

function kindOf(options: Options, canCreate = false): Kind | undefined {
  if (options.store !== undefined) return options.store;
  if (options.redisUrl !== undefined) return 'redis';
  if (options.path === undefined) return undefined;
  // A path without --store: tell the kind by the file's first bytes, read only from a regular file
  // (opened without following a symlink and without blocking on a FIFO), and only those bytes.
  let fd: number;
  try {
    fd = openSync(options.path, OPEN_READ);
  } catch {
    // Only bump --create makes a store; the other commands read, and a path that names nothing is where they looked.
    if (canCreate) throw new UsageError(`${options.path} does not exist yet: say which store to create there with --store shm or --store file.`);
    throw new CommandFailure(`there is no store at ${options.path}: check the path against the application's. Nothing was created.`);
  }
  const head = Buffer.alloc(MAGIC.length);
  try {
    if (!fstatSync(fd).isFile()) throw new CommandFailure(`${options.path} is not a regular file, so it is not a generation-sync store.`);
    head.fill(0, readSync(fd, head, 0, head.length, 0));
  } finally {
    closeSync(fd);
  }
  if (head.equals(MAGIC)) return 'shm';
  if (head.toString('latin1').trimStart().startsWith('{')) return 'file';
  throw new CommandFailure(`${options.path} is not a generation-sync store.`);
}

/** The file a local store is in (or would be in), found without opening or creating anything; undefined for Redis. */
function localStoreFile(options: Options, canCreate = false): { kind: 'shm' | 'file'; path: string } | undefined {
  const kind = kindOf(options, canCreate);
  if (kind === 'redis') return undefined;
  if (kind === undefined) {
    const choice = defaultStoreChoice();
    return { kind: choice.kind, path: choice.path };
  }
  return { kind, path: options.path ?? join(defaultDirectory(), kind === 'shm' ? SHM_FILE_NAME : FILE_STORE_NAME) };
}

/** Why there is no store where the command looked, and how to find the right one. */
function noStoreThere(file: { kind: string; path: string }, canCreate: boolean): string {
  return (
    `there is no ${file.kind} store at ${file.path}: no process has used it yet, or the application keeps its store ` +
    `elsewhere (compare ${DIRECTORY_ENV}, ${STORE_ENV} and --path with the application's; "generation-sync doctor" ` +
    `run with the application's environment shows where it is).` +
    (canCreate ? ' Add --create to create it here.' : ' Nothing was created.')
  );
}

/**
 * The store the command acts on. Unless `create`, a local store that does not exist yet is an error, and
 * nothing is created: not the file, not its directory.
 */
async function openStore(options: Options, create: boolean, canCreate = false): Promise<Store | AsyncStore> {
  const file = localStoreFile(options, canCreate);
  if (file !== undefined && !create && !existsSync(file.path)) throw new CommandFailure(noStoreThere(file, canCreate));
  switch (kindOf(options, canCreate)) {
    case 'shm':
      return SharedMemoryStore.open(options.path);
    case 'file':
      return FileStore.open(options.path);
    case 'redis': {
      const store = await RedisStore.connect({
        url: options.redisUrl ?? 'redis://127.0.0.1:6379',
        namespace: options.namespace,
        connectTimeoutMs: 3000,
        logger: quietLogger,
      });
      return store;
    }
    default:
      return defaultStore();
  }
}

/** The library's outage reports become the command's exit status instead. */
const quietLogger: Logger = { error: () => undefined, warn: () => undefined, info: () => undefined };

function storedKey(key: string, options: Options): string {
  return options.raw ? key : makeCacheKey(key, { prefix: options.prefix });
}

function requireKey(command: string, args: string[]): string {
  if (args.length !== 1 || args[0] === undefined) {
    throw new UsageError(`${command} takes exactly one KEY${args.length > 1 ? ` (got ${args.length} arguments; quote a key with spaces)` : ''}.`);
  }
  return args[0];
}

function describeStore(store: Store | AsyncStore): string {
  if (store instanceof RedisStore) return `redis store ${store.url ?? ''} (namespace ${store.namespace})`;
  return `${store.kind} store ${(store as Store).path}`;
}

/** The store, for --json output. */
function storeJson(store: Store | AsyncStore): Record<string, unknown> {
  if (store instanceof RedisStore) return { kind: 'redis', url: store.url ?? null, namespace: store.namespace };
  return { kind: store.kind, path: (store as Store).path };
}

/** KEY's generation, or null if absent; an unreachable store is a failure that says what was being done. */
async function readKey(store: Store | AsyncStore, key: string, doing: string): Promise<number | null> {
  try {
    return await store.bind(key, { expirationSecs: DEFAULT_CACHE_EXPIRATION_SECS }).read();
  } catch (error) {
    if (error instanceof StoreUnavailableError) throw unreachable(store, `${doing} ${key}`);
    throw error;
  }
}

function absentKey(store: Store | AsyncStore, key: string, what: string): CommandFailure {
  return new CommandFailure(
    `${key} is absent from the ${describeStore(store)}, so nothing was changed: no process has created that key, or it was ` +
      `cleared (misspelled? "generation-sync list" shows the keys; the application's keyPrefix is given with --prefix). ` +
      `Add --create to ${what}.`,
  );
}

/** A synchronizer on `key`, already normalized by storedKey(). */
function synchronizerFor(store: Store | AsyncStore, key: string): Promise<AsyncGenerationSynchronizer> {
  return AsyncGenerationSynchronizer.create(key, { store, normalizeCacheKey: false, logger: quietLogger });
}

function unreachable(store: Store | AsyncStore, what: string): CommandFailure {
  return new CommandFailure(`Could not ${what}: the ${describeStore(store)} did not answer. Is it running and reachable?`);
}

async function list(store: Store | AsyncStore, options: Options, out: Output): Promise<number> {
  const entries = [...(await store.entries())].sort((a, b) => a.key.localeCompare(b.key));
  if (options.json) {
    out.log(JSON.stringify({ store: storeJson(store), keys: entries.map((entry) => entryJson(store, entry)) }));
    return 0;
  }
  if (entries.length === 0) {
    out.log(`no keys in the ${describeStore(store)}`);
    return 0;
  }
  const time = recordedTime(store);
  out.log(`${entries.length} key${entries.length === 1 ? '' : 's'} in the ${describeStore(store)}:`);
  const rows = [['KEY', 'GENERATION', ...(time ? [time.title] : [])]];
  for (const entry of entries) {
    rows.push([
      entry.key + (entry.keyTruncated ? '…' : ''),
      entry.generation === null ? '(cleared)' : String(entry.generation),
      ...(time ? [entry.updatedAt?.toISOString() ?? '-'] : []),
    ]);
  }
  const widths = [0, 1].map((column) => Math.max(...rows.map((row) => (row[column] as string).length)));
  for (const row of rows) {
    out.log([(row[0] as string).padEnd(widths[0] as number), (row[1] as string).padEnd(widths[1] as number), ...row.slice(2)].join('  ').trimEnd());
  }
  return 0;
}

/**
 * What a store's `updatedAt` honestly is, for list's time column and its JSON field: the file store times every
 * change; the shared-memory store times only creation and clearing (reading the clock would triple an
 * increment's cost); Redis times nothing (undefined).
 */
function recordedTime(store: Store | AsyncStore): { title: string; field: string } | undefined {
  if (store.kind === 'file') return { title: 'UPDATED', field: 'updatedAt' };
  if (store.kind === 'shm') return { title: 'CREATED OR CLEARED', field: 'createdOrClearedAt' };
  return undefined;
}

/** A key for --json: only the times its store records (see recordedTime). */
function entryJson(store: Store | AsyncStore, entry: StoreEntry): Record<string, unknown> {
  const time = recordedTime(store);
  const times = time === undefined ? {} : { createdAt: entry.createdAt?.toISOString() ?? null, [time.field]: entry.updatedAt?.toISOString() ?? null };
  return { key: entry.key, keyTruncated: entry.keyTruncated, generation: entry.generation, ...times };
}

async function get(store: Store | AsyncStore, key: string, options: Options, out: Output): Promise<number> {
  const generation = await readKey(store, key, 'read');
  if (options.json) {
    out.log(JSON.stringify({ key, generation, store: storeJson(store) }));
  } else {
    out.note(`${key} in the ${describeStore(store)}`); // stdout stays the bare number, for scripts
    out.log(generation === null ? `${key} is absent` : String(generation));
  }
  return generation === null ? 1 : 0;
}

async function bump(store: Store | AsyncStore, key: string, options: Options, out: Output): Promise<number> {
  // A misspelled key must not be created and reported as bumped: the processes that hold the real one were not told.
  const previous = await readKey(store, key, 'bump');
  if (previous === null && !options.create) throw absentKey(store, key, 'create it');
  const sync = await synchronizerFor(store, key);
  if (!(await sync.markUpdated())) throw unreachable(store, `bump ${key}`);
  if (options.json) out.log(JSON.stringify({ key, generation: sync.syncGen, previous, store: storeJson(store) }));
  else out.log(`${key}: ${previous ?? '(absent)'} -> ${sync.syncGen} in the ${describeStore(store)}`);
  return 0;
}

async function clear(store: Store | AsyncStore, key: string, options: Options, out: Output): Promise<number> {
  const previous = await readKey(store, key, 'clear');
  if (previous === null && !options.create) throw absentKey(store, key, 'accept an absent key');
  if (previous !== null) {
    try {
      await store.bind(key, { expirationSecs: DEFAULT_CACHE_EXPIRATION_SECS }).delete();
    } catch (error) {
      if (error instanceof StoreUnavailableError) throw unreachable(store, `clear ${key}`);
      throw error;
    }
  }
  if (options.json) out.log(JSON.stringify({ key, cleared: previous !== null, previous, store: storeJson(store) }));
  else out.log(`${previous === null ? `${key} was already absent` : `${key}: ${previous} -> (cleared)`} in the ${describeStore(store)}`);
  return 0;
}

async function watch(store: Store | AsyncStore, key: string, options: Options, out: Output): Promise<number> {
  // Watching must not change anything, so no synchronizer (which would create the key): the store's own watch.
  let previous = await readKey(store, key, 'read');
  if (options.json) out.log(JSON.stringify({ watching: key, generation: previous, store: storeJson(store) }));
  else out.log(`watching ${key} (generation ${previous ?? 'absent'}) in the ${describeStore(store)}; Ctrl-C to stop`);
  const unwatch = store.watch(key, previous, (generation) => {
    const at = new Date().toISOString();
    if (options.json) out.log(JSON.stringify({ at, key, generation, previous }));
    else out.log(`${at}  ${key}  ${previous ?? '(absent)'} -> ${generation ?? '(cleared)'}`);
    previous = generation;
  });
  // A watch never keeps a process alive by itself; here, staying alive is the point.
  const keepAlive = setInterval(() => undefined, 2 ** 30);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(keepAlive);
  unwatch();
  return 0;
}

interface Problem {
  readonly problem: string;
  readonly fix: string;
}

/** statfs magic numbers of common local filesystems, for doctor's report. */
const LOCAL_FILESYSTEMS: ReadonlyMap<number, string> = new Map([
  [0xef53, 'ext4'],
  [0x01021994, 'tmpfs'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [0x794c7630, 'overlayfs'],
  [0x2fc12fc1, 'zfs'],
  [0xf2f52010, 'f2fs'],
]);

function filesystemOf(path: string): { type: string; network: boolean } {
  try {
    const type = statfsSync(path).type;
    const network = networkFilesystemName(type);
    return { type: network ?? LOCAL_FILESYSTEMS.get(type) ?? `0x${type.toString(16)}`, network: network !== undefined };
  } catch {
    return { type: 'unknown', network: false };
  }
}

async function doctor(options: Options, out: Output): Promise<number> {
  const problems: Problem[] = [];
  const status = addonStatus();
  const report: Record<string, unknown> = {
    version: packageVersion(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    addon: 'path' in status ? { loaded: true, path: status.path } : { loaded: false, error: status.error.message },
    addonSearch: addonSearch(),
  };
  if ('error' in status) {
    problems.push({
      problem: 'the native addon does not load, so the library falls back to the slower file store',
      fix: 'build it from source once: "npx node-gyp rebuild -C node_modules/generation-sync" (needs python3, make and a C++ compiler)',
    });
  }
  try {
    report.defaultStore = defaultStoreChoice();
  } catch (error) {
    problems.push({ problem: (error as Error).message, fix: `set ${STORE_ENV} to shm or file, or unset it` });
  }
  report.environment = { [STORE_ENV]: process.env[STORE_ENV] ?? null, [DIRECTORY_ENV]: process.env[DIRECTORY_ENV] ?? null };
  if (!process.env[DIRECTORY_ENV]) {
    problems.push({
      problem: `${DIRECTORY_ENV} is not set, so the store lives under the temp directory, which temp cleaners, PrivateTmp= and containers can hide or remove`,
      fix: `in production, set ${DIRECTORY_ENV} to a directory on local disk that the application owns`,
    });
  }

  let store: Store | AsyncStore | undefined;
  try {
    const file = localStoreFile(options);
    if (file !== undefined && !existsSync(file.path)) {
      problems.push({
        problem: `there is no ${file.kind} store at ${file.path} (nothing was created)`,
        fix:
          `if the application already runs, it keeps its store elsewhere: run doctor with the application's environment ` +
          `(${DIRECTORY_ENV}, ${STORE_ENV}) and user; otherwise the first process that uses the store creates it`,
      });
    } else {
      store = await openStore(options, false);
      report.store = await storeReport(store, problems);
    }
  } catch (error) {
    problems.push({ problem: (error as Error).message, fix: fixFor(error) });
  } finally {
    await store?.close();
  }
  report.problems = problems;

  if (options.json) {
    out.log(JSON.stringify(report, null, 2));
  } else {
    out.log(`generation-sync ${report.version as string} on Node ${process.version}, ${report.platform as string}`);
    const search = report.addonSearch as ReturnType<typeof addonSearch>;
    out.log(`native addon: ${'path' in status ? `loaded from ${status.path}` : `NOT loaded — ${status.error.message}`}`);
    out.log(`  looked for: ${search.prebuildTag} (build from source first, then the prebuilds for this platform)`);
    for (const candidate of search.candidates) out.log(`    ${candidate.exists ? 'found ' : 'absent'}  ${candidate.path}`);
    const choice = report.defaultStore as { kind: string; path: string; reason: string } | undefined;
    if (choice) out.log(`default store: ${choice.kind} at ${choice.path} (${choice.reason})`);
    const storeInfo = report.store as Record<string, unknown> | undefined;
    if (storeInfo) for (const [name, value] of Object.entries(storeInfo)) out.log(`  ${name}: ${typeof value === 'object' ? JSON.stringify(value) : String(value)}`);
    if (problems.length === 0) out.log('no problems found');
    for (const { problem, fix } of problems) out.log(`problem: ${problem}\n  fix: ${fix}`);
  }
  // Advice alone (the temp directory) does not fail the check; anything else does.
  return problems.some((problem) => !problem.problem.startsWith(`${DIRECTORY_ENV} is not set`)) ? 1 : 0;
}

async function storeReport(store: Store | AsyncStore, problems: Problem[]): Promise<Record<string, unknown>> {
  if (store instanceof RedisStore) {
    const started = performance.now();
    const keys = (await store.entries()).length;
    return { kind: 'redis', url: store.url, namespace: store.namespace, keys, roundTripMs: Number((performance.now() - started).toFixed(2)) };
  }
  const path = (store as Store).path as string;
  const stats = statSync(path);
  const filesystem = filesystemOf(dirname(path));
  const uid = currentUid();
  const info: Record<string, unknown> = {
    kind: store.kind,
    path,
    mode: `0${(stats.mode & 0o777).toString(8)}`,
    owner: uid !== undefined && stats.uid === uid ? `${stats.uid} (this user)` : String(stats.uid),
    filesystem: filesystem.type,
    sizeBytes: stats.size,
  };
  if (store instanceof SharedMemoryStore) {
    Object.assign(info, { formatVersion: store.formatVersion, keys: store.size, capacity: store.capacity, watch: store.watchMechanism });
    if (store.size > store.capacity * 0.9) {
      problems.push({ problem: `the store holds ${store.size} of its ${store.capacity} keys`, fix: 'create a new store file with a larger "capacity"' });
    }
  } else {
    Object.assign(info, { keys: (await store.entries()).length });
  }
  if (filesystem.network) problems.push({ problem: `the store is on ${filesystem.type}`, fix: `move it to local disk (${DIRECTORY_ENV})` });
  const other = otherStoreBeside(path, store.kind === 'shm' ? 'shm' : 'file', false);
  if (other !== undefined) {
    problems.push({
      problem: `${other} is the other kind of store, beside this one: processes on one do not see changes made on the other`,
      fix: `make every process use the same kind (the native addon everywhere, or ${STORE_ENV}=file everywhere), then remove the unused file`,
    });
  }
  return info;
}

/** What to do about an error that stopped doctor from opening the store (its message says what is wrong). */
function fixFor(error: unknown): string {
  if (error instanceof UsageError) return 'correct the command line (see --help)';
  if (error instanceof UnsafeStoreError) {
    return error.code === 'ERR_GENSYNC_NETWORK_FILESYSTEM'
      ? `point ${DIRECTORY_ENV} at a directory on local disk that the application owns`
      : `fix the owner or mode of the file or directory the message names (it must be the application's user's and not writable by others), or point ${DIRECTORY_ENV} elsewhere`;
  }
  if (error instanceof StoreFormatError) {
    return 'the file was left untouched: move it aside (keep it for a bug report) and restart the processes that use it; they create a new store';
  }
  if (error instanceof StoreUnavailableError) return 'make sure the store is reachable (for Redis: the server runs and accepts this client), then run doctor again';
  if (error instanceof AddonUnavailableError) return `build the addon (see above), or set ${STORE_ENV}=file in every process`;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? `look up ${code} in the README's "Errors" table` : 'report it, with this output, as a bug';
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Run the command line `argv`; resolves the exit code. */
export async function run(
  argv: readonly string[],
  out: Output = { log: (line) => console.log(line), note: (line) => console.error(line) },
): Promise<number> {
  const { command, args, options, help, version } = parse(argv);
  if (help) {
    out.log(USAGE);
    return 0;
  }
  if (version) {
    out.log(packageVersion());
    return 0;
  }
  if (command === undefined) throw new UsageError('a command is needed.');
  if (options.user !== undefined) becomeUser(options.user);
  if (command === 'doctor') {
    if (args.length > 0) throw new UsageError('doctor takes no arguments.');
    return doctor(options, out);
  }
  const actions: Record<string, typeof get | undefined> = { list: undefined, get, bump, clear, watch };
  if (!(command in actions)) throw new UsageError(`unknown command "${command}".`);
  if (command === 'list' && args.length > 0) throw new UsageError('list takes no arguments.');
  const key = command === 'list' ? '' : requireKey(command, args);
  const action = actions[command];

  let store: Store | AsyncStore;
  try {
    // Only bump --create may create a store (a store that does not exist has nothing to clear).
    store = await openStore(options, command === 'bump' && options.create, command === 'bump');
  } catch (error) {
    if (error instanceof UnsafeStoreError && currentUid() === 0 && /belongs to user \d+/.test(error.message)) {
      throw new CommandFailure(`${error.message} As root, add --user with the store owner's name or uid: the command then runs as that user.`);
    }
    throw error;
  }
  try {
    if (command === 'list') return await list(store, options, out);
    return await (action as typeof get)(store, storedKey(key, options), options, out);
  } catch (error) {
    if (error instanceof StoreUnavailableError) throw unreachable(store, command);
    throw error;
  } finally {
    await store.close();
  }
}

if (require.main === module) {
  run(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      if (error instanceof UsageError) {
        console.error(`generation-sync: ${error.message}\nRun "generation-sync --help" for usage.`);
        process.exitCode = 2;
      } else if (error instanceof CommandFailure || error instanceof GenerationSyncError) {
        console.error(`generation-sync: ${(error as Error).message}`);
        process.exitCode = 1;
      } else {
        console.error(error);
        process.exitCode = 1;
      }
    },
  );
}

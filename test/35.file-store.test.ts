// The JSON FileStore: file handling, change detection, the proper-lockfile
// traps, expiry, and hostile files.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { Worker as NodeWorker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';

import {
  FileStore,
  GenerationSynchronizer,
  SharedMemoryStore,
  StoreFormatError,
  StoreUnavailableError,
  UnsafeStoreError,
} from 'generation-sync';

import { acquireFileLock } from '../dist/stores/file/file-lock.js';
import { eventually, recordingLogger, ROOT, startWorker, stopAll, tempDir, thrown, type Worker } from './helpers';

/** A process's state letter from /proc (R, S, T for stopped, …). */
const processState = (pid: number): string | undefined => /\) (\w)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];

const workers: Worker[] = [];
afterEach(() => stopAll(workers.splice(0)));

const fileHash = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function storeFile(dir: string): string {
  return join(dir, 'generations.json');
}

interface FileEntryJson {
  key: string;
  generation: number;
  absent: boolean;
  expiresAt: number;
  createdAt: number;
  updatedAt: number;
}

function document(entries: FileEntryJson[]): string {
  return JSON.stringify({ format: 'generation-sync-file-store', version: 1, entries });
}

const entry = (key: string, generation: number): FileEntryJson => ({
  key,
  generation,
  absent: false,
  expiresAt: Date.now() + 3_600_000,
  createdAt: 1,
  updatedAt: 1,
});

describe('FileStore files', () => {
  it('honours the mode option exactly (0600 by default under any umask: 25.store-contract)', () => {
    const previous = process.umask(0o077);
    try {
      const grouped = join(tempDir(), 'g.json');
      const store = FileStore.open(grouped, { mode: 0o640 });
      new GenerationSynchronizer('k', { store }).markUpdated(); // a rewrite keeps the mode
      expect(statSync(grouped).mode & 0o777).toBe(0o640);
      store.close();
    } finally {
      process.umask(previous);
    }
  });

  it('opens generations.json in the default 0700 directory', () => {
    const tmp = tempDir();
    const script = `console.log(require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))}).FileStore.open().path)`;
    const out = execFileSync(process.execPath, ['-e', script], { env: { ...process.env, TMPDIR: tmp, GENERATION_SYNC_DIR: '' }, encoding: 'utf8' });
    const dir = join(tmp, `generation-sync-${process.getuid?.()}`);
    expect(out.trim()).toBe(join(dir, 'generations.json'));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('writes whole files by rename, so a reader never sees a partial one', async () => {
    const dir = tempDir();
    const path = storeFile(dir);
    const store = FileStore.open(path);
    const observer = new GenerationSynchronizer('bumped', { store });
    const base = observer.syncGen as number;
    const writer = startWorker('bump-loop.mjs', ['file', path, '300']);
    workers.push(writer);
    let parsed = 0;
    let last = 0;
    const done = writer.next();
    let finished = false;
    const finish = (): void => {
      finished = true;
    };
    done.then(finish, finish);
    while (!finished) {
      const text = readFileSync(path, 'utf8');
      expect(() => JSON.parse(text)).not.toThrow();
      parsed++;
      const seen = store.bind(observer.cacheKey, { expirationSecs: 60 }).read() ?? 0;
      expect(seen).toBeGreaterThanOrEqual(last);
      last = seen;
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(((await done) as { failures: number }).failures).toBe(0);
    expect(parsed).toBeGreaterThan(10);
    expect(observer.isExpired()).toBe(true);
    observer.refresh();
    expect(observer.syncGen).toBe(base + 300);
    store.close();
  });

  it('knows an unchanged file by its inode and does not read it again', () => {
    const path = storeFile(tempDir());
    const store = FileStore.open(path);
    const sync = new GenerationSynchronizer('k', { store });
    const generation = sync.syncGen as number;
    // Rewrite the file in place (same inode), which the store itself never does: the store must not notice,
    // which shows it did not re-read the file.
    const fd = openSync(path, 'r+');
    const text = readFileSync(path, 'utf8').replace(`"generation":${generation}`, `"generation":${generation + 5}`);
    writeSync(fd, text, 0);
    closeSync(fd);
    expect(sync.isExpired()).toBe(false);
    // A replacement by rename (a new inode) is noticed at once.
    writeFileSync(`${path}.new`, text, { mode: 0o600 });
    renameSync(`${path}.new`, path);
    expect(sync.isExpired()).toBe(true);
    sync.refresh();
    expect(sync.syncGen).toBe(generation + 5);
    store.close();
  });

  it('parses keys such as __proto__ and constructor as ordinary keys', () => {
    const path = storeFile(tempDir());
    writeFileSync(path, document([entry('__proto__', 11), entry('constructor', 22), entry('toString', 33)]), { mode: 0o600 });
    const store = FileStore.open(path);
    for (const [key, generation] of [['__proto__', 11], ['constructor', 22], ['toString', 33]] as const) {
      expect(new GenerationSynchronizer(key, { store, normalizeCacheKey: false }).syncGen).toBe(generation);
    }
    expect(new GenerationSynchronizer('hasOwnProperty', { store, normalizeCacheKey: false, clock: () => 5000 }).syncGen).toBe(5);
    expect(Object.prototype).not.toHaveProperty('generation');
    store.close();
  });

  it('expires a key cacheExpirationSecs after it was created, and re-creates it higher', () => {
    let now = 1_700_000_000_000;
    const clock = (): number => now;
    const store = FileStore.open(storeFile(tempDir()), { clock });
    const sync = new GenerationSynchronizer('short-lived', { store, clock, cacheExpirationSecs: 60 });
    sync.markUpdated();
    const before = sync.syncGen as number;
    now += 59_999;
    expect(sync.isExpired()).toBe(false);
    expect(sync.markUpdated()).toBe(true); // increments keep the expiry, as memcached's and Redis's do
    now += 1;
    expect(sync.isExpired()).toBe(true);
    expect(store.entries()[0]?.generation).toBeNull();
    expect(sync.markUpdated()).toBe(true); // re-created: above every value it had
    expect(sync.syncGen).toBeGreaterThan(before + 1);
    expect(sync.isExpired()).toBe(false);
    store.close();
  });
});

describe('the FileStore writer lock', () => {
  it('readers never wait for it; a writer that cannot get it in time reports an outage', async () => {
    const path = storeFile(tempDir());
    const store = FileStore.open(path, { lockTimeoutMs: 200 });
    const logger = recordingLogger();
    const sync = new GenerationSynchronizer('k', { store, logger });
    const holder = startWorker('hold-file-lock.mjs', [path]);
    workers.push(holder);
    await holder.next();

    const other = FileStore.open(path);
    new GenerationSynchronizer('k', { store: other }).syncGen; // reads without the lock
    expect(sync.isExpired()).toBe(false);
    expect(sync.markUpdated()).toBe(false);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/held the writer lock .* for more than 200 ms/);

    holder.send('release');
    await holder.next();
    expect(sync.markUpdated()).toBe(true);
    expect(logger.lines[1]).toMatch(/reaches its store again/);
    store.close();
    other.close();
  });

  it('lets exactly one of many racing processes take over a stale lock: no update is lost', async () => {
    for (const withDeadOwner of [false, true]) {
      const dir = tempDir();
      const path = storeFile(dir);
      const store = FileStore.open(path);
      const base = new GenerationSynchronizer('bumped', { store }).syncGen as number;
      // A lock left behind long ago, by a holder that is gone.
      mkdirSync(`${path}.lock`);
      if (withDeadOwner) {
        writeFileSync(`${path}.lock/owner`, JSON.stringify({ pid: 2 ** 22 + 7, host: 'elsewhere', createdAt: 0, nonce: 'x' }));
      }
      const old = new Date(Date.now() - 60_000);
      utimesSync(`${path}.lock`, old, old);

      const racers = Array.from({ length: 6 }, () => startWorker('bump-loop.mjs', ['file', path, '150']));
      workers.push(...racers);
      const results = (await Promise.all(racers.map((racer) => racer.next()))) as Array<{ failures: number }>;
      expect(results.map((result) => result.failures)).toEqual(racers.map(() => 0));
      expect(new GenerationSynchronizer('bumped', { store }).syncGen).toBe(base + 6 * 150);
      store.close();
    }
  });

  it('a writer stalled at any step cannot publish over a takeover: no acknowledged update lost, no generation goes back', async () => {
    // Issue 12 item 1. The stalled writer held the lock when it stopped; the lock goes stale while it sleeps
    // (a slow flush, a stall right before the rename), this process takes it over and writes three times.
    // Also under a file name with a space and a non-ASCII character: the fence must not depend on the name.
    const cases: Array<[string, string]> = [
      ['fdatasyncSync', 'generations.json'],
      ['renameSync', 'generations.json'],
      ['renameSync', 'my gens ✓.json'],
    ];
    for (const [stallIn, name] of cases) {
      const path = join(tempDir(), name);
      const store = FileStore.open(path, { staleLockMs: 2000 });
      const writer = new GenerationSynchronizer('k', { store });
      const reader = new GenerationSynchronizer('k', { store: FileStore.open(path) });
      const stalled = startWorker('stall-writer.mjs', [path, stallIn]);
      workers.push(stalled);
      const { syncGen: base } = await stalled.next<{ syncGen: number }>();
      expect(writer.syncGen).toBe(base);

      stalled.send('go');
      await eventually('the writer to stop itself', () => (processState(stalled.child.pid as number) === 'T' ? true : undefined));
      await new Promise((resolve) => setTimeout(resolve, 2200)); // its lock is now stale
      const acknowledged = [1, 2, 3].map(() => writer.markUpdated());
      expect(acknowledged).toEqual([true, true, true]);
      expect(writer.syncGen).toBe(base + 3);
      reader.refresh();
      expect(reader.syncGen).toBe(base + 3);

      stalled.child.kill('SIGCONT');
      const { ok } = await stalled.next<{ ok: boolean }>();
      expect(ok, `the writer stalled in ${stallIn} must report its update as not made`).toBe(false);
      await stalled.exited;
      // Nothing acknowledged is lost, and nobody who saw base + 3 is taken back.
      expect(reader.isExpired(), stallIn).toBe(false);
      expect(new GenerationSynchronizer('k', { store: FileStore.open(path) }).syncGen).toBe(base + 3);
      expect(writer.markUpdated()).toBe(true);
      expect(writer.syncGen).toBe(base + 4);
      store.close();
    }
  });

  it('a lock left by a worker thread terminated mid-write is taken over at once, though its process lives', async () => {
    // Issue 12 item 3: the owner's pid is alive (it is this process), its thread is not.
    const path = storeFile(tempDir());
    const store = FileStore.open(path, { lockTimeoutMs: 3000 });
    const sync = new GenerationSynchronizer('k', { store });
    const base = sync.syncGen as number;
    for (let round = 1; round <= 3; round++) {
      const thread = new NodeWorker(join(ROOT, 'test', 'fixtures', 'thread-writer.cjs'), { workerData: { path } });
      const said = await new Promise((resolve, reject) => {
        thread.once('message', resolve);
        thread.once('error', reject);
      });
      expect(said).toBe('writing');
      await thread.terminate();
      expect(readdirSync(`${path}.lock`).includes('owner')).toBe(true); // it died holding the lock
      // Before the fix this waited out the lock timeout and failed; a thread that is gone holds nothing.
      expect(sync.markUpdated(), `round ${round}`).toBe(true);
      expect(sync.syncGen).toBe(base + round);
    }
    // Its staging directories went with its locks; nothing it built was published.
    expect(readdirSync(dirname(path)).filter((name) => name.includes('.w.'))).toHaveLength(1);
    store.close();
  });

  it('a compromised lock does not crash the process, and a lock held too long never writes', async () => {
    const dir = tempDir();
    const path = storeFile(dir);
    FileStore.open(path).close();
    const lock = acquireFileLock(path, { timeoutMs: 1000, staleMs: 2000 });
    // Pretend another process judged it stale and took it over: proper-lockfile's timer notices and
    // reports it compromised (by default it would throw from the timer and kill the process).
    renameSync(`${path}.lock`, `${path}.lock-stolen`);
    await new Promise((resolve) => setTimeout(resolve, 1300));
    expect(() => lock.verify()).toThrow(StoreUnavailableError);
    expect(() => lock.verify()).toThrow(/compromised|held for more than|another process/);
    lock.release();

    const slow = acquireFileLock(path, { timeoutMs: 1000, staleMs: 2000 });
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect(() => slow.verify()).toThrow(/held for more than 1000 ms/);
    slow.release();
  });
});

describe('FileStore refuses files it must not use, and leaves them untouched', () => {
  const shmFile = (dir: string): string => {
    const path = join(dir, 'other.shm');
    SharedMemoryStore.open(path, { capacity: 4 }).close();
    return path;
  };
  const cases: Array<[string, (dir: string) => string, string, RegExp]> = [
    ['an empty file', (dir) => write(dir, ''), 'ERR_GENSYNC_FOREIGN_FILE', /empty file/],
    ['random bytes', (dir) => write(dir, Buffer.from(Array.from({ length: 500 }, (_, i) => (i * 7919) % 251))), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync file store/],
    ['a PNG', (dir) => write(dir, Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex')), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync/],
    ['a shared-memory store', shmFile, 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync file store/],
    ['another JSON document', (dir) => write(dir, '{"name":"package"}'), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync file store/],
    ['a JSON array', (dir) => write(dir, '[1,2]'), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync/],
    ['truncated JSON', (dir) => write(dir, document([entry('a', 1)]).slice(0, 40)), 'ERR_GENSYNC_CORRUPT_FILE', /not valid JSON/],
    ['a newer format', (dir) => write(dir, JSON.stringify({ format: 'generation-sync-file-store', version: 2, entries: [] })), 'ERR_GENSYNC_UNSUPPORTED_VERSION', /newer than format 1/],
    ['version 0', (dir) => write(dir, JSON.stringify({ format: 'generation-sync-file-store', version: 0, entries: [] })), 'ERR_GENSYNC_CORRUPT_FILE', /format version/],
    ['entries not a list', (dir) => write(dir, JSON.stringify({ format: 'generation-sync-file-store', version: 1, entries: {} })), 'ERR_GENSYNC_CORRUPT_FILE', /not a list/],
    ['a negative generation', (dir) => write(dir, document([entry('a', -1)])), 'ERR_GENSYNC_CORRUPT_FILE', /generation number -1/],
    ['a fractional generation', (dir) => write(dir, document([entry('a', 1.5)])), 'ERR_GENSYNC_CORRUPT_FILE', /generation number 1.5/],
    ['an unsafe generation', (dir) => write(dir, document([entry('a', 2 ** 60)])), 'ERR_GENSYNC_CORRUPT_FILE', /generation/],
    ['a duplicate key', (dir) => write(dir, document([entry('a', 1), entry('a', 2)])), 'ERR_GENSYNC_CORRUPT_FILE', /appears twice/],
    ['a missing flag', (dir) => write(dir, document([{ ...entry('a', 1), absent: 'no' as unknown as boolean }])), 'ERR_GENSYNC_CORRUPT_FILE', /"absent"/],
    ['a key that is not a string', (dir) => write(dir, document([{ ...entry('a', 1), key: 5 as unknown as string }])), 'ERR_GENSYNC_CORRUPT_FILE', /no valid key/],
  ];

  function write(dir: string, content: string | Buffer): string {
    const path = storeFile(dir);
    writeFileSync(path, content, { mode: 0o600 });
    return path;
  }

  it.each(cases)('%s', (_name, make, code, message) => {
    const path = make(tempDir());
    const before = fileHash(path);
    const error = thrown(() => FileStore.open(path));
    expect(error).toBeInstanceOf(StoreFormatError);
    expect((error as StoreFormatError).code).toBe(code);
    expect((error as Error).message).toMatch(message);
    expect(fileHash(path)).toBe(before);
  });

  it('a directory, a FIFO, a symlink, a hard link, another user\'s file, a world-writable file', () => {
    const dir = tempDir();
    const real = storeFile(tempDir());
    FileStore.open(real).close();
    const unsafe: Array<[string, string, RegExp]> = [];
    mkdirSync(join(dir, 'dir.json'));
    unsafe.push(['directory', join(dir, 'dir.json'), /directory/]);
    execFileSync('mkfifo', [join(dir, 'fifo.json')]);
    unsafe.push(['FIFO', join(dir, 'fifo.json'), /FIFO/]);
    symlinkSync(real, join(dir, 'link.json'));
    unsafe.push(['symlink', join(dir, 'link.json'), /symbolic link/]);
    const linked = storeFile(tempDir());
    FileStore.open(linked).close();
    linkSync(linked, join(dir, 'hard.json'));
    unsafe.push(['hard link', join(dir, 'hard.json'), /2 hard links/]);
    const foreign = storeFile(tempDir());
    FileStore.open(foreign).close();
    chownSync(foreign, 65534, 65534);
    unsafe.push(['other user', foreign, /belongs to user 65534/]);
    const loose = storeFile(tempDir());
    FileStore.open(loose).close();
    chmodSync(loose, 0o646);
    unsafe.push(['world-writable', loose, /writable by every user/]);

    for (const [name, path, message] of unsafe) {
      const error = thrown(() => FileStore.open(path));
      expect(error, name).toBeInstanceOf(UnsafeStoreError);
      expect((error as Error).message, name).toMatch(message);
    }
  });

  it('a file damaged while in use: keys read as expired, writes fail, nothing is overwritten, and it recovers when fixed', () => {
    const path = storeFile(tempDir());
    const store = FileStore.open(path);
    const logger = recordingLogger();
    const sync = new GenerationSynchronizer('k', { store, logger });
    const good = readFileSync(path);
    writeFileSync(`${path}.bad`, '{"format":"generation-sync-file-store","version":1,"entries":[{"key":', { mode: 0o600 });
    renameSync(`${path}.bad`, path);
    const damaged = fileHash(path);

    expect(sync.isExpired()).toBe(true);
    expect(sync.markUpdated()).toBe(false);
    expect(sync.refresh()).toBe(false);
    expect(fileHash(path)).toBe(damaged);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/damaged generation-sync file store/);

    writeFileSync(`${path}.fixed`, good, { mode: 0o600 });
    renameSync(`${path}.fixed`, path);
    expect(sync.isExpired()).toBe(false);
    expect(sync.markUpdated()).toBe(true);
    expect(logger.lines[1]).toMatch(/reaches its store again/);
    store.close();
  });
});

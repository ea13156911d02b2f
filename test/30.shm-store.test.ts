import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  fstatSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import {
  GenerationSynchronizer,
  InvalidArgumentError,
  OutOfRangeError,
  SharedMemoryStore,
  StoreClosedError,
  StoreFormatError,
  StoreFullError,
  StoreUnavailableError,
  UnsafeStoreError,
} from 'generation-sync';

import * as format from '../dist/stores/shm/shm-format.js';
import { WATCHER_CHECK_EVERY } from '../dist/stores/shm/shm-watch.js';
import { ask, recordingLogger, ROOT, startWorker, stopAll, tempDir, thrown, type Worker } from './helpers';

const workers: Worker[] = [];
afterEach(() => stopAll(workers.splice(0)));

const fileHash = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function freshStoreFile(dir: string, capacity = 16): string {
  const path = join(dir, 'store.shm');
  SharedMemoryStore.open(path, { capacity }).close();
  return path;
}

/** Rewrite bytes of a store file, optionally re-sealing the header checksum so only the field is wrong. */
function patch(path: string, offset: number, bytes: Buffer, reseal = false): void {
  const data = readFileSync(path);
  bytes.copy(data, offset);
  if (reseal) createHash('sha256').update(data.subarray(0, 56)).digest().subarray(0, 8).copy(data, format.H_CHECKSUM);
  writeFileSync(path, data);
}

const u32 = (value: number): Buffer => {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32LE(value);
  return buffer;
};

describe('SharedMemoryStore files', () => {
  it('creates a fully allocated file (its mode under any umask: 25.store-contract)', () => {
    const path = join(tempDir(), 'store.shm');
    const store = SharedMemoryStore.open(path, { capacity: 1000 });
    const stats = statSync(path);
    expect(stats.mode & 0o777).toBe(0o600);
    expect(stats.size).toBe(store.fileSize);
    expect(stats.blocks * 512).toBeGreaterThanOrEqual(stats.size);
    store.close();
  });

  it('applies the mode option exactly, and refuses modes that let others write or lock the owner out', () => {
    const dir = tempDir();
    const previous = process.umask(0o077);
    try {
      SharedMemoryStore.open(join(dir, 'group.shm'), { mode: 0o660 }).close();
    } finally {
      process.umask(previous);
    }
    expect(statSync(join(dir, 'group.shm')).mode & 0o777).toBe(0o660);
    expect(() => SharedMemoryStore.open(join(dir, 'x.shm'), { mode: 0o666 })).toThrow(OutOfRangeError);
    expect(() => SharedMemoryStore.open(join(dir, 'x.shm'), { mode: 0o400 })).toThrow(/owner read and write/);
  });

  it('creates the default directory 0700 under the temp directory, owned by this user', () => {
    const tmp = tempDir();
    const script = `
      const { defaultStore, defaultStorePath } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const store = defaultStore();
      console.log(JSON.stringify({ path: store.path, expected: defaultStorePath(), kind: store.kind }));
    `;
    const env = { ...process.env, TMPDIR: tmp, GENERATION_SYNC_DIR: '' };
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { env, encoding: 'utf8' })) as Record<string, string>;
    const dir = join(tmp, `generation-sync-${process.getuid?.()}`);
    expect(out).toEqual({ path: join(dir, 'generations.shm'), expected: join(dir, 'generations.shm'), kind: 'shm' });
    const stats = statSync(dir);
    expect(stats.mode & 0o777).toBe(0o700);
    expect(stats.uid).toBe(process.getuid?.());
    expect(statSync(out.path as string).mode & 0o777).toBe(0o600);

    // A default directory someone loosened is tightened again; one owned by another user is refused.
    chmodSync(dir, 0o755);
    execFileSync(process.execPath, ['-e', script], { env });
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    chownSync(dir, 65534, 65534);
    // Since issue 12 item 5 that is an outage, not an exception: nothing in the directory is used, every
    // operation fails with the reason, and one warning names the owner (test/36 covers recovery).
    const refused = spawnSync(
      process.execPath,
      [
        '-e',
        `const gs = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
         try { gs.defaultStore().bind('k', { expirationSecs: 60 }).fetchOrCreate(Date.now()); console.log('used'); }
         catch (error) { console.log(error.code + ' ' + error.message); }`,
      ],
      { env, encoding: 'utf8' },
    );
    expect(refused.stdout).toMatch(/^ERR_GENSYNC_UNSAFE_FILE .*belongs to user 65534/);
    expect(refused.stderr).toMatch(/GENSYNC_DEFAULT_DIRECTORY_UNSAFE[\s\S]*belongs to user 65534/);
    expect(readdirSync(dir)).toEqual(['generations.shm']); // the file made before the change of owner, untouched
  });

  it('uses GENERATION_SYNC_DIR when set, creating it if needed', () => {
    const dir = join(tempDir(), 'nested', 'app');
    const script = `console.log(require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))}).defaultStore().path)`;
    const out = execFileSync(process.execPath, ['-e', script], { env: { ...process.env, GENERATION_SYNC_DIR: dir }, encoding: 'utf8' });
    expect(out.trim()).toBe(join(dir, 'generations.shm'));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('keeps generations in the file across close and reopen, and in another process', () => {
    const dir = tempDir();
    const path = join(dir, 'store.shm');
    const store = SharedMemoryStore.open(path);
    const sync = new GenerationSynchronizer('persisted', { store });
    sync.markUpdated();
    const generation = sync.syncGen;
    store.close();
    const reopened = SharedMemoryStore.open(path);
    expect(new GenerationSynchronizer('persisted', { store: reopened }).syncGen).toBe(generation);
    reopened.close();
    const script = `
      const { SharedMemoryStore, GenerationSynchronizer } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      console.log(new GenerationSynchronizer('persisted', { store: SharedMemoryStore.open(${JSON.stringify(path)}) }).syncGen);
    `;
    expect(Number(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }))).toBe(generation);
  });

  it('sees changes made through another open of the same file in this process', () => {
    const path = freshStoreFile(tempDir());
    const a = SharedMemoryStore.open(path);
    const b = SharedMemoryStore.open(path);
    const mine = new GenerationSynchronizer('k', { store: a });
    const theirs = new GenerationSynchronizer('k', { store: b });
    theirs.markUpdated();
    expect(mine.isExpired()).toBe(true);
    a.close();
    b.close();
  });

  it('reports its entries, cleared and long keys included', () => {
    const store = SharedMemoryStore.open(join(tempDir(), 's.shm'));
    const clock = () => 1_700_000_000_000;
    new GenerationSynchronizer('a', { store, clock }).markUpdated();
    new GenerationSynchronizer('b', { store, clock }).clear();
    new GenerationSynchronizer('é'.repeat(200), { store, clock, normalizeCacheKey: false });
    const entries = store.entries();
    expect(entries.map(({ key, keyTruncated, generation }) => ({ key, keyTruncated, generation }))).toEqual([
      { key: 'a', keyTruncated: false, generation: 1_700_000_001 },
      { key: 'b', keyTruncated: false, generation: null },
      { key: 'é'.repeat(128), keyTruncated: true, generation: 1_700_000_000 },
    ]);
    expect(entries[0]?.createdAt).toBeInstanceOf(Date);
    expect(store.size).toBe(3);
    store.close();
  });

  it('refuses a new key with a typed error when full, while existing keys keep working', () => {
    const store = SharedMemoryStore.open(join(tempDir(), 'small.shm'), { capacity: 3 });
    const syncs = ['a', 'b', 'c'].map((key) => new GenerationSynchronizer(key, { store }));
    const error = thrown(() => new GenerationSynchronizer('d', { store }));
    expect(error).toBeInstanceOf(StoreFullError);
    expect((error as StoreFullError).code).toBe('ERR_GENSYNC_STORE_FULL');
    expect((error as Error).message).toMatch(/maximum of 3 keys.*larger "capacity"/);

    const observer = new GenerationSynchronizer('b', { store });
    expect(syncs[1]?.markUpdated()).toBe(true);
    expect(observer.isExpired()).toBe(true);
    // A cleared key keeps its place, so it can be re-created in a full store.
    syncs[0]?.clear();
    expect(syncs[0]?.refresh()).toBe(true);
    expect(store.size).toBe(3);
    store.close();
  });

  it('keeps the capacity a file was created with', () => {
    const path = join(tempDir(), 's.shm');
    SharedMemoryStore.open(path, { capacity: 5 }).close();
    const store = SharedMemoryStore.open(path, { capacity: 5000 });
    expect(store.capacity).toBe(5);
    store.close();
  });

  it('after close, reports keys as expired and refuses everything else', () => {
    const store = SharedMemoryStore.open(join(tempDir(), 's.shm'));
    const sync = new GenerationSynchronizer('k', { store });
    expect(sync.isExpired()).toBe(false);
    store.close();
    store.close();
    expect(store.closed).toBe(true);
    expect(sync.isExpired()).toBe(true);
    expect(() => sync.markUpdated()).toThrow(StoreClosedError);
    expect(() => sync.refresh()).toThrow(StoreClosedError);
    expect(() => new GenerationSynchronizer('k', { store })).toThrow(/was closed/);
  });
});

describe('SharedMemoryStore refuses files it must not use, and leaves them untouched', () => {
  const cases: Array<[string, (dir: string) => string, string, RegExp]> = [
    ['an empty file', (dir) => write(dir, Buffer.alloc(0)), 'ERR_GENSYNC_FOREIGN_FILE', /empty file/],
    ['random bytes', (dir) => write(dir, Buffer.from(Array.from({ length: 9000 }, (_, i) => (i * 7919) % 251))), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync/],
    ['a PNG', (dir) => write(dir, Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(100)])), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync/],
    ['a JSON file store', (dir) => write(dir, Buffer.from('{"format":"generation-sync","keys":{}}')), 'ERR_GENSYNC_FOREIGN_FILE', /not a generation-sync/],
    ['a newer format', (dir) => patched(dir, format.H_VERSION, u32(3), true), 'ERR_GENSYNC_UNSUPPORTED_VERSION', /newer than format 2/],
    ['format version 0', (dir) => patched(dir, format.H_VERSION, u32(0), true), 'ERR_GENSYNC_CORRUPT_FILE', /format version 0/],
    ['the other byte order', (dir) => patched(dir, format.H_BYTE_ORDER, u32(0x04030201), true), 'ERR_GENSYNC_FOREIGN_FILE', /other byte order/],
    ['a damaged checksum', (dir) => patched(dir, format.H_CHECKSUM, Buffer.from([1, 2, 3])), 'ERR_GENSYNC_CORRUPT_FILE', /checksum/],
    ['a changed capacity', (dir) => patched(dir, format.H_CAPACITY, u32(17)), 'ERR_GENSYNC_CORRUPT_FILE', /checksum/],
    ['an impossible capacity', (dir) => patched(dir, format.H_CAPACITY, u32(0), true), 'ERR_GENSYNC_CORRUPT_FILE', /capacity 0/],
    ['a wrong record size', (dir) => patched(dir, format.H_RECORD_SIZE, u32(64), true), 'ERR_GENSYNC_CORRUPT_FILE', /record size/],
    ['a wrong table size', (dir) => patched(dir, format.H_TABLE_SIZE, u32(1 << 20), true), 'ERR_GENSYNC_CORRUPT_FILE', /table size/],
    ['a record count above capacity', (dir) => patched(dir, format.H_RECORD_COUNT, u32(1000)), 'ERR_GENSYNC_CORRUPT_FILE', /record count/],
    ['a truncated file', (dir) => truncated(dir, 8192), 'ERR_GENSYNC_CORRUPT_FILE', /file size is 8192/],
    ['a file cut inside its header', (dir) => truncated(dir, 100), 'ERR_GENSYNC_CORRUPT_FILE', /shorter than its header/],
    ['an extended file', (dir) => extended(dir), 'ERR_GENSYNC_CORRUPT_FILE', /file size/],
  ];

  function write(dir: string, bytes: Buffer): string {
    const path = join(dir, 'store.shm');
    writeFileSync(path, bytes, { mode: 0o600 });
    return path;
  }
  function patched(dir: string, offset: number, bytes: Buffer, reseal = false): string {
    const path = freshStoreFile(dir);
    patch(path, offset, bytes, reseal);
    return path;
  }
  function truncated(dir: string, size: number): string {
    const path = freshStoreFile(dir);
    writeFileSync(path, readFileSync(path).subarray(0, size));
    return path;
  }
  function extended(dir: string): string {
    const path = freshStoreFile(dir);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(1), 0, 1, fstatSync(fd).size);
    closeSync(fd);
    return path;
  }

  it.each(cases)('%s', (_name, make, code, message) => {
    const path = make(tempDir());
    const before = fileHash(path);
    const error = thrown(() => SharedMemoryStore.open(path));
    expect(error).toBeInstanceOf(StoreFormatError);
    expect((error as StoreFormatError).code).toBe(code);
    expect((error as Error).message).toMatch(message);
    expect((error as StoreFormatError).path).toBe(path);
    expect(fileHash(path)).toBe(before);
  });

  it('a directory, a FIFO, a symlink, a hard link, another user\'s file, a world-writable file', () => {
    const dir = tempDir();
    const target = freshStoreFile(dir);
    const unsafe: Array<[string, string, RegExp]> = [];

    mkdirSync(join(dir, 'dir.shm'));
    unsafe.push(['directory', join(dir, 'dir.shm'), /directory/]);
    execFileSync('mkfifo', [join(dir, 'fifo.shm')]);
    unsafe.push(['FIFO', join(dir, 'fifo.shm'), /FIFO, not a regular file/]);
    symlinkSync(target, join(dir, 'link.shm'));
    unsafe.push(['symlink', join(dir, 'link.shm'), /symbolic link/]);
    const linked = freshStoreFile(tempDir());
    linkSync(linked, join(dir, 'hard.shm'));
    unsafe.push(['hard link', join(dir, 'hard.shm'), /2 hard links/]);
    const foreign = freshStoreFile(tempDir());
    chownSync(foreign, 65534, 65534);
    unsafe.push(['other user', foreign, /belongs to user 65534/]);
    const loose = freshStoreFile(tempDir());
    chmodSync(loose, 0o666);
    unsafe.push(['world-writable', loose, /writable by every user/]);

    for (const [name, path, message] of unsafe) {
      const error = thrown(() => SharedMemoryStore.open(path));
      expect(error, name).toBeInstanceOf(UnsafeStoreError);
      expect((error as UnsafeStoreError).code, name).toBe('ERR_GENSYNC_UNSAFE_FILE');
      expect((error as Error).message, name).toMatch(message);
    }
  });
});

describe('SharedMemoryStore arguments', () => {
  it('rejects bad options and paths with errors that name them', () => {
    const dir = tempDir();
    const path = join(dir, 's.shm');
    expect(() => SharedMemoryStore.open(path, { capacity: 0 })).toThrow(/"capacity" must be an integer from 1/);
    expect(() => SharedMemoryStore.open(path, { capacity: 1.5 })).toThrow(OutOfRangeError);
    expect(() => SharedMemoryStore.open(path, { capacity: '10' as unknown as number })).toThrow(InvalidArgumentError);
    expect(() => SharedMemoryStore.open(path, { lockTimeoutMs: -1 })).toThrow(/"lockTimeoutMs"/);
    expect(() => SharedMemoryStore.open(path, 'fast' as never)).toThrow(/options must be an object/);
    expect(() => SharedMemoryStore.open('')).toThrow(/non-empty string/);
    expect(() => SharedMemoryStore.open(42 as unknown as string)).toThrow(InvalidArgumentError);
    expect(() => SharedMemoryStore.open(join(dir, 'missing', 'dir', 's.shm'))).toThrow(
      expect.objectContaining({ code: 'ERR_GENSYNC_STORE_IO' }),
    );
  });
});

describe('the key-creation lock', () => {
  it('a creation that cannot get the lock is an outage: logged once, expired, then recovered', async () => {
    const path = freshStoreFile(tempDir());
    const holder = startWorker('hold-lock.mjs', [path]);
    workers.push(holder);
    await holder.next();

    const store = SharedMemoryStore.open(path, { lockTimeoutMs: 50 });
    const logger = recordingLogger();
    const sync = new GenerationSynchronizer('new-key', { store, logger });
    expect(sync.syncGen).toBeNull();
    expect(sync.isExpired()).toBe(true);
    expect(sync.markUpdated()).toBe(false);
    expect(sync.refresh()).toBe(false);
    expect(logger.lines).toHaveLength(1);
    expect(logger.lines[0]).toMatch(/^error: generation-sync: unexpected error checking for initial state in .*"new-key".*Is the store available\?.*held the key-creation lock/);

    holder.send('release');
    await holder.next();
    expect(sync.refresh()).toBe(true);
    expect(sync.syncGen).not.toBeNull();
    expect(sync.isExpired()).toBe(false);
    expect(logger.lines).toHaveLength(2);
    expect(logger.lines[1]).toMatch(/^info: .*reaches its store again/);
    store.close();
  });

  it('is not dropped when the holder opens and closes the file elsewhere', async () => {
    const path = freshStoreFile(tempDir());
    const holder = startWorker('hold-lock.mjs', [path, '--touch']);
    workers.push(holder);
    await holder.next();
    const store = SharedMemoryStore.open(path, { lockTimeoutMs: 100 });
    const sync = new GenerationSynchronizer('k', { store, logger: recordingLogger() });
    expect(sync.syncGen).toBeNull();
    store.close();
  });

  it('an outage is a StoreUnavailableError with its own code', async () => {
    const path = freshStoreFile(tempDir());
    const holder = startWorker('hold-lock.mjs', [path]);
    workers.push(holder);
    await holder.next();
    const store = SharedMemoryStore.open(path, { lockTimeoutMs: 10 });
    const binding = store.bind('k', { expirationSecs: 1 });
    expect(() => binding.fetchOrCreate(1)).toThrow(StoreUnavailableError);
    expect(() => binding.fetchOrCreate(1)).toThrow(expect.objectContaining({ code: 'ERR_GENSYNC_LOCK_TIMEOUT' }));
    store.close();
  });
});

describe('the outside review of the shared-memory store, in one process (each of these failed at 1545de2)', () => {
  /** Write `value` as a u32 at `offset` of the file through a descriptor of its own, as a stray writer would. */
  function poke(path: string, offset: number, value: number): void {
    const fd = openSync(path, 'r+');
    try {
      writeSync(fd, u32(value), 0, 4, offset);
    } finally {
      closeSync(fd);
    }
  }

  it.each([
    ['the record count', format.H_RECORD_COUNT],
    ['the pending-creation field', format.H_PENDING_RECORD],
  ])('item 9: %s damaged while in use is a typed corrupt-file error, never a RangeError or "store full"', (_name, offset) => {
    const path = freshStoreFile(tempDir(), 16);
    const store = SharedMemoryStore.open(path, { lockTimeoutMs: 200 });
    new GenerationSynchronizer('a', { store, normalizeCacheKey: false });
    poke(path, offset, 0xfffffff0);
    const error = thrown(() => store.bind('b', { expirationSecs: 60 }).fetchOrCreate(Date.now()));
    expect(error).toBeInstanceOf(StoreFormatError);
    expect((error as StoreFormatError).code).toBe('ERR_GENSYNC_CORRUPT_FILE');
    const logger = recordingLogger();
    const sync = new GenerationSynchronizer('c', { store, normalizeCacheKey: false, logger });
    expect(sync.syncGen).toBeNull();
    expect(logger.lines.join('\n')).toMatch(/ERR_GENSYNC_CORRUPT_FILE|damaged|corrupt/i);
    if (offset === format.H_RECORD_COUNT) expect((thrown(() => store.entries()) as StoreFormatError).code).toBe('ERR_GENSYNC_CORRUPT_FILE');
    store.close();
  });

  it('item 11: close() releases the mapping at once: 300 open/close cycles leave no mapping behind', () => {
    const dir = tempDir();
    const path = join(dir, 'g.shm');
    const mappingsOf = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes(path)).length;
    let last: GenerationSynchronizer | undefined;
    for (let cycle = 0; cycle < 300; cycle++) {
      const store = SharedMemoryStore.open(path);
      last = new GenerationSynchronizer('k', { store });
      last.markUpdated();
      expect(mappingsOf()).toBeGreaterThan(0);
      store.close();
    }
    expect(mappingsOf()).toBe(0);
    // A synchronizer of a closed store touches no unmapped memory: it reports its key as expired.
    expect(last?.isExpired()).toBe(true);
  });

  it('worker threads that open a store and end without closing it (by themselves, or terminate()d while watching) leave no mapping (docs/threads.md)', async () => {
    const { Worker: ThreadWorker } = await import('node:worker_threads');
    const path = join(tempDir(), 'g.shm');
    const mappingsOf = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes(path)).length;
    const source = `
      const { parentPort } = require('node:worker_threads');
      const { GenerationSynchronizer, SharedMemoryStore } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const sync = new GenerationSynchronizer('k', { store: SharedMemoryStore.open(${JSON.stringify(path)}) });
      sync.markUpdated();
      sync.watch(() => undefined);
      parentPort.postMessage(sync.syncGen);
      parentPort.once('message', () => process.exit(0));
    `;
    const generations: number[] = [];
    for (let round = 0; round < 10; round++) {
      const worker = new ThreadWorker(source, { eval: true });
      generations.push(await new Promise<number>((resolve) => worker.once('message', resolve)));
      const ended = new Promise((resolve) => worker.once('exit', resolve));
      if (round % 2 === 0) worker.postMessage('end');
      else void worker.terminate();
      await ended;
    }
    // Each worker's bump reached the one shared store, and every mapping went with its thread.
    expect(generations.slice(1).every((generation, i) => generation === (generations[i] as number) + 1)).toBe(true);
    expect(mappingsOf()).toBe(0);
  });

  it('item 12: a watch whose watch lock cannot be taken fails with a typed error and leaves no WATCHED flag', async () => {
    const path = freshStoreFile(tempDir());
    const store = SharedMemoryStore.open(path, { lockTimeoutMs: 100 });
    const sync = new GenerationSynchronizer('w', { store });
    const holder = startWorker('hold-lock.mjs', [path, '--byte', String(format.WATCH_LOCK_BASE)]);
    workers.push(holder);
    await holder.next();
    const error = thrown(() => sync.watch(() => {}));
    expect(error).toBeInstanceOf(StoreUnavailableError);
    expect((error as StoreUnavailableError).code).toBe('ERR_GENSYNC_LOCK_TIMEOUT');
    const header = format.decodeHeader(readFileSync(path).subarray(0, format.HEADER_SIZE), statSync(path).size, path);
    const word = readFileSync(path).readBigInt64LE(header.recordsOffset + format.R_GENERATION);
    expect(word & format.WATCHED).toBe(0n);
    holder.send('release');
    await holder.next();
    store.close();
  });

  it('a WATCHED flag left by a watcher that died is cleared within WATCHER_CHECK_EVERY changes; a live watcher keeps it', async () => {
    const path = freshStoreFile(tempDir());
    const store = SharedMemoryStore.open(path);
    const sync = new GenerationSynchronizer('w', { store });
    const header = format.decodeHeader(readFileSync(path).subarray(0, format.HEADER_SIZE), statSync(path).size, path);
    const flagged = (): boolean => (readFileSync(path).readBigInt64LE(header.recordsOffset + format.R_GENERATION) & format.WATCHED) !== 0n;
    const watcher = startWorker('worker.mjs', ['shm', path]);
    workers.push(watcher);
    await watcher.next(); // its "ready", before the command's answer (under emulation it comes late)
    await ask(watcher, { cmd: 'watchKey', key: 'w' });
    for (let i = 0; i < 3 * WATCHER_CHECK_EVERY; i++) expect(sync.markUpdated()).toBe(true);
    expect(flagged()).toBe(true);
    watcher.child.kill('SIGKILL');
    await watcher.exited;
    for (let i = 0; i < WATCHER_CHECK_EVERY; i++) expect(sync.markUpdated()).toBe(true);
    expect(flagged()).toBe(false);
    store.close();
  });

  it('item 12: the addon refuses a wake offset that is not a finite offset inside the buffer', async () => {
    const { nativeAddon } = (await import('../dist/stores/shm/native.js')) as typeof import('../src/stores/shm/native');
    const addon = nativeAddon();
    for (const offset of [Infinity, -Infinity, Number.NaN, 8, 2 ** 64, 1.5]) {
      expect(() => addon.wake(new ArrayBuffer(8), offset)).toThrow(RangeError);
    }
  });
});

/**
 * The fallback store: generations in one JSON file, for hosts where the
 * native addon cannot be built or loaded. This module is the store's front
 * and its reading and writing of the file; beside it:
 *
 * ```
 * file-store.ts    the front; snapshots of the file, writes under the lock
 *   file-lock.ts   the writer lock, its fence and its takeover
 *   file-watch.ts  fs.watch and the safety poll
 *   file-format.ts what the file holds; parsing and checking it
 * ```
 *
 * @module
 */

import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fdatasyncSync,
  fstatSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { dirname, join } from 'node:path';

import { corruptFileError, StoreClosedError, StoreError } from '../../store/errors';
import { CallsBinding, type KeyCalls } from '../../store/binding';
import { acquireFileLock, lostLockError, removeOwnStagingDirectory, type HeldFileLock } from './file-lock';
import {
  checkDirectoryChain,
  checkLocalFilesystem,
  checkStoreFile,
  errnoCode,
  fileModeOption,
  ioError,
  lockTimeoutOption,
  OPEN_NEW,
  OPEN_READ,
  openFailure,
  otherStoreBeside,
  preparedDefaultDirectory,
  STORE_FILE_NAMES,
  publishWithoutReplacing,
  removeAbandonedFiles,
  storePathArgument,
  temporaryName,
} from '../../system/filesystem';
import { pause } from '../../system/pause';
import { checkpoint } from '../../system/checkpoints';
import { unixSecond, type BindOptions, type GenerationListener, type KeyBinding, type Store, type StoreEntry } from '../../store/store';
import { optionalFunction, optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import { checkGeneration, isLive, MAX_FILE_STORE_BYTES, parseStoreFile, serialize, type FileEntry } from './file-format';
import { FileWatching } from './file-watch';
import { trace } from '../../store/trace';

/** File name of the file store in the default directory. */
export const FILE_STORE_NAME = STORE_FILE_NAMES.file;

const DEFAULT_STALE_LOCK_MS = 10_000;
const MIN_STALE_LOCK_MS = 2000;
/** Attempts to read a file another process is publishing with link + unlink at that moment. */
const READ_ATTEMPTS = 5;
const READ_RETRY_PAUSE_MS = 2;
export { WATCH_SAFETY_POLL_MS } from './file-watch';

/** Options of {@link FileStore.open}. */
export interface FileStoreOptions {
  /**
   * Permission bits of the store file, applied exactly whatever the umask.
   * @default 0o600
   */
  readonly mode?: number | undefined;
  /**
   * How long a write waits for another process's writer lock, in
   * milliseconds, before giving up with `ERR_GENSYNC_LOCK_TIMEOUT`.
   * @default 5000
   */
  readonly lockTimeoutMs?: number | undefined;
  /**
   * When a writer lock counts as abandoned although its holder is not
   * provably gone (it is on another host or in another container, or it
   * hangs), in milliseconds. Taking a lock over from a holder that is only
   * slow is safe: that holder's write is then refused. A writer that held
   * the lock for half this long does not write. proper-lockfile's minimum
   * is 2000.
   * @default 10000
   */
  readonly staleLockMs?: number | undefined;
  /**
   * The clock for key expiry and timestamps, in milliseconds since the
   * epoch. Inject one in tests.
   * @default Date.now
   */
  readonly clock?: (() => number) | undefined;
}

/** One parsed version of the file, with the descriptor that pins its inode. */
interface Snapshot {
  /** Open descriptor of the version read; -1 when there was no file; NOT_HELD on Windows (see HOLD_OPEN). */
  readonly fd: number;
  readonly ino: number;
  readonly dev: number;
  /** Size and modification time of the version read, which tell versions apart where no descriptor is held. */
  readonly size?: number;
  readonly mtimeMs?: number;
  readonly entries: ReadonlyMap<string, FileEntry>;
}

/**
 * Whether the current version is kept open. Elsewhere an open descriptor
 * pins the inode, so the path naming the same inode means the same version.
 * Windows refuses to rename over a file that any process holds open, so
 * there nothing is kept open: a version is told by its file index, size and
 * modification time, and a rename that meets a reader's brief open is tried
 * again (see RENAME_RETRY_MS).
 */
const HOLD_OPEN = process.platform !== 'win32';
/** A version read and closed again (Windows). */
const NOT_HELD = -2;
/** How long a write on Windows keeps trying a rename that another process's open file refuses. */
const RENAME_RETRY_MS = 2000;

const NO_FILE: Snapshot = { fd: -1, ino: -1, dev: -1, entries: new Map() };

/** Open stores per path in this thread: the last to close removes the thread's writer staging directory. */
const openStores = new Map<string, number>();

/**
 * Generations in one JSON file, for hosts without the native addon.
 *
 * Writers take a proper-lockfile lock, read the file, change it, write a
 * temporary file and rename it over the store, so readers never need the
 * lock and always see a whole old or whole new file. A reader keeps the
 * version it parsed open; because files are only ever replaced, never
 * changed in place, one `stat` of the path tells whether it still names
 * that same inode (which cannot be reused while it is held open), so an
 * unchanged file is never parsed twice. `isExpired()` costs one `stat`
 * (about a microsecond) instead of the shared-memory store's 15 ns.
 *
 * Keys expire `cacheExpirationSecs` after they are created, like
 * memcached's and Redis's keys; an expired or cleared key reads as absent
 * but keeps its highest generation, so a re-created key continues above it.
 *
 * A file that is not a store of this kind, is damaged, or comes from a
 * newer version is never repaired or overwritten: every operation on it
 * fails with a {@link StoreFormatError} (which the synchronizers treat as an
 * outage: they log it and report keys as expired) until an operator
 * removes or fixes it. Recovering automatically could lower a generation
 * that some process still holds, and that process would then miss changes.
 *
 * @example
 * const store = FileStore.open('/var/lib/myapp/generations.json');
 * const settings = new GenerationSynchronizer('settings', { store });
 */
export class FileStore implements Store {
  readonly kind = 'file';
  /** Absolute path of the store file. */
  readonly path: string;
  readonly #mode: number;
  readonly #lockTimeoutMs: number;
  readonly #staleLockMs: number;
  readonly #clock: () => number;
  #snapshot: Snapshot = NO_FILE;
  #closed = false;
  readonly #watching: FileWatching;
  /** The four calls the bindings make, kept off the public class. */
  readonly #calls: KeyCalls = {
    generationOf: (key) => this.#generationOf(key),
    fetchOrCreate: (key, now, expirationSecs) => this.#fetchOrCreate(key, now, expirationSecs),
    increment: (key) => this.#increment(key),
    delete: (key) => this.#delete(key),
  };

  private constructor(path: string, mode: number, lockTimeoutMs: number, staleLockMs: number, clock: () => number) {
    this.path = path;
    this.#mode = mode;
    this.#lockTimeoutMs = lockTimeoutMs;
    this.#staleLockMs = staleLockMs;
    this.#clock = clock;
    this.#watching = new FileWatching(path, (key) => this.#generationOf(key), () => this.#closed);
  }

  /**
   * Open the store file at `path`, creating it if it does not exist. Without
   * a path, opens `generations.json` in the default directory
   * (`$GENERATION_SYNC_DIR`, else `<os.tmpdir()>/generation-sync-<uid>/`).
   */
  static open(path?: string, options?: FileStoreOptions): FileStore {
    const opts = optionsObject(options, 'FileStore options');
    const mode = fileModeOption(opts.mode);
    const lockTimeoutMs = lockTimeoutOption(opts.lockTimeoutMs);
    const staleLockMs = optionalInteger(opts.staleLockMs, 'staleLockMs', DEFAULT_STALE_LOCK_MS, {
      min: MIN_STALE_LOCK_MS,
      max: 2 ** 31 - 1,
    });
    const clock = optionalFunction(opts.clock, 'clock', Date.now);
    const file = path === undefined ? join(preparedDefaultDirectory(), FILE_STORE_NAME) : storePathArgument(path);
    checkDirectoryChain(dirname(file));
    checkLocalFilesystem(dirname(file));

    removeAbandonedFiles(file);
    const store = new FileStore(file, mode, lockTimeoutMs, staleLockMs, clock);
    if (store.#current() === NO_FILE) {
      store.#createEmptyFile();
      if (store.#current() === NO_FILE) throw ioError(new Error('the file vanished as it was created'), 'create the store', file);
    }
    otherStoreBeside(file, 'file');
    openStores.set(file, (openStores.get(file) ?? 0) + 1);
    return store;
  }

  get closed(): boolean {
    return this.#closed;
  }

  bind(key: string, options: BindOptions): KeyBinding {
    this.#checkOpen();
    return new CallsBinding(wellFormedString(key, 'key'), this.#calls, options.expirationSecs);
  }

  entries(): StoreEntry[] {
    this.#checkOpen();
    const now = this.#clock();
    return [...this.#current().entries].map(([key, entry]) => ({
      key,
      keyTruncated: false,
      generation: isLive(entry, now) ? entry.generation : null,
      createdAt: new Date(entry.createdAt),
      updatedAt: new Date(entry.updatedAt),
    }));
  }

  /**
   * Call `listener` soon after the generation of `key` changes, in any
   * process, until the returned function is called (see {@link Store.watch}).
   * An `fs.watch` on the store's directory reports replacements of the file
   * at once; a check every 500 ms catches anything it misses (some
   * filesystems and containers do not deliver inotify events). Neither keeps
   * the process alive.
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    this.#checkOpen();
    return this.#watching.watch(wellFormedString(key, 'key'), since, listener, onClose);
  }

  /** {@link close}, for `using store = FileStore.open(…)`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Close the file. Bindings made from this store then throw {@link StoreClosedError}. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watching.close(new StoreClosedError(`The store at ${this.path} was closed while a watch was pending.`, { path: this.path }));
    this.#replaceSnapshot(NO_FILE);
    const open = (openStores.get(this.path) ?? 1) - 1;
    if (open > 0) {
      openStores.set(this.path, open);
    } else {
      openStores.delete(this.path);
      removeOwnStagingDirectory(this.path);
    }
  }

  /** The live generation of `key`, or null when absent or expired. */
  #generationOf(key: string): number | null {
    this.#checkOpen();
    const entry = this.#current().entries.get(key);
    return entry !== undefined && isLive(entry, this.#clock()) ? entry.generation : null;
  }

  #fetchOrCreate(key: string, now: number, expirationSecs: number): number {
    const existing = this.#generationOf(key);
    if (existing !== null) return existing;
    const seed = unixSecond(now);
    return this.#mutate((entries, now) => {
      const entry = entries.get(key);
      if (entry !== undefined && isLive(entry, now)) return { result: entry.generation, changed: false };
      const generation = entry === undefined ? seed : Math.max(seed, entry.generation + 1);
      checkGeneration(generation, key, this.path);
      entries.set(key, {
        generation,
        absent: false,
        expiresAt: now + expirationSecs * 1000,
        createdAt: entry?.createdAt ?? now,
        updatedAt: now,
      });
      if (trace.enabled) trace('creating key %j in %s (generation %d)', key, this.path, generation);
      return { result: generation, changed: true };
    });
  }

  /** The incremented generation, or null (nothing written) when the key is absent or expired. */
  #increment(key: string): number | null {
    this.#checkOpen();
    return this.#mutate((entries, now) => {
      const entry = entries.get(key);
      if (entry === undefined || !isLive(entry, now)) return { result: null, changed: false };
      const generation = entry.generation + 1;
      checkGeneration(generation, key, this.path);
      entries.set(key, { ...entry, generation, updatedAt: now });
      return { result: generation, changed: true };
    });
  }

  #delete(key: string): void {
    this.#checkOpen();
    if (this.#generationOf(key) === null) return;
    this.#mutate((entries, now) => {
      const entry = entries.get(key);
      if (entry === undefined || !isLive(entry, now)) return { result: undefined, changed: false };
      entries.set(key, { ...entry, absent: true, updatedAt: now });
      return { result: undefined, changed: true };
    });
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new StoreClosedError(`The store at ${this.path} was closed; open it again to keep using it.`, { path: this.path });
    }
  }

  /** The current version of the file, re-read only if the path now names another inode. */
  #current(): Snapshot {
    for (let attempt = 1; ; attempt++) {
      let stats: Stats | undefined;
      try {
        stats = statSync(this.path, { throwIfNoEntry: false });
      } catch (error) {
        throw ioError(error, 'inspect', this.path);
      }
      if (stats === undefined) return this.#replaceSnapshot(NO_FILE);
      const held = this.#snapshot;
      if (held.fd >= 0 && stats.ino === held.ino && stats.dev === held.dev) return held;
      if (held.fd === NOT_HELD && stats.ino === held.ino && stats.dev === held.dev && stats.size === held.size && stats.mtimeMs === held.mtimeMs) return held;
      const snapshot = this.#read(attempt === READ_ATTEMPTS);
      if (snapshot !== undefined) return this.#replaceSnapshot(snapshot);
      pause(READ_RETRY_PAUSE_MS);
    }
  }

  /**
   * Read and parse the file now at the path; undefined if it changed under
   * us and should be read again, unless this is the `last` attempt.
   */
  #read(last: boolean): Snapshot | undefined {
    // Another version is at the path: before opening it, make sure that the path still leads where it did.
    checkDirectoryChain(dirname(this.path));
    let fd: number;
    try {
      fd = openSync(this.path, OPEN_READ);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return NO_FILE;
      throw openFailure(error, this.path);
    }
    try {
      const stats = fstatSync(fd);
      // Replaced between open and fstat (no names left), or being published with link() (two names for an instant).
      if (stats.isFile() && stats.nlink !== 1 && !last) {
        closeSync(fd);
        return undefined;
      }
      checkStoreFile(stats, this.path);
      if (stats.size > MAX_FILE_STORE_BYTES) {
        throw corruptFileError(this.path, 'file store', `it is ${stats.size} bytes, larger than a file store can be (${MAX_FILE_STORE_BYTES} bytes)`);
      }
      const entries = parseStoreFile(readFileSync(fd, 'utf8'), this.path);
      if (!HOLD_OPEN) {
        closeSync(fd);
        return { fd: NOT_HELD, ino: stats.ino, dev: stats.dev, size: stats.size, mtimeMs: stats.mtimeMs, entries };
      }
      return { fd, ino: stats.ino, dev: stats.dev, entries };
    } catch (error) {
      closeSync(fd);
      if (error instanceof StoreError) throw error;
      throw ioError(error, 'read', this.path);
    }
  }

  #replaceSnapshot(snapshot: Snapshot): Snapshot {
    const previous = this.#snapshot;
    this.#snapshot = snapshot;
    if (previous.fd >= 0 && previous.fd !== snapshot.fd) closeSync(previous.fd);
    return snapshot;
  }

  /**
   * Read, change and replace the file under the writer lock. `change`
   * edits a private copy of the entries and says whether to write it.
   */
  #mutate<T>(change: (entries: Map<string, FileEntry>, now: number) => { result: T; changed: boolean }): T {
    const lock = acquireFileLock(this.path, { timeoutMs: this.#lockTimeoutMs, staleMs: this.#staleLockMs });
    try {
      if (lock.recovered) removeAbandonedFiles(this.path);
      const entries = new Map(this.#current().entries);
      checkpoint('file-write', 'read');
      const { result, changed } = change(entries, this.#clock());
      if (changed) this.#write(entries, lock);
      return result;
    } finally {
      lock.release();
    }
  }

  /**
   * Build `entries` as a file in the lock's staging directory and rename it
   * over the store; keep it as the current snapshot. The rename is the
   * fence: it fails (ENOENT) if another process took the lock over, because
   * that process removed the staging directory first.
   */
  #write(entries: ReadonlyMap<string, FileEntry>, lock: HeldFileLock): void {
    const temporary = join(lock.staging, `${randomBytes(6).toString('hex')}.tmp`);
    const lost = (error: unknown): StoreError =>
      error instanceof StoreError
        ? error
        : errnoCode(error) === 'ENOENT'
          ? lostLockError(this.path, 'another process took it over')
          : ioError(error, 'write', this.path);
    let fd: number;
    try {
      fd = openSync(temporary, OPEN_NEW, this.#mode);
    } catch (error) {
      throw lost(error);
    }
    try {
      this.#fill(fd, entries);
      lock.verify();
      if (HOLD_OPEN) {
        renameSync(temporary, this.path);
      } else {
        const { size, mtimeMs } = fstatSync(fd);
        closeSync(fd);
        fd = NOT_HELD;
        renameOverReaders(temporary, this.path);
        // Under the writer lock nobody else replaces the file: the path names what was just written.
        const { ino, dev } = statSync(this.path);
        checkpoint('file-write', 'renamed');
        this.#replaceSnapshot({ fd: NOT_HELD, ino, dev, size, mtimeMs, entries });
        return;
      }
    } catch (error) {
      if (fd >= 0) closeSync(fd);
      removeQuietly(temporary);
      throw lost(error);
    }
    checkpoint('file-write', 'renamed');
    const { ino, dev } = fstatSync(fd);
    this.#replaceSnapshot({ fd, ino, dev, entries });
  }

  /** Publish an empty store, unless another process publishes one first. */
  #createEmptyFile(): void {
    const temporary = temporaryName(this.path);
    let fd: number;
    try {
      fd = openSync(temporary, OPEN_NEW, this.#mode);
    } catch (error) {
      throw ioError(error, 'create the store', this.path);
    }
    try {
      this.#fill(fd, new Map());
      publishWithoutReplacing(temporary, this.path);
    } catch (error) {
      throw error instanceof StoreError ? error : ioError(error, 'create the store', this.path);
    } finally {
      closeSync(fd);
      removeQuietly(temporary);
    }
  }

  /** Write `entries` into the new file `fd` in full, with its mode set exactly, and flush it. */
  #fill(fd: number, entries: ReadonlyMap<string, FileEntry>): void {
    checkpoint('file-write', 'temp-opened');
    fchmodSync(fd, this.#mode);
    writeAll(fd, serialize(entries));
    checkpoint('file-write', 'temp-written');
    fdatasyncSync(fd);
    checkpoint('file-write', 'temp-synced');
  }
}

/** Remove a temporary file that may already be gone (renamed into place, or never made). */
function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

function writeAll(fd: number, text: string): void {
  const bytes = Buffer.from(text, 'utf8');
  let offset = 0;
  while (offset < bytes.length) offset += writeSync(fd, bytes, offset, bytes.length - offset, offset);
}

/**
 * Windows: rename `from` over `to`, trying again while another process has
 * `to` open for a moment (a reader between its open and its close), for at
 * most RENAME_RETRY_MS.
 */
function renameOverReaders(from: string, to: string): void {
  const deadline = Date.now() + RENAME_RETRY_MS;
  for (let pauseMs = 1; ; pauseMs = Math.min(pauseMs * 2, 20)) {
    try {
      renameSync(from, to);
      return;
    } catch (error) {
      const code = errnoCode(error);
      if ((code !== 'EPERM' && code !== 'EACCES' && code !== 'EBUSY') || Date.now() >= deadline) throw error;
    }
    pause(pauseMs);
  }
}

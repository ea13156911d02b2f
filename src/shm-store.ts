/**
 * The default store: generations in a memory-mapped file shared by every
 * process on the host, read and bumped with lock-free atomics.
 *
 * @module
 */

import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fdatasyncSync,
  fstatSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { dirname, join } from 'node:path';

import {
  StoreClosedError,
  StoreError,
  StoreFormatError,
  StoreFullError,
  StoreUnavailableError,
  UnsafeStoreError,
} from './errors';
import {
  checkFileMode,
  checkLocalFilesystem,
  checkStoreFile,
  DEFAULT_FILE_MODE,
  errnoCode,
  ioError,
  OPEN_EXISTING,
  openFailure,
  publishWithoutReplacing,
  storePathArgument,
  OPEN_NEW,
  preparedDefaultDirectory,
} from './filesystem';
import { nativeAddon, type NativeAddon, type NativeWatcher } from './native';
import { pause } from './pause';
import {
  ABSENT,
  CREATION_LOCK_BYTE,
  DEFAULT_CAPACITY,
  decodeHeader,
  DIGEST_BYTES,
  encodeHeader,
  H_NOTIFY_SEQ,
  H_PENDING_RECORD,
  H_RECORD_COUNT,
  HEADER_SIZE,
  INLINE_KEY_BYTES,
  layoutFor,
  MAX_CAPACITY,
  R_CREATED_AT,
  R_DIGEST,
  R_GENERATION,
  R_KEY,
  R_KEY_LENGTH,
  R_UPDATED_AT,
  RECORD_SIZE,
  VALUE_MASK,
  WATCH_LOCK_BASE,
  WATCHED,
  type HeaderInfo,
} from './shm-format';
import { unixSecond, type BindOptions, type GenerationListener, type KeyBinding, type Store, type StoreEntry } from './store';
import { optionalInteger, optionsObject, wellFormedString } from './validate';
import { deliver, rethrowLater, WatchList, type WatchedKey } from './watch';

/** File name of the shared-memory store in the default directory. */
export const SHM_FILE_NAME = 'generations.shm';

/** How long key creation waits for another process's creation lock, unless told otherwise. */
export const DEFAULT_LOCK_TIMEOUT_MS = 5000;

/** Attempts to open a path whose file another process is creating or replacing at that moment. */
const OPEN_ATTEMPTS = 5;
const OPEN_RETRY_PAUSE_MS = 10;

/** Upper bound on compare-and-swap retries; each failure means another process made progress. */
const MAX_CAS_ATTEMPTS = 100_000;

/** Options of {@link SharedMemoryStore.open}. */
export interface SharedMemoryStoreOptions {
  /**
   * How many keys the store can hold. Used only when this call creates the
   * file; an existing file keeps the capacity it was created with. Cleared
   * keys keep their place, so count every key the application ever uses.
   * @default 4096
   */
  readonly capacity?: number | undefined;
  /**
   * Permission bits of a file this call creates, applied exactly whatever
   * the umask. Must give the owner read and write and must not let other
   * users write.
   * @default 0o600
   */
  readonly mode?: number | undefined;
  /**
   * How long creating a key waits for another process that is creating one,
   * in milliseconds, before giving up with `ERR_GENSYNC_LOCK_TIMEOUT`.
   * Creation holds the lock for microseconds, so this only matters when a
   * process is stopped or hung inside it.
   * @default 5000
   */
  readonly lockTimeoutMs?: number | undefined;
}

/** A binding's view before it has a record, and after its store closed: every key reads as absent. */
const POISONED = new BigInt64Array([ABSENT]);

/** Generation words at or above this are flagged (absent, watched) or corrupt; below it they are exact as numbers. */
const SAFE_WORD_LIMIT = BigInt(Number.MAX_SAFE_INTEGER);
const NOT_WATCHED = ~WATCHED;

/** How often watchers check their keys where futexes or range locks are not available (macOS, BSD). */
export const WATCH_POLL_INTERVAL_MS = 25;

/**
 * How long the notifier thread outlives the last watcher, so that
 * `waitForChange()` in a loop does not start a thread for every call. The
 * thread never keeps the process alive, lingering or not.
 */
export const NOTIFIER_LINGER_MS = 1000;


/** The store's handle on one key. `view` and `index` point at the key's generation word. */
class SharedMemoryBinding implements KeyBinding {
  view: BigInt64Array = POISONED;
  index = 0;
  /** The synced generation as a word, for the hot path's comparison; -1 (never stored) until there is one. */
  expectedWord = -1n;
  /**
   * The word an increment returned, not yet folded into `expectedWord`.
   * increment() only records it: adding one and converting to a number
   * there would make the hot path of markUpdated() markedly slower. The
   * next isStale() or `synced` folds it in.
   */
  incrementedFrom: bigint | null = null;
  /** Record number, or -1 until the key has been found or created. */
  record = -1;

  constructor(
    readonly key: string,
    readonly keyBytes: Buffer,
    readonly digest: Buffer,
    readonly tag: number,
    private readonly store: SharedMemoryStore,
  ) {}

  get synced(): number | null {
    this.settle();
    return this.expectedWord < 0n ? null : Number(this.expectedWord);
  }

  isStale(): boolean {
    const word = Atomics.load(this.view, this.index);
    return word !== this.expectedWord && this.staleAfterSettling(word);
  }

  /** A differing word: stale unless a pending increment or the WATCHED flag explains the difference. */
  private staleAfterSettling(word: bigint): boolean {
    this.settle();
    return word !== this.expectedWord && (word & NOT_WATCHED) !== this.expectedWord;
  }

  /** Fold a pending increment into the synced value. */
  settle(): void {
    if (this.incrementedFrom !== null) {
      this.expectedWord = this.incrementedFrom + 1n;
      this.incrementedFrom = null;
    }
  }

  read(): number | null {
    return this.store.readBinding(this);
  }

  fetchOrCreate(now: number): number {
    return this.store.fetchOrCreateBinding(this, unixSecond(now));
  }

  increment(): boolean {
    const previous = Atomics.add(this.view, this.index, 1n);
    if (previous < SAFE_WORD_LIMIT && previous >= 0n) {
      this.incrementedFrom = previous;
      return true;
    }
    return this.store.incrementOutOfRange(this, previous);
  }

  delete(): void {
    this.store.deleteBinding(this);
  }
}

/**
 * Generations in a memory-mapped file that every process on the host maps
 * `MAP_SHARED`. Checking a key is one `Atomics.load`, bumping it one
 * `Atomics.add`, on a `BigInt64Array` over the mapping: no system call, no
 * lock, no native call. Creating a key takes a kernel lock on the file for
 * a few microseconds (an OFD lock on Linux, `flock` elsewhere), which the
 * kernel releases if the holder dies.
 *
 * The file is created fully allocated (never sparse) with mode 0600, is
 * never shrunk, and is validated every time it is opened: a file that is
 * not a store, is damaged, comes from a newer version, is not a regular
 * file owned by this user, or lies on a network filesystem is refused with
 * a typed error and left untouched.
 *
 * @example
 * const store = SharedMemoryStore.open('/var/lib/myapp/generations.shm');
 * const settings = new GenerationSynchronizer('settings', { store });
 */
export class SharedMemoryStore implements Store {
  readonly kind = 'shm';
  /** Absolute path of the store file. */
  readonly path: string;
  readonly #addon: NativeAddon;
  readonly #header: HeaderInfo;
  readonly #lockTimeoutMs: number;
  #fd: number;
  #closed = false;
  #buffer: ArrayBuffer;
  #gens: BigInt64Array;
  #u32: Uint32Array;
  #f64: Float64Array;
  #bytes: Buffer;
  readonly #bindings = new Set<WeakRef<SharedMemoryBinding>>();
  readonly #finalizer = new FinalizationRegistry<WeakRef<SharedMemoryBinding>>((ref) => this.#bindings.delete(ref));
  readonly #watched = new WatchList<SharedMemoryBinding>();
  #notifier: NativeWatcher | undefined;
  #notifierLinger: NodeJS.Timeout | undefined;

  private constructor(path: string, fd: number, header: HeaderInfo, buffer: ArrayBuffer, addon: NativeAddon, lockTimeoutMs: number) {
    this.path = path;
    this.#fd = fd;
    this.#header = header;
    this.#addon = addon;
    this.#lockTimeoutMs = lockTimeoutMs;
    this.#buffer = buffer;
    this.#gens = new BigInt64Array(buffer);
    this.#u32 = new Uint32Array(buffer);
    this.#f64 = new Float64Array(buffer);
    this.#bytes = Buffer.from(buffer);
  }

  /**
   * Open the store file at `path`, creating it if it does not exist.
   * Without a path, opens `generations.shm` in the default directory:
   * `$GENERATION_SYNC_DIR`, else `<os.tmpdir()>/generation-sync-<uid>/`
   * (created with mode 0700).
   *
   * Throws {@link AddonUnavailableError} when the native addon is not
   * built, {@link StoreFormatError} or {@link UnsafeStoreError} for a file
   * it must not use, and a {@link StoreError} with `ERR_GENSYNC_STORE_IO`
   * when the system refuses (no such directory, no space).
   */
  static open(path?: string, options?: SharedMemoryStoreOptions): SharedMemoryStore {
    const opts = optionsObject(options, 'SharedMemoryStore options');
    const capacity = optionalInteger(opts.capacity, 'capacity', DEFAULT_CAPACITY, { min: 1, max: MAX_CAPACITY });
    const mode = checkFileMode(optionalInteger(opts.mode, 'mode', DEFAULT_FILE_MODE, { min: 0, max: 0o777 }));
    const lockTimeoutMs = optionalInteger(opts.lockTimeoutMs, 'lockTimeoutMs', DEFAULT_LOCK_TIMEOUT_MS, {
      min: 0,
      max: 2 ** 31 - 1,
    });
    const file = path === undefined ? join(preparedDefaultDirectory(), SHM_FILE_NAME) : storePathArgument(path);
    const addon = nativeAddon();
    checkLocalFilesystem(dirname(file));

    for (let attempt = 1; ; attempt++) {
      let fd: number;
      try {
        fd = openSync(file, OPEN_EXISTING);
      } catch (error) {
        if (errnoCode(error) === 'ENOENT') {
          createStoreFile(file, capacity, mode, addon);
          continue;
        }
        throw openFailure(error, file);
      }
      try {
        const stats = fstatSync(fd);
        if (stats.isFile() && stats.nlink !== 1 && attempt < OPEN_ATTEMPTS) {
          // Replaced between open and fstat, or being published with link + unlink right now.
          closeSync(fd);
          pause(OPEN_RETRY_PAUSE_MS);
          continue;
        }
        checkStoreFile(stats, file);
        const header = decodeHeader(readHeader(fd, stats, file), stats.size, file);
        const buffer = addon.map(fd, header.fileSize);
        return new SharedMemoryStore(file, fd, header, buffer, addon, lockTimeoutMs);
      } catch (error) {
        closeSync(fd);
        if (error instanceof StoreError) throw error;
        throw ioError(error, 'open the store', file);
      }
    }
  }

  /** How many keys the store can hold. */
  get capacity(): number {
    return this.#header.capacity;
  }

  /** How many keys the store holds, cleared ones included (they keep their place). */
  get size(): number {
    return Atomics.load(this.#u32, H_RECORD_COUNT / 4);
  }

  /** Format version of the file. */
  get formatVersion(): number {
    return this.#header.version;
  }

  /** Size of the file in bytes; fixed when it was created. */
  get fileSize(): number {
    return this.#header.fileSize;
  }

  get closed(): boolean {
    return this.#closed;
  }

  bind(key: string, _options?: BindOptions): KeyBinding {
    this.#checkOpen();
    const keyBytes = Buffer.from(wellFormedString(key, 'key'), 'utf8');
    const digest = createHash('sha256').update(keyBytes).digest();
    return new SharedMemoryBinding(key, keyBytes, digest, digest.readUInt32LE(0), this);
  }

  /** How watchers here learn of changes: a futex wake-up, or polling every 25 ms where that is not available. */
  get watchMechanism(): 'futex' | 'poll' {
    return this.#addon.futex && this.#addon.rangeLocks ? 'futex' : 'poll';
  }

  /**
   * Record now as the last update time of `key` (see {@link StoreEntry.updatedAt}).
   * Increments do not do this themselves: reading the clock would triple
   * their cost. The CLI's `bump` does. Does nothing for an absent key.
   */
  touch(key: string): void {
    this.#checkOpen();
    const binding = this.bind(key) as SharedMemoryBinding;
    const record = this.#find(binding);
    if (record >= 0) this.#stamp(record, R_UPDATED_AT);
  }

  /** A snapshot of every key in the store, in creation order. */
  entries(): StoreEntry[] {
    this.#checkOpen();
    const entries: StoreEntry[] = [];
    const count = this.size;
    for (let record = 0; record < count; record++) {
      const base = this.#recordOffset(record);
      const length = this.#u32[(base + R_KEY_LENGTH) / 4] ?? 0;
      const inline = Math.min(length, INLINE_KEY_BYTES);
      const word = Atomics.load(this.#gens, (base + R_GENERATION) / 8);
      entries.push({
        key: this.#bytes.toString('utf8', base + R_KEY, base + R_KEY + inline),
        keyTruncated: length > INLINE_KEY_BYTES,
        generation: this.#generationOf(word),
        createdAt: new Date(this.#f64[(base + R_CREATED_AT) / 8] ?? 0),
        updatedAt: new Date(this.#f64[(base + R_UPDATED_AT) / 8] ?? 0),
      });
    }
    return entries;
  }

  /**
   * Call `listener` with the generation of `key` (null when absent) soon
   * after it changes, in any process, until the returned function is
   * called. A burst of changes may arrive as one call with the latest
   * generation. `since` is the generation the listener already knows: if
   * the key differs from it now, the listener is called at once; if
   * undefined, the current generation is taken as known.
   *
   * On Linux this is a real wake-up: the changing process wakes a futex in
   * the file, and one native thread per store waits on it, never blocking
   * the event loop or the thread pool and never keeping the process alive;
   * it ends a second after the last watcher is gone.
   * While any process watches a key, changes to that key cost a system call
   * more. Elsewhere, watchers check their keys every 25 ms.
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener): () => void {
    this.#checkOpen();
    const watched = this.#watched.get(key) ?? this.#startWatching(key);
    const { behind, remove } = this.#watched.register(watched, since, this.readBinding(watched.target), listener);
    if (behind) queueMicrotask(() => this.#deliver());
    return () => {
      if (remove()) this.#stopWatching(watched.target);
    };
  }

  /**
   * Close the file. Synchronizers bound to this store then report their
   * keys as expired, and anything else they do throws
   * {@link StoreClosedError}. The mapping itself is released when the last
   * reference to it is garbage-collected.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopNotifier();
    // Closing the descriptor below releases this instance's watch locks.
    this.#watched.clear();
    for (const ref of this.#bindings) {
      const binding = ref.deref();
      if (binding !== undefined) {
        binding.view = POISONED;
        binding.index = 0;
      }
    }
    this.#bindings.clear();
    this.#gens = POISONED;
    this.#buffer = new ArrayBuffer(0);
    this.#u32 = new Uint32Array(0);
    this.#f64 = new Float64Array(0);
    this.#bytes = Buffer.alloc(0);
    closeSync(this.#fd);
    this.#fd = -1;
  }

  /** @internal */
  readBinding(binding: SharedMemoryBinding): number | null {
    this.#checkOpen();
    if (binding.record < 0) {
      const record = this.#find(binding);
      if (record < 0) return null;
      this.#attach(binding, record);
    }
    return this.#generationOf(Atomics.load(binding.view, binding.index));
  }

  /** @internal */
  fetchOrCreateBinding(binding: SharedMemoryBinding, seed: number): number {
    this.#checkOpen();
    if (binding.record < 0) {
      let record = this.#find(binding);
      if (record < 0) record = this.#withCreationLock(() => this.#findOrCreateRecord(binding, seed));
      this.#attach(binding, record);
    }
    const value = this.#reviveIfAbsent(binding, seed);
    binding.expectedWord = BigInt(value);
    binding.incrementedFrom = null;
    return value;
  }

  /** @internal The slow path of an increment whose previous value was absent, unbound, or out of range: false when absent. */
  incrementOutOfRange(binding: SharedMemoryBinding, previous: bigint): boolean {
    this.#checkOpen();
    if (binding.record < 0) return false;
    if (previous < 0n) throw this.#corrupt(`key "${binding.key}" holds generation word ${previous}`);
    // Absent: the add only raised the highest value the tombstone remembers, which nobody sees.
    if ((previous & ABSENT) !== 0n) return false;
    binding.incrementedFrom = BigInt(this.#checkedGeneration(previous & VALUE_MASK));
    if ((previous & WATCHED) !== 0n) this.#notify(binding);
    return true;
  }

  /** @internal */
  deleteBinding(binding: SharedMemoryBinding): void {
    this.#checkOpen();
    if (binding.record < 0) {
      const record = this.#find(binding);
      if (record < 0) return;
      this.#attach(binding, record);
    }
    const previous = Atomics.or(binding.view, binding.index, ABSENT);
    this.#stamp(binding.record, R_UPDATED_AT);
    if ((previous & (ABSENT | WATCHED)) === WATCHED) this.#notify(binding);
  }

  /** The first watcher of `key` in this instance: make sure it has a record, mark it watched, start listening. */
  #startWatching(key: string): WatchedKey<SharedMemoryBinding> {
    const binding = this.bind(key) as SharedMemoryBinding;
    let record = this.#find(binding);
    if (record < 0) record = this.#withCreationLock(() => this.#findOrCreateRecord(binding, null));
    this.#attach(binding, record);
    if (this.#addon.rangeLocks) {
      this.#withCreationLock(() => {
        this.#addon.lock(this.#fd, WATCH_LOCK_BASE + record, false, this.#lockTimeoutMs);
        Atomics.or(binding.view, binding.index, WATCHED);
      });
    }
    const watched = this.#watched.open(key, binding);
    this.#startNotifier();
    return watched;
  }

  /** The last watcher of a key in this instance is gone. */
  #stopWatching(binding: SharedMemoryBinding): void {
    if (this.#watched.size === 0) this.#stopNotifierSoon();
    if (this.#closed || !this.#addon.rangeLocks) return;
    this.#addon.unlock(this.#fd, WATCH_LOCK_BASE + binding.record);
    this.#clearWatchedFlagIfUnwatched(binding);
  }

  /** Clear a key's WATCHED flag when no process watches it any more (also after a watcher died). */
  #clearWatchedFlagIfUnwatched(binding: SharedMemoryBinding): void {
    try {
      this.#withCreationLock(() => {
        if (this.#watched.get(binding.key) === undefined && !this.#addon.lockedByOthers(this.#fd, WATCH_LOCK_BASE + binding.record)) {
          Atomics.and(binding.view, binding.index, NOT_WATCHED);
        }
      });
    } catch (error) {
      // A stuck creation lock only leaves the flag set: changes then wake nobody, at a small cost.
      if (!(error instanceof StoreUnavailableError)) throw error;
    }
  }

  /**
   * Tell every watcher of every process that the key of `binding` changed.
   * If nobody watches it any more (a watcher died without unwatching),
   * clear its flag so that later changes skip this.
   */
  #notify(binding: SharedMemoryBinding): void {
    Atomics.add(this.#u32, H_NOTIFY_SEQ / 4, 1);
    this.#addon.wake(this.#buffer, H_NOTIFY_SEQ);
    if (this.#watched.get(binding.key) === undefined && !this.#addon.lockedByOthers(this.#fd, WATCH_LOCK_BASE + binding.record)) {
      this.#clearWatchedFlagIfUnwatched(binding);
    }
  }

  #startNotifier(): void {
    clearTimeout(this.#notifierLinger);
    this.#notifierLinger = undefined;
    if (this.#notifier !== undefined) return;
    const deliver = (): void => this.#deliver();
    if (this.#addon.futex && this.#addon.rangeLocks) {
      this.#notifier = new this.#addon.Watcher(this.#fd, H_NOTIFY_SEQ, deliver);
    } else {
      const timer = setInterval(deliver, WATCH_POLL_INTERVAL_MS);
      timer.unref();
      this.#notifier = { stop: () => clearInterval(timer) };
    }
  }

  #stopNotifier(): void {
    clearTimeout(this.#notifierLinger);
    this.#notifierLinger = undefined;
    this.#notifier?.stop();
    this.#notifier = undefined;
  }

  /** Stop the notifier once no key has been watched for NOTIFIER_LINGER_MS. */
  #stopNotifierSoon(): void {
    if (this.#notifier === undefined || this.#notifierLinger !== undefined) return;
    this.#notifierLinger = setTimeout(() => {
      this.#notifierLinger = undefined;
      if (this.#watched.size === 0) this.#stopNotifier();
    }, NOTIFIER_LINGER_MS);
    this.#notifierLinger.unref();
  }

  /** Give every listener whose key changed the current generation. */
  #deliver(): void {
    if (this.#closed) return;
    const failures: unknown[] = [];
    for (const watched of this.#watched.values()) {
      let generation: number | null;
      try {
        generation = this.readBinding(watched.target);
      } catch {
        continue; // a damaged record: the synchronizers report it
      }
      deliver(watched, generation, failures);
    }
    rethrowLater(failures);
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new StoreClosedError(`The store at ${this.path} was closed; open it again to keep using it.`, {
        path: this.path,
      });
    }
  }

  #recordOffset(record: number): number {
    return this.#header.recordsOffset + record * RECORD_SIZE;
  }

  #attach(binding: SharedMemoryBinding, record: number): void {
    binding.record = record;
    binding.view = this.#gens;
    binding.index = (this.#recordOffset(record) + R_GENERATION) / 8;
    const ref = new WeakRef(binding);
    this.#bindings.add(ref);
    this.#finalizer.register(binding, ref);
  }

  /** Search the index without a lock. Returns the record number, or -1 when the key is not published. */
  #find(binding: SharedMemoryBinding): number {
    const { tableSize, capacity, indexOffset } = this.#header;
    const mask = tableSize - 1;
    let position = binding.tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const entry = (indexOffset >> 2) + position * 2;
      const ref = Atomics.load(this.#u32, entry);
      if (ref === 0) return -1;
      if (ref > capacity) throw this.#corrupt(`index entry ${position} names record ${ref - 1} of ${capacity}`);
      if (this.#u32[entry + 1] === binding.tag && this.#recordHoldsKey(ref - 1, binding)) return ref - 1;
      position = (position + 1) & mask;
    }
    return -1;
  }

  #recordHoldsKey(record: number, binding: SharedMemoryBinding): boolean {
    const base = this.#recordOffset(record);
    const length = this.#u32[(base + R_KEY_LENGTH) / 4];
    if (length !== binding.keyBytes.length) return false;
    if (!this.#bytes.subarray(base + R_DIGEST, base + R_DIGEST + DIGEST_BYTES).equals(binding.digest)) return false;
    const inline = Math.min(length, INLINE_KEY_BYTES);
    return this.#bytes.subarray(base + R_KEY, base + R_KEY + inline).equals(binding.keyBytes.subarray(0, inline));
  }

  #withCreationLock<T>(action: () => T): T {
    if (!this.#addon.lock(this.#fd, CREATION_LOCK_BYTE, true, this.#lockTimeoutMs)) {
      throw new StoreUnavailableError(
        'ERR_GENSYNC_LOCK_TIMEOUT',
        `Another process held the key-creation lock of ${this.path} for more than ${this.#lockTimeoutMs} ms. ` +
          'A process may be stopped (SIGSTOP) or hung while creating a key: resume or kill it.',
        { path: this.path },
      );
    }
    try {
      this.#recoverInterruptedCreation();
      return action();
    } finally {
      this.#addon.unlock(this.#fd, CREATION_LOCK_BYTE);
    }
  }

  /**
   * A process that died while creating a key leaves H_PENDING_RECORD set.
   * Holding the lock, we know it is dead: keep its record if the index
   * already publishes it (it was complete), otherwise wipe it for reuse.
   */
  #recoverInterruptedCreation(): void {
    const pending = Atomics.load(this.#u32, H_PENDING_RECORD / 4);
    if (pending === 0) return;
    const record = pending - 1;
    const base = this.#recordOffset(record);
    if (this.#isPublished(record)) {
      if (Atomics.load(this.#u32, H_RECORD_COUNT / 4) < pending) Atomics.store(this.#u32, H_RECORD_COUNT / 4, pending);
    } else {
      this.#bytes.fill(0, base, base + RECORD_SIZE);
    }
    Atomics.store(this.#u32, H_PENDING_RECORD / 4, 0);
  }

  #isPublished(record: number): boolean {
    const base = this.#recordOffset(record);
    const tag = this.#bytes.readUInt32LE(base + R_DIGEST);
    const { tableSize, indexOffset } = this.#header;
    const mask = tableSize - 1;
    let position = tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const ref = Atomics.load(this.#u32, (indexOffset >> 2) + position * 2);
      if (ref === 0) return false;
      if (ref === record + 1) return true;
      position = (position + 1) & mask;
    }
    return false;
  }

  /**
   * Under the creation lock: find the key again, or claim, fill and publish
   * a new record — holding `seed`, or absent when `seed` is null (a key that
   * is watched before it is created).
   */
  #findOrCreateRecord(binding: SharedMemoryBinding, seed: number | null): number {
    const existing = this.#find(binding);
    if (existing >= 0) return existing;

    const { capacity, tableSize, indexOffset } = this.#header;
    const record = Atomics.load(this.#u32, H_RECORD_COUNT / 4);
    if (record >= capacity) {
      throw new StoreFullError(
        `The store at ${this.path} holds its maximum of ${capacity} keys, so "${binding.key}" cannot be added ` +
          '(keys it already holds keep working). Open a new store file with a larger "capacity" option.',
        { path: this.path },
      );
    }
    Atomics.store(this.#u32, H_PENDING_RECORD / 4, record + 1);

    const base = this.#recordOffset(record);
    const now = Date.now();
    this.#bytes.fill(0, base, base + RECORD_SIZE);
    this.#f64[(base + R_CREATED_AT) / 8] = now;
    this.#f64[(base + R_UPDATED_AT) / 8] = now;
    this.#u32[(base + R_KEY_LENGTH) / 4] = binding.keyBytes.length;
    binding.digest.copy(this.#bytes, base + R_DIGEST);
    binding.keyBytes.copy(this.#bytes, base + R_KEY, 0, Math.min(binding.keyBytes.length, INLINE_KEY_BYTES));
    Atomics.store(this.#gens, (base + R_GENERATION) / 8, seed === null ? ABSENT : BigInt(seed));

    const mask = tableSize - 1;
    let position = binding.tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const entry = (indexOffset >> 2) + position * 2;
      if (Atomics.load(this.#u32, entry) === 0) {
        this.#u32[entry + 1] = binding.tag;
        // Publishing the ref is the last write: from here on readers find a complete record.
        Atomics.store(this.#u32, entry, record + 1);
        Atomics.store(this.#u32, H_RECORD_COUNT / 4, record + 1);
        Atomics.store(this.#u32, H_PENDING_RECORD / 4, 0);
        return record;
      }
      position = (position + 1) & mask;
    }
    throw this.#corrupt('the index has no empty entry although the store is below capacity');
  }

  /** Re-create a cleared key above every value it had; return the present generation. */
  #reviveIfAbsent(binding: SharedMemoryBinding, seed: number): number {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(binding.view, binding.index);
      if ((word & ABSENT) === 0n) return this.#checkedGeneration(word & VALUE_MASK);
      const highest = word & VALUE_MASK;
      const value = BigInt(seed) > highest ? BigInt(seed) : highest + 1n;
      const watched = word & WATCHED;
      if (Atomics.compareExchange(binding.view, binding.index, word, value | watched) === word) {
        this.#stamp(binding.record, R_UPDATED_AT);
        if (watched !== 0n) this.#notify(binding);
        return this.#checkedGeneration(value);
      }
    }
    throw new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `Key "${binding.key}" in ${this.path} changed ${MAX_CAS_ATTEMPTS} times while it was being re-created.`,
      { path: this.path },
    );
  }

  /** A generation word's value, or null when absent; flags removed and range checked. */
  #generationOf(word: bigint): number | null {
    if (word < 0n) throw this.#corrupt(`a generation word holds ${word}`);
    return (word & ABSENT) !== 0n ? null : this.#checkedGeneration(word & VALUE_MASK);
  }

  /** A generation value (no flags), checked to be exact as a number. */
  #checkedGeneration(value: bigint): number {
    if (value < 0n || value > SAFE_WORD_LIMIT) {
      throw this.#corrupt(`a generation word holds ${value}, outside the range a generation can take`);
    }
    return Number(value);
  }

  #stamp(record: number, field: number): void {
    this.#f64[(this.#recordOffset(record) + field) / 8] = Date.now();
  }

  #corrupt(why: string): StoreFormatError {
    return new StoreFormatError(
      'ERR_GENSYNC_CORRUPT_FILE',
      `${this.path} is a damaged generation-sync store (${why}). Stop every process using it and remove it.`,
      { path: this.path },
    );
  }
}

function readHeader(fd: number, stats: Stats, file: string): Buffer {
  const header = Buffer.alloc(Math.min(HEADER_SIZE, Math.max(stats.size, 0)));
  try {
    const read = readSync(fd, header, 0, header.length, 0);
    return header.subarray(0, read);
  } catch (error) {
    throw ioError(error, 'read the header of', file);
  }
}

/**
 * Build a complete store file under a temporary name, then publish it
 * under `file` only if nothing is there yet, so that no process ever opens
 * a half-initialized store. Losing the race to another creator is fine:
 * the caller opens the winner's file.
 */
function createStoreFile(file: string, capacity: number, mode: number, addon: NativeAddon): void {
  const layout = layoutFor(capacity);
  const temporary = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  let fd: number;
  try {
    fd = openSync(temporary, OPEN_NEW, mode);
  } catch (error) {
    throw ioError(error, 'create the store', file);
  }
  try {
    fchmodSync(fd, mode);
    addon.allocate(fd, layout.fileSize);
    writeSync(fd, encodeHeader(layout, Date.now()), 0, HEADER_SIZE, 0);
    fdatasyncSync(fd);
    publishWithoutReplacing(temporary, file, addon.renameNoReplace);
  } catch (error) {
    if (error instanceof StoreError) throw error;
    throw ioError(error, 'create the store', file);
  } finally {
    closeSync(fd);
    try {
      unlinkSync(temporary);
    } catch {
      // Already renamed into place: nothing left to remove.
    }
  }
}


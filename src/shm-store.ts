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
  statSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { dirname, join } from 'node:path';

import { corruptFileError, StoreClosedError, StoreError, StoreFormatError, StoreFullError, StoreUnavailableError } from './errors';
import {
  checkLocalFilesystem,
  checkStoreFile,
  errnoCode,
  fileModeOption,
  ioError,
  lockTimeoutOption,
  OPEN_EXISTING,
  openFailure,
  publishWithoutReplacing,
  storePathArgument,
  OPEN_NEW,
  preparedDefaultDirectory,
  removeAbandonedFiles,
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
  FLAG_RETIRED,
  H_FLAGS,
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
import { checkpoint } from './test-hooks';
import { unixSecond, type BindOptions, type GenerationListener, type KeyBinding, type Store, type StoreEntry } from './store';
import { optionalInteger, optionsObject, wellFormedString } from './validate';
import { deliver, rethrowLater, WatchList, type WatchedKey } from './watch';

/** File name of the shared-memory store in the default directory. */
export const SHM_FILE_NAME = 'generations.shm';


/** Attempts to open a path whose file another process is creating or replacing at that moment. */
const OPEN_ATTEMPTS = 5;
const OPEN_RETRY_PAUSE_MS = 10;

/** Upper bound on compare-and-swap retries; each failure means another process made progress. */
const MAX_CAS_ATTEMPTS = 100_000;

/**
 * How often each store checks, in the background, that its path still
 * names the file it has mapped (two system calls; none on the hot path).
 */
export const FILE_CHECK_INTERVAL_MS = 250;

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


/**
 * What identifies a key in a file: its UTF-8 length, SHA-256 and first
 * bytes. A record can be matched or re-created from this alone, which is
 * how keys are carried over to a new file.
 */
interface KeyIdentity {
  /** The key for messages (for a key carried over from an old file, only its first bytes). */
  readonly label: string;
  readonly length: number;
  readonly digest: Buffer;
  /** The first INLINE_KEY_BYTES bytes of the key (all of it when shorter). */
  readonly inline: Buffer;
  /** Hash-index tag: the first four bytes of the digest. */
  readonly tag: number;
}

function identityOf(key: string): KeyIdentity {
  const bytes = Buffer.from(key, 'utf8');
  const digest = createHash('sha256').update(bytes).digest();
  return { label: key, length: bytes.length, digest, inline: bytes.subarray(0, INLINE_KEY_BYTES), tag: digest.readUInt32LE(0) };
}

/** One mapped store file and the views over it. */
interface MappedFile {
  readonly fd: number;
  readonly header: HeaderInfo;
  readonly buffer: ArrayBuffer;
  readonly gens: BigInt64Array;
  readonly u32: Uint32Array;
  readonly f64: Float64Array;
  readonly bytes: Buffer;
  readonly ino: number;
  readonly dev: number;
}

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
    readonly identity: KeyIdentity,
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
 * If the file is unlinked, renamed or replaced while in use (temp cleaners
 * and `systemd-logind`'s `RemoveIPC` do this), a background check notices
 * within {@link FILE_CHECK_INTERVAL_MS}: the process marks the old file
 * retired, poisons every key in it (so every holder reads it as expired),
 * carries each key over to the file now at the path above every value it
 * had, and moves there; the others follow. An increment that lands on a
 * poisoned key is made again in the new file, so no update is lost.
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
  readonly #lockTimeoutMs: number;
  readonly #capacity: number;
  readonly #mode: number;
  /** The file in use; undefined while the file at the path cannot be used (see #unusable). */
  #file: MappedFile | undefined;
  /** Why there is no usable file, thrown by every operation until one is. */
  #unusable: StoreError | undefined;
  #closed = false;
  readonly #bindings = new Set<WeakRef<SharedMemoryBinding>>();
  readonly #finalizer = new FinalizationRegistry<WeakRef<SharedMemoryBinding>>((ref) => this.#bindings.delete(ref));
  readonly #watched = new WatchList<SharedMemoryBinding>();
  #notifier: NativeWatcher | undefined;
  #notifierLinger: NodeJS.Timeout | undefined;
  readonly #fileCheck: NodeJS.Timeout;

  private constructor(path: string, file: MappedFile, addon: NativeAddon, settings: OpenSettings) {
    this.path = path;
    this.#file = file;
    this.#addon = addon;
    this.#lockTimeoutMs = settings.lockTimeoutMs;
    this.#capacity = settings.capacity;
    this.#mode = settings.mode;
    this.#fileCheck = setInterval(() => this.#checkFile(), FILE_CHECK_INTERVAL_MS);
    this.#fileCheck.unref();
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
    const settings: OpenSettings = {
      capacity: optionalInteger(opts.capacity, 'capacity', DEFAULT_CAPACITY, { min: 1, max: MAX_CAPACITY }),
      mode: fileModeOption(opts.mode),
      lockTimeoutMs: lockTimeoutOption(opts.lockTimeoutMs),
    };
    const file = path === undefined ? join(preparedDefaultDirectory(), SHM_FILE_NAME) : storePathArgument(path);
    const addon = nativeAddon();
    checkLocalFilesystem(dirname(file));
    removeAbandonedFiles(file);
    return new SharedMemoryStore(file, openMappedFile(file, settings, addon), addon, settings);
  }

  /** How many keys the store can hold. */
  get capacity(): number {
    return this.#live().header.capacity;
  }

  /** How many keys the store holds, cleared ones included (they keep their place). */
  get size(): number {
    return Atomics.load(this.#live().u32, H_RECORD_COUNT / 4);
  }

  /** Format version of the file. */
  get formatVersion(): number {
    return this.#live().header.version;
  }

  /** Size of the file in bytes; fixed when it was created. */
  get fileSize(): number {
    return this.#live().header.fileSize;
  }

  get closed(): boolean {
    return this.#closed;
  }

  bind(key: string, _options?: BindOptions): KeyBinding {
    this.#checkOpen();
    return new SharedMemoryBinding(key, identityOf(wellFormedString(key, 'key')), this);
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
    const file = this.#live();
    const record = this.#find(file, identityOf(wellFormedString(key, 'key')));
    if (record >= 0) stamp(file, record, R_UPDATED_AT);
  }

  /** A snapshot of every key in the store, in creation order. */
  entries(): StoreEntry[] {
    const file = this.#live();
    const entries: StoreEntry[] = [];
    const count = Atomics.load(file.u32, H_RECORD_COUNT / 4);
    for (let record = 0; record < count; record++) {
      const base = recordOffset(file, record);
      const length = file.u32[(base + R_KEY_LENGTH) / 4] ?? 0;
      const inline = Math.min(length, INLINE_KEY_BYTES);
      const word = Atomics.load(file.gens, (base + R_GENERATION) / 8);
      entries.push({
        key: file.bytes.toString('utf8', base + R_KEY, base + R_KEY + inline),
        keyTruncated: length > INLINE_KEY_BYTES,
        generation: this.#generationOf(word),
        createdAt: new Date(file.f64[(base + R_CREATED_AT) / 8] ?? 0),
        updatedAt: new Date(file.f64[(base + R_UPDATED_AT) / 8] ?? 0),
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
    clearInterval(this.#fileCheck);
    this.#stopNotifier();
    // Closing the descriptor below releases this instance's watch locks.
    this.#watched.clear();
    this.#detachBindings();
    this.#bindings.clear();
    if (this.#file !== undefined) closeSync(this.#file.fd);
    this.#file = undefined;
  }

  /** @internal */
  readBinding(binding: SharedMemoryBinding): number | null {
    const file = this.#live();
    if (binding.record < 0) {
      const record = this.#find(file, binding.identity);
      if (record < 0) return null;
      this.#attach(file, binding, record);
    }
    return this.#generationOf(Atomics.load(binding.view, binding.index));
  }

  /** @internal */
  fetchOrCreateBinding(binding: SharedMemoryBinding, seed: number): number {
    this.#resolve(binding, seed);
    const value = this.#reviveIfAbsent(binding, seed);
    binding.expectedWord = BigInt(value);
    binding.incrementedFrom = null;
    return value;
  }

  /**
   * @internal The slow path of an increment whose previous word was flagged,
   * unbound or out of range. Returns false, changing nothing visible, when
   * the key is absent.
   */
  incrementOutOfRange(binding: SharedMemoryBinding, previous: bigint): boolean {
    const file = this.#live(); // moves to the live file first if this one was retired
    if (binding.record < 0) {
      // Never bound, or unbound by a move to a new file (the add went to a placeholder): make the increment here.
      const record = this.#find(file, binding.identity);
      if (record < 0) return false;
      this.#attach(file, binding, record);
      return binding.increment();
    }
    if (previous < 0n) throw this.#corrupt(`key "${binding.key}" holds generation word ${previous}`);
    // Absent: the add only raised the highest value the tombstone remembers, which nobody sees.
    if ((previous & ABSENT) !== 0n) return false;
    binding.incrementedFrom = BigInt(this.#checkedGeneration(previous & VALUE_MASK));
    if ((previous & WATCHED) !== 0n) this.#notify(file, binding);
    return true;
  }

  /** @internal */
  deleteBinding(binding: SharedMemoryBinding): void {
    const file = this.#live();
    if (binding.record < 0) {
      const record = this.#find(file, binding.identity);
      if (record < 0) return;
      this.#attach(file, binding, record);
    }
    const previous = Atomics.or(binding.view, binding.index, ABSENT);
    stamp(file, binding.record, R_UPDATED_AT);
    if ((previous & (ABSENT | WATCHED)) === WATCHED) this.#notify(file, binding);
  }

  /**
   * The file to work on, after moving to the live file if this one was
   * retired. Throws StoreClosedError, or the reason there is no usable file.
   */
  #live(): MappedFile {
    this.#checkOpen();
    if (this.#file !== undefined && this.#retired(this.#file)) this.#moveToLiveFile();
    if (this.#file === undefined) {
      this.#moveToLiveFile();
      if (this.#file === undefined) throw this.#unusable ?? this.#corrupt('no usable file');
    }
    return this.#file;
  }

  #retired(file: MappedFile): boolean {
    return (Atomics.load(file.u32, H_FLAGS / 4) & FLAG_RETIRED) !== 0;
  }

  /** Bind `binding` to its record, creating the record (holding `seed`, or absent when null) if needed. */
  #resolve(binding: SharedMemoryBinding, seed: number | null): void {
    const file = this.#live();
    if (binding.record >= 0) return;
    let record = this.#find(file, binding.identity);
    if (record < 0) record = this.#withCreationLock(file, () => this.#findOrCreateRecord(file, binding.identity, seed));
    this.#attach(file, binding, record);
  }

  /** The first watcher of `key` in this instance: make sure it has a record, mark it watched, start listening. */
  #startWatching(key: string): WatchedKey<SharedMemoryBinding> {
    const binding = this.bind(key) as SharedMemoryBinding;
    this.#markWatched(binding);
    const watched = this.#watched.open(key, binding);
    this.#startNotifier();
    return watched;
  }

  /** Take this instance's watch lock on the key and set its WATCHED flag (creating the record, absent, if needed). */
  #markWatched(binding: SharedMemoryBinding): void {
    this.#resolve(binding, null);
    const file = this.#live();
    if (!this.#addon.rangeLocks) return;
    this.#withCreationLock(file, () => {
      this.#addon.lock(file.fd, WATCH_LOCK_BASE + binding.record, false, this.#lockTimeoutMs);
      Atomics.or(binding.view, binding.index, WATCHED);
    });
  }

  /** The last watcher of a key in this instance is gone. */
  #stopWatching(binding: SharedMemoryBinding): void {
    if (this.#watched.size === 0) this.#stopNotifierSoon();
    const file = this.#file;
    if (this.#closed || file === undefined || !this.#addon.rangeLocks || binding.record < 0) return;
    this.#addon.unlock(file.fd, WATCH_LOCK_BASE + binding.record);
    this.#clearWatchedFlagIfUnwatched(file, binding);
  }

  /** Clear a key's WATCHED flag when no process watches it any more (also after a watcher died). */
  #clearWatchedFlagIfUnwatched(file: MappedFile, binding: SharedMemoryBinding): void {
    try {
      this.#withCreationLock(file, () => {
        if (this.#watched.get(binding.key) === undefined && !this.#addon.lockedByOthers(file.fd, WATCH_LOCK_BASE + binding.record)) {
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
  #notify(file: MappedFile, binding: SharedMemoryBinding): void {
    wakeWatchers(file, this.#addon);
    if (this.#watched.get(binding.key) === undefined && !this.#addon.lockedByOthers(file.fd, WATCH_LOCK_BASE + binding.record)) {
      this.#clearWatchedFlagIfUnwatched(file, binding);
    }
  }

  #startNotifier(): void {
    clearTimeout(this.#notifierLinger);
    this.#notifierLinger = undefined;
    if (this.#notifier !== undefined || this.#file === undefined) return;
    const deliver = (): void => this.#deliver();
    if (this.#addon.futex && this.#addon.rangeLocks) {
      this.#notifier = new this.#addon.Watcher(this.#file.fd, H_NOTIFY_SEQ, deliver);
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
        generation = null; // the file is unusable just now: the key reads as absent, as it does for isExpired()
      }
      deliver(watched, generation, failures);
    }
    rethrowLater(failures);
  }

  /**
   * The background check: does the path still name the file we mapped, is
   * the file still whole, has another process retired it? Two system calls
   * every FILE_CHECK_INTERVAL_MS, never on the hot path.
   */
  #checkFile(): void {
    if (this.#closed) return;
    const file = this.#file;
    if (file === undefined) {
      this.#moveToLiveFile();
      return;
    }
    let pathStats: Stats | undefined;
    let fileStats: Stats;
    try {
      fileStats = fstatSync(file.fd);
      pathStats = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return; // try again at the next check
    }
    const pulled = pathStats === undefined || pathStats.ino !== file.ino || pathStats.dev !== file.dev || fileStats.nlink === 0;
    const shrunk = fileStats.size < file.header.fileSize;
    if (pulled || shrunk || this.#retired(file)) this.#moveToLiveFile();
  }

  /**
   * Leave the file in use for the file now at the path. Unless the old file
   * was shrunk (touching it could SIGBUS), first mark it retired and poison
   * every key in it, then carry each key over above the value it had, so
   * that every holder of either file reads it as expired and no update is
   * lost; then re-bind this instance's keys and watchers to the new file.
   */
  #moveToLiveFile(): void {
    const old = this.#file;
    const carried = old !== undefined && oldFileIsWhole(old) ? retire(old, this.#addon) : [];
    let next: MappedFile;
    try {
      next = openMappedFile(this.path, { capacity: this.#capacity, mode: this.#mode, lockTimeoutMs: this.#lockTimeoutMs }, this.#addon);
    } catch (error) {
      // No usable file at the path (say, the old one truncated in place): keys read as expired until there is.
      this.#abandon(error instanceof StoreError ? error : ioError(error, 'reopen the store', this.path));
      return;
    }
    if (old !== undefined && next.ino === old.ino && next.dev === old.dev) {
      closeSync(next.fd); // the same file after all
      return;
    }
    for (const { identity, word } of carried) this.#carryOver(next, identity, word);
    this.#abandon(undefined);
    this.#file = next;
    this.#unusable = undefined;
    for (const watched of this.#watched.values()) this.#markWatched(watched.target);
    if (this.#watched.size > 0) this.#startNotifier();
    queueMicrotask(() => this.#deliver());
  }

  /** Stop using the current file: unbind every binding (they read as expired), stop the notifier, close it. */
  #abandon(reason: StoreError | undefined): void {
    this.#stopNotifier();
    this.#detachBindings();
    for (const watched of this.#watched.values()) watched.target.record = -1;
    if (this.#file !== undefined) closeSync(this.#file.fd);
    this.#file = undefined;
    this.#unusable = reason;
  }

  #detachBindings(): void {
    for (const ref of this.#bindings) {
      const binding = ref.deref();
      if (binding === undefined) continue;
      binding.view = POISONED;
      binding.index = 0;
      binding.record = -1;
    }
    this.#bindings.clear();
  }

  /**
   * Carry a key of a retired file over to `file`, given the word it held
   * when it was poisoned. If this process poisoned it (`word` was present),
   * the key may have been bumped in the old file after holders of the new
   * one loaded: raise it above both values, so they all reload. If it was
   * already absent (poisoned by another process, which raised it, or
   * cleared before), only make sure the new file does not go below it, so
   * that carrying over again changes nothing.
   */
  #carryOver(file: MappedFile, identity: KeyIdentity, word: bigint): void {
    const wasAbsent = (word & ABSENT) !== 0n;
    const oldValue = word & VALUE_MASK;
    try {
      let record = this.#find(file, identity);
      if (record < 0) record = this.#withCreationLock(file, () => this.#findOrCreateRecord(file, identity, null));
      const index = (recordOffset(file, record) + R_GENERATION) / 8;
      for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
        const current = Atomics.load(file.gens, index);
        const currentValue = current & VALUE_MASK;
        let next: bigint;
        if (!wasAbsent) {
          next = ((currentValue > oldValue ? currentValue : oldValue) + 1n) | (current & WATCHED);
        } else if (currentValue > oldValue) {
          break; // already above: nothing to do
        } else {
          next = (oldValue + 1n) | (current & (ABSENT | WATCHED));
        }
        if (Atomics.compareExchange(file.gens, index, current, next) === current) break;
      }
    } catch (error) {
      // A full or damaged new file cannot take this key; its holders will re-create it when they refresh.
      if (!(error instanceof StoreError)) throw error;
    }
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new StoreClosedError(`The store at ${this.path} was closed; open it again to keep using it.`, {
        path: this.path,
      });
    }
  }

  #attach(file: MappedFile, binding: SharedMemoryBinding, record: number): void {
    binding.record = record;
    binding.view = file.gens;
    binding.index = (recordOffset(file, record) + R_GENERATION) / 8;
    const ref = new WeakRef(binding);
    this.#bindings.add(ref);
    this.#finalizer.register(binding, ref);
  }

  /** Search the index without a lock. Returns the record number, or -1 when the key is not published. */
  #find(file: MappedFile, identity: KeyIdentity): number {
    const { tableSize, capacity, indexOffset } = file.header;
    const mask = tableSize - 1;
    let position = identity.tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const entry = (indexOffset >> 2) + position * 2;
      const ref = Atomics.load(file.u32, entry);
      if (ref === 0) return -1;
      if (ref > capacity) throw this.#corrupt(`index entry ${position} names record ${ref - 1} of ${capacity}`);
      if (file.u32[entry + 1] === identity.tag && recordHolds(file, ref - 1, identity)) return ref - 1;
      position = (position + 1) & mask;
    }
    return -1;
  }

  #withCreationLock<T>(file: MappedFile, action: () => T): T {
    if (!this.#addon.lock(file.fd, CREATION_LOCK_BYTE, true, this.#lockTimeoutMs)) {
      throw new StoreUnavailableError(
        'ERR_GENSYNC_LOCK_TIMEOUT',
        `Another process held the key-creation lock of ${this.path} for more than ${this.#lockTimeoutMs} ms. ` +
          'A process may be stopped (SIGSTOP) or hung while creating a key: resume or kill it.',
        { path: this.path },
      );
    }
    try {
      checkpoint('shm-create', 'locked');
      recoverInterruptedCreation(file);
      return action();
    } finally {
      this.#addon.unlock(file.fd, CREATION_LOCK_BYTE);
    }
  }

  /**
   * Under the creation lock: find the key again, or claim, fill and publish
   * a new record — holding `seed`, or absent when `seed` is null (a key that
   * is watched before it is created, or carried over from a retired file).
   */
  #findOrCreateRecord(file: MappedFile, identity: KeyIdentity, seed: number | null): number {
    const existing = this.#find(file, identity);
    if (existing >= 0) return existing;

    const { capacity, tableSize, indexOffset } = file.header;
    const record = Atomics.load(file.u32, H_RECORD_COUNT / 4);
    if (record >= capacity) {
      throw new StoreFullError(
        `The store at ${this.path} holds its maximum of ${capacity} keys, so "${identity.label}" cannot be added ` +
          '(keys it already holds keep working). Open a new store file with a larger "capacity" option.',
        { path: this.path },
      );
    }
    Atomics.store(file.u32, H_PENDING_RECORD / 4, record + 1);
    checkpoint('shm-create', 'claimed');

    const base = recordOffset(file, record);
    const now = Date.now();
    file.bytes.fill(0, base, base + RECORD_SIZE);
    checkpoint('shm-create', 'zeroed');
    file.f64[(base + R_CREATED_AT) / 8] = now;
    file.f64[(base + R_UPDATED_AT) / 8] = now;
    file.u32[(base + R_KEY_LENGTH) / 4] = identity.length;
    checkpoint('shm-create', 'stamped');
    identity.digest.copy(file.bytes, base + R_DIGEST);
    identity.inline.copy(file.bytes, base + R_KEY);
    checkpoint('shm-create', 'keyed');
    Atomics.store(file.gens, (base + R_GENERATION) / 8, seed === null ? ABSENT : BigInt(seed));
    checkpoint('shm-create', 'seeded');

    const mask = tableSize - 1;
    let position = identity.tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const entry = (indexOffset >> 2) + position * 2;
      if (Atomics.load(file.u32, entry) === 0) {
        file.u32[entry + 1] = identity.tag;
        checkpoint('shm-create', 'tagged');
        // Publishing the ref is the last write: from here on readers find a complete record.
        Atomics.store(file.u32, entry, record + 1);
        checkpoint('shm-create', 'published');
        Atomics.store(file.u32, H_RECORD_COUNT / 4, record + 1);
        checkpoint('shm-create', 'counted');
        Atomics.store(file.u32, H_PENDING_RECORD / 4, 0);
        checkpoint('shm-create', 'settled');
        return record;
      }
      position = (position + 1) & mask;
    }
    throw this.#corrupt('the index has no empty entry although the store is below capacity');
  }

  /** Re-create a cleared key above every value it had; return the present generation. */
  #reviveIfAbsent(binding: SharedMemoryBinding, seed: number): number {
    const file = this.#live();
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(binding.view, binding.index);
      if ((word & ABSENT) === 0n) return this.#checkedGeneration(word & VALUE_MASK);
      const highest = word & VALUE_MASK;
      const value = BigInt(seed) > highest ? BigInt(seed) : highest + 1n;
      const watched = word & WATCHED;
      if (Atomics.compareExchange(binding.view, binding.index, word, value | watched) === word) {
        stamp(file, binding.record, R_UPDATED_AT);
        if (watched !== 0n) this.#notify(file, binding);
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

  #corrupt(why: string): StoreFormatError {
    return corruptFileError(this.path, 'store', why);
  }
}

/** What open() checked once, kept for reopening the path later. */
interface OpenSettings {
  readonly capacity: number;
  readonly mode: number;
  readonly lockTimeoutMs: number;
}

/** Open, check and map the store file at `path`, creating it if there is none. */
function openMappedFile(path: string, settings: OpenSettings, addon: NativeAddon): MappedFile {
  for (let attempt = 1; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, OPEN_EXISTING);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') {
        createStoreFile(path, settings.capacity, settings.mode, addon);
        continue;
      }
      throw openFailure(error, path);
    }
    try {
      const stats = fstatSync(fd);
      if (stats.isFile() && stats.nlink !== 1 && attempt < OPEN_ATTEMPTS) {
        // Replaced between open and fstat, or being published with link + unlink right now.
        closeSync(fd);
        pause(OPEN_RETRY_PAUSE_MS);
        continue;
      }
      checkStoreFile(stats, path);
      const header = decodeHeader(readHeader(fd, stats, path), stats.size, path);
      const buffer = addon.map(fd, header.fileSize);
      return {
        fd,
        header,
        buffer,
        gens: new BigInt64Array(buffer),
        u32: new Uint32Array(buffer),
        f64: new Float64Array(buffer),
        bytes: Buffer.from(buffer),
        ino: stats.ino,
        dev: stats.dev,
      };
    } catch (error) {
      closeSync(fd);
      if (error instanceof StoreError) throw error;
      throw ioError(error, 'open the store', path);
    }
  }
}

function recordOffset(file: MappedFile, record: number): number {
  return file.header.recordsOffset + record * RECORD_SIZE;
}

function recordHolds(file: MappedFile, record: number, identity: KeyIdentity): boolean {
  const base = recordOffset(file, record);
  if (file.u32[(base + R_KEY_LENGTH) / 4] !== identity.length) return false;
  if (!file.bytes.subarray(base + R_DIGEST, base + R_DIGEST + DIGEST_BYTES).equals(identity.digest)) return false;
  return file.bytes.subarray(base + R_KEY, base + R_KEY + identity.inline.length).equals(identity.inline);
}

function stamp(file: MappedFile, record: number, field: number): void {
  file.f64[(recordOffset(file, record) + field) / 8] = Date.now();
}

/** Bump the notification sequence and wake every watcher thread, in every process. */
function wakeWatchers(file: MappedFile, addon: NativeAddon): void {
  Atomics.add(file.u32, H_NOTIFY_SEQ / 4, 1);
  addon.wake(file.buffer, H_NOTIFY_SEQ);
}

/**
 * A process that died while creating a key leaves H_PENDING_RECORD set.
 * Holding the lock, we know it is dead: keep its record if the index
 * already publishes it (it was complete), otherwise wipe it for reuse.
 */
function recoverInterruptedCreation(file: MappedFile): void {
  const pending = Atomics.load(file.u32, H_PENDING_RECORD / 4);
  if (pending === 0) return;
  const record = pending - 1;
  const base = recordOffset(file, record);
  if (isPublished(file, record)) {
    if (Atomics.load(file.u32, H_RECORD_COUNT / 4) < pending) Atomics.store(file.u32, H_RECORD_COUNT / 4, pending);
  } else {
    file.bytes.fill(0, base, base + RECORD_SIZE);
  }
  Atomics.store(file.u32, H_PENDING_RECORD / 4, 0);
}

function isPublished(file: MappedFile, record: number): boolean {
  const tag = file.bytes.readUInt32LE(recordOffset(file, record) + R_DIGEST);
  const { tableSize, indexOffset } = file.header;
  const mask = tableSize - 1;
  let position = tag & mask;
  for (let probes = 0; probes < tableSize; probes++) {
    const ref = Atomics.load(file.u32, (indexOffset >> 2) + position * 2);
    if (ref === 0) return false;
    if (ref === record + 1) return true;
    position = (position + 1) & mask;
  }
  return false;
}

/** Whether the old file is still as long as its header says, so touching it cannot SIGBUS. */
function oldFileIsWhole(file: MappedFile): boolean {
  try {
    return fstatSync(file.fd).size >= file.header.fileSize;
  } catch {
    return false;
  }
}

/**
 * Mark a file that the path no longer names as retired, and poison every
 * key in it: one atomic OR of ABSENT per key, which also returns the last
 * value each key reached there (no later increment can land: it would find
 * the key absent and be made again in the new file). Wakes its watchers.
 * Idempotent: every process that notices does it, and the first wins.
 */
function retire(file: MappedFile, addon: NativeAddon): Array<{ identity: KeyIdentity; word: bigint }> {
  Atomics.or(file.u32, H_FLAGS / 4, FLAG_RETIRED);
  const carried: Array<{ identity: KeyIdentity; word: bigint }> = [];
  const count = Math.min(Atomics.load(file.u32, H_RECORD_COUNT / 4), file.header.capacity);
  for (let record = 0; record < count; record++) {
    const base = recordOffset(file, record);
    const length = file.u32[(base + R_KEY_LENGTH) / 4] ?? 0;
    const digest = Buffer.from(file.bytes.subarray(base + R_DIGEST, base + R_DIGEST + DIGEST_BYTES));
    const inline = Buffer.from(file.bytes.subarray(base + R_KEY, base + R_KEY + Math.min(length, INLINE_KEY_BYTES)));
    const word = Atomics.or(file.gens, (base + R_GENERATION) / 8, ABSENT);
    carried.push({ identity: { label: inline.toString('utf8'), length, digest, inline, tag: digest.readUInt32LE(0) }, word });
  }
  wakeWatchers(file, addon);
  return carried;
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

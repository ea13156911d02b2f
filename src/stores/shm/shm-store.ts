/**
 * The default store: generations in a memory-mapped file shared by every
 * process on the host, read and bumped with lock-free atomics. This module
 * holds the store's life (which file is in use, moving off a file pulled
 * away, closing), its bindings and its watchers; `shm-file.ts` does
 * everything that acts on one file.
 *
 * @module
 */

import { statSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';

import { StoreClosedError, StoreError, StoreFormatError, StoreUnavailableError } from '../../store/errors';
import {
  checkLocalFilesystem,
  fileModeOption,
  ioError,
  lockTimeoutOption,
  otherStoreBeside,
  preparedDefaultDirectory,
  STORE_FILE_NAMES,
  removeAbandonedFiles,
  storePathArgument,
} from '../../system/filesystem';
import { nativeAddon, type NativeAddon, type NativeWatcher } from './native';
import { ABSENT, DEFAULT_CAPACITY, H_NOTIFY_SEQ, INLINE_KEY_BYTES, MAX_CAPACITY, VALUE_MASK, WATCH_LOCK_BASE, WATCHED } from './shm-format';
import { identityOf, MAX_CAS_ATTEMPTS, StoreFile, type CapturedKey, type KeyIdentity, type OpenSettings } from './shm-file';
import { unixSecond, type BindOptions, type GenerationListener, type KeyBinding, type Store, type StoreEntry } from '../../store/store';
import { optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import { WatchList, type WatchedKey } from '../../store/watch';

/** File name of the shared-memory store in the default directory. */
export const SHM_FILE_NAME = STORE_FILE_NAMES.shm;

/**
 * How often each store checks, in the background, that its path still
 * names the file it has mapped (two system calls; none on the hot path),
 * unless told otherwise (`checkIntervalMs`).
 */
export const FILE_CHECK_INTERVAL_MS = 250;

/** How many times one operation follows the store to a new file before it reports the store unavailable. */
const MOVES_PER_OPERATION = 3;

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
  /**
   * How often, in milliseconds, a background check looks whether the file
   * was replaced, removed or damaged (every operation that takes a slow path
   * looks too). A shorter interval notices sooner, at the cost of a `stat`
   * each time; the check never keeps the process alive.
   * @default 250
   */
  readonly checkIntervalMs?: number | undefined;
}

/** A private word that reads as an absent key: the view of a binding with no record. Writes to it reach nobody. */
function unboundView(): BigInt64Array {
  return new BigInt64Array([ABSENT]);
}

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

/** The store's handle on one key. `view` and `index` point at the key's generation word in `file`. */
class SharedMemoryBinding implements KeyBinding {
  view: BigInt64Array = unboundView();
  index = 0;
  /** The file holding the key's record; undefined until the key is found or created, and after every move. */
  file: StoreFile | undefined;
  /** Record number in `file`, or -1. */
  record = -1;
  /** The synced generation as a word, for the hot path's comparison; -1 (never stored) until there is one. */
  expectedWord = -1n;
  /**
   * The word an increment returned, not yet folded into `expectedWord`.
   * increment() only records it: adding one and converting to a number
   * there would make the hot path of markUpdated() markedly slower. The
   * next isStale() or `synced` folds it in.
   */
  incrementedFrom: bigint | null = null;

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

  /** The highest generation this binding knows the key reached, or -1n. */
  known(): bigint {
    this.settle();
    return this.expectedWord;
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
  readonly #settings: OpenSettings;
  /** The file in use; undefined while the file at the path cannot be used (see #unusable). */
  #file: StoreFile | undefined;
  /** Why there is no usable file, thrown by every operation until one is. */
  #unusable: StoreError | undefined;
  /** The addon's count of absorbed SIGBUS faults when this store last looked: a change means some file shrank. */
  #faultsSeen: number;
  /**
   * What this process knew of its keys when it had to give up a file that
   * lost its contents (truncated) and found no usable file: carried over,
   * as floors, into the next file it uses, so no generation repeats.
   */
  #floors: CapturedKey[] = [];
  /** Watched keys whose WATCHED flag could not be set in the file in use; the background check tries again. */
  #unmarkedWatches = false;
  /** Background failures already reported, by message, so that each is reported once. */
  readonly #reported = new Set<string>();
  #closed = false;
  /** Every binding made by this instance and not yet collected, attached to the file in use or not. */
  readonly #bindings = new Set<WeakRef<SharedMemoryBinding>>();
  readonly #finalizer = new FinalizationRegistry<WeakRef<SharedMemoryBinding>>((ref) => this.#bindings.delete(ref));
  readonly #watched = new WatchList<SharedMemoryBinding>();
  #notifier: NativeWatcher | undefined;
  #notifierLinger: NodeJS.Timeout | undefined;
  readonly #fileCheck: NodeJS.Timeout;

  private constructor(path: string, file: StoreFile, addon: NativeAddon, settings: OpenSettings, checkIntervalMs: number) {
    this.path = path;
    this.#file = file;
    this.#addon = addon;
    this.#settings = settings;
    this.#faultsSeen = addon.faults();
    this.#fileCheck = setInterval(() => this.#checkInBackground(), checkIntervalMs);
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
    const checkIntervalMs = optionalInteger(opts.checkIntervalMs, 'checkIntervalMs', FILE_CHECK_INTERVAL_MS, { min: 10, max: 60_000 });
    const file = path === undefined ? join(preparedDefaultDirectory(), SHM_FILE_NAME) : storePathArgument(path);
    const addon = nativeAddon();
    checkLocalFilesystem(dirname(file));
    removeAbandonedFiles(file);
    const store = new SharedMemoryStore(file, StoreFile.openLive(file, settings, addon), addon, settings, checkIntervalMs);
    otherStoreBeside(file, 'shm');
    return store;
  }

  /** How many keys the store can hold. */
  get capacity(): number {
    return this.#live().header.capacity;
  }

  /** How many keys the store holds, cleared ones included (they keep their place). */
  get size(): number {
    return this.#live().recordCount();
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
    const binding = new SharedMemoryBinding(key, identityOf(wellFormedString(key, 'key')), this);
    const ref = new WeakRef(binding);
    this.#bindings.add(ref);
    this.#finalizer.register(binding, ref);
    return binding;
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
    const record = file.find(identityOf(wellFormedString(key, 'key')));
    if (record >= 0) file.stamp(record);
  }

  /** A snapshot of every key in the store, in creation order. */
  entries(): StoreEntry[] {
    const file = this.#live();
    return file.records().map((record) => ({
      key: record.key,
      keyTruncated: record.keyLength > INLINE_KEY_BYTES,
      generation: generationOf(file, record.word),
      createdAt: new Date(record.createdAt),
      updatedAt: new Date(record.updatedAt),
    }));
  }

  /**
   * Call `listener` with the generation of `key` (null when absent) soon
   * after it changes, in any process, until the returned function is
   * called. A burst of changes may arrive as one call with the latest
   * generation. `since` is the generation the listener already knows: if
   * the key differs from it now, the listener is called at once; if
   * undefined, the current generation is taken as known. `onClose` is
   * called if the store is closed while the listener is registered.
   *
   * On Linux this is a real wake-up: the changing process wakes a futex in
   * the file, and one native thread per store waits on it, never blocking
   * the event loop or the thread pool and never keeping the process alive;
   * it ends a second after the last watcher is gone.
   * While any process watches a key, changes to that key cost a system call
   * more. Elsewhere, watchers check their keys every 25 ms.
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    this.#checkOpen();
    const watched = this.#watched.get(key) ?? this.#startWatching(key);
    const { behind, remove } = this.#watched.register(watched, since, this.readBinding(watched.target), listener, onClose);
    if (behind) queueMicrotask(() => this.#deliver());
    return () => {
      if (remove()) this.#stopWatching(watched.target);
    };
  }

  /**
   * Close the file and release its mapping at once. Synchronizers bound to
   * this store then report their keys as expired, anything else they do
   * throws {@link StoreClosedError}, and pending `waitForChange()` calls
   * reject with it.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#fileCheck);
    this.#stopNotifier();
    // Closing the descriptor below releases this instance's watch locks.
    this.#watched.close(this.#closedError());
    this.#detachBindings();
    this.#bindings.clear();
    this.#file?.close();
    this.#file = undefined;
  }

  /** @internal */
  readBinding(binding: SharedMemoryBinding): number | null {
    const file = this.#live();
    if (!this.#attachIfPublished(file, binding)) return null;
    return generationOf(file, Atomics.load(file.gens, binding.index));
  }

  /** @internal */
  fetchOrCreateBinding(binding: SharedMemoryBinding, seed: number): number {
    for (let move = 0; move < MOVES_PER_OPERATION; move++) {
      const file = this.#live();
      if (binding.file !== file) {
        const record = file.findOrCreate(binding.identity, seed);
        // Retired while this process waited for the creation lock: do it again in the live file.
        if (record < 0) continue;
        this.#attach(file, binding, record);
      }
      if (file.retired) continue;
      const value = this.#reviveIfAbsent(file, binding, seed);
      if (file.retired) {
        // Retired while reviving: the retiring process may have captured the key as absent before the revival.
        this.#handOver(file, binding);
        continue;
      }
      // Truncated while reviving: the word may have been a page that reads as absent, private to this process.
      if (this.#addon.faults() !== this.#faultsSeen) continue;
      binding.expectedWord = BigInt(value);
      binding.incrementedFrom = null;
      return value;
    }
    throw this.#keptMoving();
  }

  /**
   * @internal The slow path of an increment whose previous word was flagged,
   * unbound or out of range. Returns false, changing nothing visible, when
   * the key is absent.
   */
  incrementOutOfRange(binding: SharedMemoryBinding, previous: bigint): boolean {
    const file = this.#live(); // moves to the live file first if the binding's was retired or shrunk
    if (binding.file !== file) {
      // Unbound, or bound to a file this process has left: the add reached nobody. Make the increment here.
      return this.#attachIfPublished(file, binding) && binding.increment();
    }
    if (previous < 0n) throw file.corrupt(`key "${binding.key}" holds generation word ${previous}`);
    // Absent: the add only raised the highest value the tombstone remembers, which nobody sees.
    if ((previous & ABSENT) !== 0n) return false;
    binding.incrementedFrom = BigInt(checkedGeneration(file, previous & VALUE_MASK));
    if ((previous & WATCHED) !== 0n) this.#notify(file, binding);
    return true;
  }

  /** @internal */
  deleteBinding(binding: SharedMemoryBinding): void {
    const file = this.#live();
    if (!this.#attachIfPublished(file, binding)) return;
    const previous = Atomics.or(file.gens, binding.index, ABSENT);
    file.stamp(binding.record);
    if ((previous & (ABSENT | WATCHED)) === WATCHED) this.#notify(file, binding);
  }

  /**
   * The file to work on, after moving to the live file if the one in use
   * was retired or shrank. Throws StoreClosedError, or the reason there is
   * no usable file.
   */
  #live(): StoreFile {
    this.#checkOpen();
    const faults = this.#addon.faults();
    if (faults !== this.#faultsSeen) {
      // Some mapped store file shrank under this process (perhaps this one): check now, not at the next tick.
      this.#faultsSeen = faults;
      this.#checkFile();
    }
    if (this.#file === undefined || this.#file.retired) this.#moveToLiveFile();
    if (this.#file === undefined) throw this.#unusable ?? new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `No usable store file at ${this.path}.`, { path: this.path });
    return this.#file;
  }

  #checkOpen(): void {
    if (this.#closed) throw this.#closedError();
  }

  #closedError(): StoreClosedError {
    return new StoreClosedError(`The store at ${this.path} was closed; open it again to keep using it.`, { path: this.path });
  }

  #keptMoving(): StoreUnavailableError {
    return new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `The store file at ${this.path} was replaced ${MOVES_PER_OPERATION} times during one operation. ` +
        'Something keeps replacing it: stop it, or use another path.',
      { path: this.path },
    );
  }

  /** Bind `binding` to its key's record in `file`, if the key is published there; false when it is not. */
  #attachIfPublished(file: StoreFile, binding: SharedMemoryBinding): boolean {
    if (binding.file === file) return true;
    const record = file.find(binding.identity);
    if (record < 0) return false;
    this.#attach(file, binding, record);
    return true;
  }

  #attach(file: StoreFile, binding: SharedMemoryBinding, record: number): void {
    binding.file = file;
    binding.record = record;
    binding.view = file.gens;
    binding.index = file.wordIndex(record);
  }

  /** Re-create a cleared key above every value it had; return the present generation. */
  #reviveIfAbsent(file: StoreFile, binding: SharedMemoryBinding, seed: number): number {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(file.gens, binding.index);
      if ((word & ABSENT) === 0n) return checkedGeneration(file, word & VALUE_MASK);
      const highest = word & VALUE_MASK;
      const value = BigInt(seed) > highest ? BigInt(seed) : highest + 1n;
      const watched = word & WATCHED;
      if (Atomics.compareExchange(file.gens, binding.index, word, value | watched) === word) {
        file.stamp(binding.record);
        if (watched !== 0n) this.#notify(file, binding);
        return checkedGeneration(file, value);
      }
    }
    throw new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `Key "${binding.key}" in ${this.path} changed ${MAX_CAS_ATTEMPTS} times while it was being re-created.`,
      { path: this.path },
    );
  }

  /**
   * A key revived in `file` after it was retired: poison it again (the
   * atomic OR also captures anything added since) and carry that over to
   * the live file, so that whatever the retiring process captured, the
   * live file ends above it.
   */
  #handOver(file: StoreFile, binding: SharedMemoryBinding): void {
    const word = Atomics.or(file.gens, binding.index, ABSENT);
    const next = this.#live();
    if (next !== file && next.carryOver(binding.identity, word)) next.wakeWatchers();
  }

  /** The first watcher of `key` in this instance: make sure it has a record, mark it watched, start listening. */
  #startWatching(key: string): WatchedKey<SharedMemoryBinding> {
    const binding = this.bind(key) as SharedMemoryBinding;
    this.#markWatched(this.#live(), binding);
    const watched = this.#watched.open(key, binding);
    this.#startNotifier();
    return watched;
  }

  /** Take this instance's watch lock on the key in `file` and set its WATCHED flag (creating the record, absent, if needed). */
  #markWatched(file: StoreFile, binding: SharedMemoryBinding): void {
    if (binding.file !== file) {
      const record = file.findOrCreate(binding.identity, null);
      if (record < 0) throw new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `${this.path} was replaced just now; try again.`, { path: this.path });
      this.#attach(file, binding, record);
    }
    if (!this.#addon.rangeLocks) return;
    file.withCreationLock(() => {
      if (!file.lock(WATCH_LOCK_BASE + binding.record, false)) throw file.lockTimeout();
      Atomics.or(file.gens, binding.index, WATCHED);
    });
  }

  /** Mark every watched key in the file in use; what fails is tried again by the background check. */
  #markAllWatched(file: StoreFile): void {
    this.#unmarkedWatches = false;
    for (const watched of this.#watched.values()) {
      try {
        this.#markWatched(file, watched.target);
      } catch (error) {
        if (!(error instanceof StoreError)) throw error;
        this.#unmarkedWatches = true;
      }
    }
  }

  /** The last watcher of a key in this instance is gone. */
  #stopWatching(binding: SharedMemoryBinding): void {
    if (this.#watched.size === 0) this.#stopNotifierSoon();
    const file = this.#file;
    if (this.#closed || file === undefined || binding.file !== file || !this.#addon.rangeLocks) return;
    this.#addon.unlock(file.fd, WATCH_LOCK_BASE + binding.record);
    this.#clearWatchedFlagIfUnwatched(file, binding);
  }

  /** Clear a key's WATCHED flag when no process watches it any more (also after a watcher died). */
  #clearWatchedFlagIfUnwatched(file: StoreFile, binding: SharedMemoryBinding): void {
    try {
      file.withCreationLock(() => {
        if (this.#watched.get(binding.key) === undefined && !this.#addon.lockedByOthers(file.fd, WATCH_LOCK_BASE + binding.record)) {
          Atomics.and(file.gens, binding.index, NOT_WATCHED);
        }
      });
    } catch (error) {
      // A stuck creation lock only leaves the flag set: changes then wake nobody, at a small cost.
      if (!(error instanceof StoreError)) throw error;
    }
  }

  /**
   * Tell every watcher of every process that the key of `binding` changed.
   * If nobody watches it any more (a watcher died without unwatching),
   * clear its flag so that later changes skip this.
   */
  #notify(file: StoreFile, binding: SharedMemoryBinding): void {
    file.wakeWatchers();
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
    this.#watched.deliverAll((watched) => {
      try {
        return this.readBinding(watched.target);
      } catch {
        return null; // the file is unusable just now: the key reads as absent, as it does for isExpired()
      }
    });
  }

  /**
   * The timer's entry point. Nothing a background check meets may throw
   * into the host: store failures become the store's state (keys read as
   * expired, operations report the reason); anything else is reported once
   * as a process warning.
   */
  #checkInBackground(): void {
    try {
      this.#checkFile();
      if (this.#unmarkedWatches && this.#file !== undefined) this.#markAllWatched(this.#file);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (this.#reported.has(message)) return;
      this.#reported.add(message);
      process.emitWarning(`The background check of the store at ${this.path} failed: ${message}`, { code: 'GENSYNC_BACKGROUND_CHECK' });
    }
  }

  /**
   * Does the path still name the file we mapped, is the file still whole,
   * has another process retired it? Two system calls, never on the hot path.
   */
  #checkFile(): void {
    if (this.#closed) return;
    const file = this.#file;
    if (file === undefined) {
      this.#moveToLiveFile();
      return;
    }
    let pathStats: Stats | undefined;
    try {
      pathStats = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return; // try again at the next check
    }
    const pulled = pathStats === undefined || pathStats.ino !== file.ino || pathStats.dev !== file.dev;
    if (pulled || file.retired || !file.intact) this.#moveToLiveFile();
  }

  /**
   * Leave the file in use for the file now at the path. The new file is
   * opened and checked first: if that fails, nothing changes (the next
   * check tries again) unless the old file cannot be used either. Then,
   * unless the old file shrank (its lost pages read as absent), mark it
   * retired and poison every key in it, and carry each key over above the
   * value it had, so that every holder of either file reads it as expired
   * and no update is lost; from a shrunk file, carry over what this
   * process knows. Then re-bind this instance's keys and watchers.
   */
  #moveToLiveFile(): void {
    const old = this.#file;
    let next: StoreFile;
    try {
      next = StoreFile.openLive(this.path, this.#settings, this.#addon);
    } catch (error) {
      const reason = error instanceof StoreError ? error : ioError(error, 'reopen the store', this.path);
      if (old !== undefined && !old.retired && old.intact) return;
      if (old !== undefined) this.#floors.push(...this.#knownFloors());
      this.#abandon(reason);
      return;
    }
    if (old !== undefined && next.ino === old.ino && next.dev === old.dev) {
      next.close(); // the same file after all
      return;
    }
    // What the old file held (unless it lost its contents), and in any case what this process knows.
    const captured = old !== undefined && old.intact ? old.retire() : [];
    let watched = false;
    for (const { identity, word } of [...this.#floors.splice(0), ...captured, ...this.#knownFloors()]) {
      watched = next.carryOver(identity, word) || watched;
    }
    if (watched) next.wakeWatchers();
    this.#abandon(undefined);
    this.#file = next;
    this.#markAllWatched(next);
    if (this.#watched.size > 0) this.#startNotifier();
    queueMicrotask(() => this.#deliver());
  }

  /** What this process's bindings know of their keys, as floors for a new file when the old one lost its contents. */
  #knownFloors(): CapturedKey[] {
    const floors: CapturedKey[] = [];
    for (const ref of this.#bindings) {
      const binding = ref.deref();
      const known = binding?.known() ?? -1n;
      if (binding !== undefined && known >= 0n) floors.push({ identity: binding.identity, word: ABSENT | known });
    }
    return floors;
  }

  /** Stop using the current file: unbind every binding (they read as expired), stop the notifier, unmap and close it. */
  #abandon(reason: StoreError | undefined): void {
    this.#stopNotifier();
    this.#detachBindings();
    this.#file?.close();
    this.#file = undefined;
    this.#unusable = reason;
  }

  #detachBindings(): void {
    for (const ref of this.#bindings) {
      const binding = ref.deref();
      if (binding === undefined) continue;
      binding.view = unboundView();
      binding.index = 0;
      binding.file = undefined;
      binding.record = -1;
    }
  }
}

/** A generation word's value, or null when absent; flags removed and range checked. */
function generationOf(file: StoreFile, word: bigint): number | null {
  if (word < 0n) throw file.corrupt(`a generation word holds ${word}`);
  return (word & ABSENT) !== 0n ? null : checkedGeneration(file, word & VALUE_MASK);
}

/** A generation value (no flags), checked to be exact as a number. */
function checkedGeneration(file: StoreFile, value: bigint): number {
  if (value < 0n || value > SAFE_WORD_LIMIT) throw file.corrupt(`a generation word holds ${value}, outside the range a generation can take`);
  return Number(value);
}

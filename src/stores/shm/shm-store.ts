/**
 * The default store: generations in a memory-mapped file shared by every
 * process on the host, read and bumped with lock-free atomics. This module
 * is the store's front: options, opening, the public calls, closing. The
 * work is done by the modules beside it:
 *
 * ```
 * shm-store.ts      the front (this file)
 *   shm-binding.ts  one key: hot paths, re-creation, following a move
 *   shm-watch.ts    watchers, the notifier thread, the WATCHED flag
 *   live-file.ts    which file is in use; moving to a new one
 *     retirement.ts   retiring a replaced file, carrying its keys over
 *     key-creation.ts crash-safe creation of a record, under the kernel lock
 *     open-file.ts    creating, checking and mapping a file
 *     mapped-file.ts  byte offsets, the probe loop, kernel locks
 *     shm-format.ts   the layout
 * native.ts         the addon: map, futex, range locks
 * ```
 *
 * @module
 */

import { dirname, join } from 'node:path';

import { type StoreClosedError } from '../../store/errors';
import { type BindOptions, type GenerationListener, type KeyBinding, type Store, type StoreEntry } from '../../store/store';
import { optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import {
  checkLocalFilesystem,
  fileModeOption,
  lockTimeoutOption,
  otherStoreBeside,
  preparedDefaultDirectory,
  removeAbandonedFiles,
  STORE_FILE_NAMES,
  storePathArgument,
} from '../../system/filesystem';
import { LiveFile } from './live-file';
import { identityOf, type MappedFile } from './mapped-file';
import { nativeAddon, type NativeAddon } from './native';
import type { OpenSettings } from './open-file';
import { openLive } from './retirement';
import { Replica } from './replica';
import { Bindings, generationOf, SharedMemoryBinding, type BindingContext } from './shm-binding';
import { DEFAULT_CAPACITY, INLINE_KEY_BYTES, MAX_CAPACITY } from './shm-format';
import { Watching } from './shm-watch';

export { NOTIFIER_LINGER_MS, WATCH_POLL_INTERVAL_MS } from './shm-watch';

/** File name of the shared-memory store in the default directory. */
export const SHM_FILE_NAME = STORE_FILE_NAMES.shm;

/**
 * How often each store checks, in the background, that its path still
 * names the file it has mapped (two system calls; none on the hot path),
 * unless told otherwise (`checkIntervalMs`).
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
  /**
   * How often, in milliseconds, a background check looks whether the file
   * was replaced, removed or damaged (every operation that takes a slow path
   * looks too). A shorter interval notices sooner, at the cost of a `stat`
   * each time; the check never keeps the process alive.
   * @default 250
   */
  readonly checkIntervalMs?: number | undefined;
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
 * within `checkIntervalMs` (250 ms unless given): the process marks the old file
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
  readonly #live: LiveFile;
  readonly #bindings = new Bindings();
  readonly #watching: Watching;
  /** What every binding of this instance works through. */
  readonly #context: BindingContext;
  /** The relay's view of the store, when a RelayStore opened it (see {@link SharedMemoryStore.openForRelay}). */
  #replica: Replica | undefined;

  private constructor(path: string, settings: OpenSettings, addon: NativeAddon, checkIntervalMs: number) {
    this.path = path;
    const tenants = {
      knownFloors: () => this.#bindings.floors(),
      wentBack: (file: MappedFile) => this.#bindings.wentBack(file),
      leave: () => {
        this.#watching.leave();
        this.#bindings.detachAll();
      },
      arrive: (file: MappedFile) => {
        this.#watching.arrive(file);
        this.#replica?.arrived(file);
      },
      recheck: (file: MappedFile) => this.#watching.recheck(file),
    };
    this.#live = new LiveFile(path, openLive(path, settings, addon), settings, addon, tenants, checkIntervalMs);
    this.#watching = new Watching(this.#live, addon, (key) => this.#bind(key));
    this.#context = { live: this.#live, notify: (file, binding) => this.#watching.notify(file, binding) };
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
    const store = new SharedMemoryStore(file, settings, addon, checkIntervalMs);
    otherStoreBeside(file, 'shm');
    return store;
  }

  /**
   * @internal Open the store for a RelayStore: the store, and its port for the host's relay. Throws as
   * {@link SharedMemoryStore.open} does.
   */
  static openForRelay(path: string, options?: SharedMemoryStoreOptions): { store: SharedMemoryStore; replica: Replica } {
    const store = SharedMemoryStore.open(path, options);
    const replica = new Replica(store.#live, nativeAddon(), (key) => store.#bind(key));
    store.#replica = replica;
    return { store, replica };
  }

  /** How many keys the store can hold. */
  get capacity(): number {
    return this.#live.current().header.capacity;
  }

  /** How many keys the store holds, cleared ones included (they keep their place). */
  get size(): number {
    return this.#live.current().recordCount();
  }

  /** Format version of the file. */
  get formatVersion(): number {
    return this.#live.current().header.version;
  }

  /** Size of the file in bytes; fixed when it was created. */
  get fileSize(): number {
    return this.#live.current().header.fileSize;
  }

  get closed(): boolean {
    return this.#live.closed;
  }

  bind(key: string, _options?: BindOptions): KeyBinding {
    return this.#bind(key);
  }

  /** How watchers here learn of changes: a futex wake-up, or polling every 25 ms where that is not available. */
  get watchMechanism(): 'futex' | 'poll' {
    return this.#watching.mechanism;
  }

  /**
   * Record now as the last update time of `key` (see {@link StoreEntry.updatedAt}).
   * Increments do not do this themselves: reading the clock would triple
   * their cost. For a tool that wants its own bumps timed; the CLI does not
   * use it (its `list` calls the column "created or cleared" on this store).
   * Does nothing for an absent key.
   */
  touch(key: string): void {
    const file = this.#live.current();
    const record = file.find(identityOf(wellFormedString(key, 'key')));
    if (record >= 0) file.stamp(record);
  }

  /** A snapshot of every key in the store, in creation order. */
  entries(): StoreEntry[] {
    const file = this.#live.current();
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
    return this.#watching.watch(key, since, listener, onClose);
  }

  /** {@link close}, for `using store = SharedMemoryStore.open(…)`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Close the file and release its mapping at once. Synchronizers bound to
   * this store then report their keys as expired, anything else they do
   * throws {@link StoreClosedError}, and pending `waitForChange()` calls
   * reject with it.
   */
  close(): void {
    if (this.#live.closed) return;
    // Closed first, so that a listener told of the close finds the store closed. Closing the descriptor
    // releases this instance's watch locks.
    this.#live.close();
    this.#watching.close(this.#live.closedError());
    this.#bindings.clear();
  }

  #bind(key: string): SharedMemoryBinding {
    this.#checkOpen();
    const binding = new SharedMemoryBinding(key, identityOf(wellFormedString(key, 'key')), this.#context);
    this.#bindings.add(binding);
    return binding;
  }

  #checkOpen(): void {
    if (this.#live.closed) throw this.#live.closedError();
  }
}

/**
 * Watching keys of the shared-memory store. A watched key has the WATCHED
 * flag set in its generation word, so whoever changes it knows to wake the
 * watchers: it bumps the file's notification sequence and wakes the futex
 * on it. One native thread per store instance waits on that futex (or a
 * timer polls, where futexes or range locks are missing) and delivers.
 * Each watching instance holds a shared range lock on a byte per watched
 * key, so any process can ask whether a key still has watchers, and a
 * watcher that dies stops counting at once.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { StoreClosedError, StoreError, StoreUnavailableError } from '../../store/errors';
import type { GenerationListener } from '../../store/store';
import { Linger, WatchList, type WatchedKey } from '../../store/watch';
import { findOrCreate, withCreationLock } from './key-creation';
import type { LiveFile } from './live-file';
import type { MappedFile } from './mapped-file';
import type { NativeAddon, NativeWatcher } from './native';
import type { SharedMemoryBinding } from './shm-binding';
import { H_NOTIFY_SEQ, H_NOTIFY_SLEEPERS, WATCH_LOCK_BASE, WATCHED } from './shm-format';

/** How often watchers check their keys where futexes or range locks are not available (macOS, BSD). */
export const WATCH_POLL_INTERVAL_MS = 25;

/**
 * How long the notifier thread outlives the last watcher, so that
 * `waitForChange()` in a loop does not start a thread for every call. The
 * thread never keeps the process alive, lingering or not.
 */
export const NOTIFIER_LINGER_MS = 1000;

const NOT_WATCHED = ~WATCHED;

/** A process that changes a key watched elsewhere asks whether it is still watched on one change in this many. */
export const WATCHER_CHECK_EVERY = 64;

export class Watching {
  readonly #watched = new WatchList<SharedMemoryBinding>();
  #notifier: NativeWatcher | undefined;
  readonly #notifierLinger = new Linger(NOTIFIER_LINGER_MS);
  /** Watched keys whose WATCHED flag could not be set in the file in use; the background check tries again. */
  #unmarked = false;

  constructor(
    private readonly live: LiveFile,
    private readonly addon: NativeAddon,
    private readonly bind: (key: string) => SharedMemoryBinding,
  ) {}

  /** How watchers here learn of changes. */
  get mechanism(): 'futex' | 'poll' {
    return this.addon.capabilities.futex && this.addon.capabilities.rangeLocks ? 'futex' : 'poll';
  }

  /** See {@link SharedMemoryStore.watch}. */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    const watched = this.#watched.get(key) ?? this.#start(key);
    const { behind, remove } = this.#watched.register(watched, since, watched.target.read(), listener, onClose);
    if (behind) queueMicrotask(() => this.#deliver());
    return () => {
      if (remove()) this.#stop(watched.target);
    };
  }

  /**
   * Tell every watcher of every process that the key of `binding` changed.
   * If nobody watches it any more (a watcher died without unwatching),
   * clear its flag so that later changes skip this.
   */
  notify(file: MappedFile, binding: SharedMemoryBinding): void {
    file.wakeWatchers();
    // Asking the kernel is a system call as dear as the wake-up: ask on one change in WATCHER_CHECK_EVERY. A flag
    // left by a watcher that died costs only wake-ups until then.
    if (binding.notifications++ % WATCHER_CHECK_EVERY !== 0) return;
    if (this.#watched.get(binding.key) === undefined && !file.lockedByOthers(WATCH_LOCK_BASE + binding.record)) {
      this.#clearFlagIfUnwatched(file, binding);
    }
  }

  /** `file` is now in use: mark every watched key there, listen to it, and tell every listener what changed. */
  arrive(file: MappedFile): void {
    this.#markAll(file);
    if (this.#watched.size > 0) this.#startNotifier();
    queueMicrotask(() => this.#deliver());
  }

  /**
   * Retry marking the keys whose flag could not be set in `file`, and tell
   * the listeners what changed meanwhile: a change of a key without the
   * flag woke nobody (issue 27 item 3). Until every key is marked, this
   * polls them at each background check.
   */
  recheck(file: MappedFile): void {
    if (!this.#unmarked) return;
    this.#markAll(file);
    queueMicrotask(() => this.#deliver());
  }

  /** The file in use is going away: stop listening to it. */
  leave(): void {
    this.#stopNotifier();
  }

  /** The store closed: stop listening and tell every listener with an `onClose`. */
  close(error: StoreClosedError): void {
    this.#stopNotifier();
    this.#watched.close(error);
  }

  /** The first watcher of `key` in this instance: make sure it has a record, mark it watched, start listening. */
  #start(key: string): WatchedKey<SharedMemoryBinding> {
    const binding = this.bind(key);
    this.#mark(this.live.current(), binding);
    const watched = this.#watched.open(key, binding);
    this.#startNotifier();
    return watched;
  }

  /** Take this instance's watch lock on the key in `file` and set its WATCHED flag (creating the record, absent, if needed). */
  #mark(file: MappedFile, binding: SharedMemoryBinding): void {
    if (binding.file !== file) {
      const record = findOrCreate(file, binding.identity, null);
      if (record < 0) throw new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `${file.path} was replaced just now; try again.`, { path: file.path });
      binding.attach(file, record);
    }
    if (!this.addon.capabilities.rangeLocks) return;
    withCreationLock(file, () => {
      if (!file.lock(WATCH_LOCK_BASE + binding.record, false)) throw file.lockTimeout();
      Atomics.or(file.gens, file.wordIndex(binding.record), WATCHED);
    });
  }

  /** Mark every watched key in `file`; what fails is tried again by the background check. */
  #markAll(file: MappedFile): void {
    this.#unmarked = false;
    for (const watched of this.#watched.values()) {
      try {
        this.#mark(file, watched.target);
      } catch (error) {
        if (!(error instanceof StoreError)) throw error;
        this.#unmarked = true;
      }
    }
  }

  /** The last watcher of a key in this instance is gone. */
  #stop(binding: SharedMemoryBinding): void {
    if (this.#watched.size === 0) this.#stopNotifierSoon();
    const file = this.live.inUse;
    if (this.live.closed || file === undefined || binding.file !== file || !this.addon.capabilities.rangeLocks) return;
    file.unlock(WATCH_LOCK_BASE + binding.record);
    this.#clearFlagIfUnwatched(file, binding);
  }

  /** Clear a key's WATCHED flag when no process watches it any more (also after a watcher died). */
  #clearFlagIfUnwatched(file: MappedFile, binding: SharedMemoryBinding): void {
    try {
      withCreationLock(file, () => {
        if (this.#watched.get(binding.key) === undefined && !file.lockedByOthers(WATCH_LOCK_BASE + binding.record)) {
          Atomics.and(file.gens, file.wordIndex(binding.record), NOT_WATCHED);
        }
      });
    } catch (error) {
      // A stuck creation lock only leaves the flag set: changes then wake nobody, at a small cost.
      if (!(error instanceof StoreError)) throw error;
    }
  }

  #startNotifier(): void {
    this.#notifierLinger.cancel();
    const file = this.live.inUse;
    if (this.#notifier !== undefined || file === undefined) return;
    const deliver = (): void => this.#deliver();
    if (this.mechanism === 'futex') {
      this.#notifier = new this.addon.Watcher(file.fd, H_NOTIFY_SEQ, deliver, H_NOTIFY_SLEEPERS);
    } else {
      const timer = setInterval(deliver, WATCH_POLL_INTERVAL_MS);
      timer.unref();
      this.#notifier = { stop: () => clearInterval(timer) };
    }
  }

  #stopNotifier(): void {
    this.#notifierLinger.cancel();
    this.#notifier?.stop();
    this.#notifier = undefined;
  }

  /** Stop the notifier once no key has been watched for NOTIFIER_LINGER_MS. */
  #stopNotifierSoon(): void {
    if (this.#notifier === undefined) return;
    this.#notifierLinger.start(() => this.#watched.size === 0, () => this.#stopNotifier());
  }

  /** Give every listener whose key changed the current generation. */
  #deliver(): void {
    if (this.live.closed) return;
    this.#watched.deliverAll((watched) => {
      try {
        return watched.target.read();
      } catch {
        return null; // the file is unusable just now: the key reads as absent, as it does for isExpired()
      }
    });
  }
}

/**
 * The synchronous GenerationSynchronizer, a port of djblets'
 * `djblets.cache.synchronizer.GenerationSynchronizer`.
 *
 * @module
 */

import type { Logger } from '../store/logger';
import { defaultStore } from '../stores/default-store';
import { InvalidArgumentError } from '../store/errors';
import { isAnyStore, isSyncStore, type KeyBinding, type Store } from '../store/store';
import { describe, optionsObject } from '../store/validate';
import {
  keyChanges,
  waitForKeyChange,
  watchKey,
  Watches,
  type ChangeIterator,
  type ChangesOptions,
  type GenerationChange,
  type Unwatch,
  type WaitForChangeOptions,
  type WatchOptions,
} from '../store/watch';
import { checkSynchronizerOptions, OutageReporter, readClock } from './policy';

export { DEFAULT_CACHE_EXPIRATION_SECS } from './policy';

export type { Logger } from '../store/logger';

/** Options of {@link GenerationSynchronizer}. */
export interface GenerationSynchronizerOptions {
  /**
   * Normalize the key with {@link makeCacheKey}, so it fits store limits and
   * is unlikely to collide with other applications' keys. With `false`,
   * the key is used exactly as given and must be a string.
   * @default true
   */
  readonly normalizeCacheKey?: boolean | undefined;
  /**
   * Lifetime of the stored key in seconds, where the store supports expiry
   * (the file and Redis stores). The shared-memory store keeps keys until
   * they are cleared.
   * @default 31536000 (one year)
   */
  readonly cacheExpirationSecs?: number | undefined;
  /**
   * The store that holds the generations.
   * @default defaultStore(): one shared-memory store per process
   */
  readonly store?: Store | undefined;
  /**
   * Prefix parts for {@link makeCacheKey} (its `prefix` option), to keep
   * applications that share a store apart. Ignored when `normalizeCacheKey`
   * is false.
   * @default no prefix
   */
  readonly keyPrefix?: string | readonly string[] | undefined;
  /**
   * Where store outages are reported: once when an outage starts, once when
   * it ends.
   * @default console
   */
  readonly logger?: Logger | undefined;
  /**
   * The clock new generations are seeded from, in milliseconds since the
   * epoch. Inject one in tests. The Redis store ignores it: it seeds from
   * the Redis server's own clock, so that no host's clock can make a
   * generation repeat.
   * @default Date.now
   */
  readonly clock?: (() => number) | undefined;
}

/**
 * Keeps a generation number in step across processes, so each can tell
 * whether the state it cached is still current.
 *
 * Create one with a stable key; the constructor fetches the key's
 * generation, creating it if it does not exist. When a process changes the
 * state, it must call {@link markUpdated}, which bumps the generation and
 * so expires every other process's copy. Those processes notice through
 * {@link isExpired}, call {@link refresh} to take the current generation,
 * and then reload or recompute their state: in that order, a change made
 * while they reload is seen at the next check (the other order takes it as
 * seen and keeps the older state).
 *
 * A failing store is never thrown at the caller: the failure is logged
 * once, and the key reads as expired until the store answers again. Bugs
 * and misconfiguration are thrown: bad arguments, a store too full to add
 * this key (from the constructor), and a store this process closed.
 *
 * @example
 * const sync = new GenerationSynchronizer('site-settings');
 * let settings = loadSettings();
 *
 * function currentSettings() {
 *   if (sync.isExpired()) {
 *     sync.refresh(); // first take the generation, then load
 *     settings = loadSettings();
 *   }
 *   return settings;
 * }
 *
 * function saveSettings(changes) {
 *   writeSettings(changes);
 *   sync.markUpdated();
 *   settings = loadSettings();
 * }
 */
export class GenerationSynchronizer {
  /** The key in the store, after normalization. */
  readonly cacheKey: string;
  /** The store holding the generation. */
  readonly store: Store;
  readonly #binding: KeyBinding;
  readonly #clock: () => number;
  readonly #outages: OutageReporter;
  readonly #watches = new Watches();

  /**
   * @param cacheKey A stable key naming the state; a string, or a sequence
   *   of parts that {@link makeCacheKey} joins.
   */
  constructor(cacheKey: string | readonly string[], options?: GenerationSynchronizerOptions) {
    const opts = optionsObject(options, 'GenerationSynchronizer options');
    const checked = checkSynchronizerOptions(cacheKey, opts);
    const store: unknown = opts.store ?? defaultStore();
    if (!isSyncStore(store)) {
      const what = isAnyStore(store) ? `the asynchronous ${store.kind} store` : describe(store);
      throw new InvalidArgumentError(
        `Option "store" must be a synchronous store such as SharedMemoryStore or FileStore, not ${what}. ` +
          'Asynchronous stores such as RedisStore work with AsyncGenerationSynchronizer.',
      );
    }
    this.cacheKey = checked.cacheKey;
    this.store = store;
    this.#clock = checked.clock;
    this.#outages = new OutageReporter(checked.logger, checked.cacheKey);
    this.#binding = store.bind(checked.cacheKey, { expirationSecs: checked.expirationSecs });
    this.#outages.attempt('checking for initial state in', () => this.#binding.fetchOrCreate(readClock(this.#clock)), { throwIfFull: true });
  }

  /** The generation last fetched or set by this instance; `null` if the store could not be reached yet. */
  get syncGen(): number | null {
    return this.#binding.synced;
  }

  /**
   * Whether the state has expired: `true` when the stored generation is
   * absent or differs from {@link syncGen}, and while the store cannot be
   * reached. On the shared-memory store this is one atomic load.
   *
   * An outage is reported as over by the next call that reaches the store
   * ({@link refresh}, {@link markUpdated}, {@link clear}); an unreachable
   * store only ever makes this answer `true`, which is always safe.
   */
  isExpired(): boolean {
    try {
      return this.#binding.isStale();
    } catch (error) {
      this.#outages.failed(error, 'checking for expiration in');
      return true;
    }
  }

  /**
   * Take the current generation from the store, creating it if the key was
   * cleared. Call this after reloading the state.
   *
   * @returns whether the store was reached; if not, {@link syncGen} is unchanged.
   */
  refresh(): boolean {
    return this.#outages.attempt('refreshing', () => this.#binding.fetchOrCreate(readClock(this.#clock)));
  }

  /**
   * Remove the key from the store. Every process, this one included, then
   * finds its state expired and reloads; the next {@link refresh} or
   * {@link markUpdated} re-creates the key with a generation higher than
   * any it had before.
   *
   * @returns whether the store was reached.
   */
  clear(): boolean {
    return this.#outages.attempt('clearing', () => this.#binding.delete());
  }

  /**
   * Record that the state was updated: atomically move the stored
   * generation up (by one on the local stores; on a relayed store, Redis
   * then moves it to the larger of that and its clock) and take the result,
   * so every other process finds its state expired. A cleared key is
   * re-created instead.
   *
   * @returns whether the update reached the store. `false` means the other
   *   processes were not told (the failure is logged); retry, or reload
   *   later.
   */
  markUpdated(): boolean {
    try {
      const incremented = this.#binding.increment();
      if (incremented && !this.#outages.failing) return true;
      // The key was cleared (re-create it), or an outage just ended (say so).
      if (!incremented) this.#binding.fetchOrCreate(readClock(this.#clock));
      this.#outages.recovered();
      return true;
    } catch (error) {
      this.#outages.failed(error, 'marking as updated');
      return false;
    }
  }

  /**
   * Call `listener` soon after the generation of this key changes in any
   * process — a bump, a clear, a re-creation — until the returned function
   * is called (or disposed of with `using`). The listener gets the new
   * generation and the one it saw before (at first, {@link syncGen}); it is
   * called at once if the key already differs from {@link syncGen}. Changes
   * in a burst may arrive as one call with the latest generation. The
   * listener does not refresh this synchronizer: call {@link refresh}, then
   * reload, as after {@link isExpired}. With `signal`, the watch stops when
   * the signal aborts.
   *
   * On the shared-memory store this is a real wake-up (a futex, on Linux);
   * on the file store an `fs.watch` with a poll behind it; on Redis a
   * pub/sub message. Watching never keeps the process alive by itself.
   *
   * @example
   * const unwatch = sync.watch(({ generation }) => reloadSettings());
   * // later
   * unwatch();
   */
  watch(listener: (change: GenerationChange) => void, options?: WatchOptions): Unwatch {
    return this.#watches.watch((onStopped) => watchKey(this.store, this.cacheKey, this.syncGen, listener, undefined, options, onStopped));
  }

  /**
   * The changes of this key as an async iterator (see {@link watch}): the
   * loop gets each change, or, when it falls behind, the latest generation
   * and the one it saw before. It ends normally when `signal` aborts, when
   * the store closes, when the loop breaks, or when this synchronizer is
   * disposed of.
   *
   * @example
   * for await (const { generation } of sync.changes({ signal })) {
   *   sync.refresh();
   *   settings = loadSettings();
   * }
   */
  changes(options?: ChangesOptions): ChangeIterator {
    return this.#watches.changes((onEnded) => keyChanges(this.store, this.cacheKey, this.syncGen, options, onEnded));
  }

  /**
   * Stop every {@link watch} and end every {@link changes} loop started
   * through this synchronizer (`using sync = new GenerationSynchronizer(…)`).
   * The store stays open: it belongs to whoever opened it.
   */
  [Symbol.dispose](): void {
    this.#watches.stopAll();
  }

  /**
   * Resolve with the next change of this key (see {@link watch}): at once if
   * it already differs from {@link syncGen}. Resolves `null` after
   * `timeoutMs`; rejects with the signal's reason if `signal` aborts.
   */
  waitForChange(options?: WaitForChangeOptions): Promise<GenerationChange | null> {
    return waitForKeyChange(this.store, this.cacheKey, this.syncGen, options);
  }
}

/**
 * The promise-based twin of {@link GenerationSynchronizer}, for stores that
 * answer over a network (Redis) — and for every other store too.
 *
 * @module
 */

import { defaultStore } from '../stores/default-store';
import { InvalidArgumentError } from '../store/errors';
import { isAnyStore, isAsyncStore, type AsyncKeyBinding, type AsyncStore, type KeyBinding, type Store } from '../store/store';
import { checkSynchronizerOptions, OutageReporter, readClock } from './policy';
import type { GenerationSynchronizerOptions } from './synchronizer';
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

/** Options of {@link AsyncGenerationSynchronizer.create}: those of {@link GenerationSynchronizer}, with any store. */
export interface AsyncGenerationSynchronizerOptions extends Omit<GenerationSynchronizerOptions, 'store'> {
  /**
   * The store that holds the generations: a {@link RedisStore}, or any
   * synchronous store.
   * @default defaultStore()
   */
  readonly store?: Store | AsyncStore | undefined;
}

/** A synchronous binding seen through promises, so one class serves every store. */
class SyncBindingAdapter implements AsyncKeyBinding {
  constructor(private readonly binding: KeyBinding) {}

  get key(): string {
    return this.binding.key;
  }

  get synced(): number | null {
    return this.binding.synced;
  }

  async isStale(): Promise<boolean> {
    return this.binding.isStale();
  }

  async read(): Promise<number | null> {
    return this.binding.read();
  }

  async fetchOrCreate(now: number): Promise<number> {
    return this.binding.fetchOrCreate(now);
  }

  async increment(): Promise<boolean> {
    return this.binding.increment();
  }

  async delete(): Promise<void> {
    this.binding.delete();
  }
}

const CONSTRUCTION = Symbol('AsyncGenerationSynchronizer.create');

/**
 * {@link GenerationSynchronizer} with promises: the same semantics, for
 * stores whose answers take a round trip. Create one with
 * {@link AsyncGenerationSynchronizer.create}. No method ever rejects because
 * the store failed: an outage makes {@link isExpired} resolve `true` and the
 * other methods resolve `false`, and is logged once.
 *
 * @example
 * const store = await RedisStore.connect({ url: 'redis://127.0.0.1:6379' });
 * const sync = await AsyncGenerationSynchronizer.create('site-settings', { store });
 * if (await sync.isExpired()) {
 *   await sync.refresh(); // first take the generation, then load
 *   settings = await loadSettings();
 * }
 */
export class AsyncGenerationSynchronizer {
  /** The key in the store, after normalization. */
  readonly cacheKey: string;
  /** The store holding the generation. */
  readonly store: Store | AsyncStore;
  readonly #binding: AsyncKeyBinding;
  readonly #clock: () => number;
  readonly #outages: OutageReporter;
  readonly #watches = new Watches();

  /** @internal Use {@link AsyncGenerationSynchronizer.create}. */
  constructor(token: typeof CONSTRUCTION, cacheKey: string, store: Store | AsyncStore, binding: AsyncKeyBinding, clock: () => number, outages: OutageReporter) {
    if (token !== CONSTRUCTION) {
      throw new InvalidArgumentError('Create an AsyncGenerationSynchronizer with "await AsyncGenerationSynchronizer.create(key, options)".');
    }
    this.cacheKey = cacheKey;
    this.store = store;
    this.#binding = binding;
    this.#clock = clock;
    this.#outages = outages;
  }

  /**
   * Create a synchronizer and fetch its key's generation, creating it (only
   * if still absent) when it does not exist. Rejects only for bad arguments
   * and a store too full to add the key; an unreachable store is logged and
   * leaves {@link syncGen} `null`.
   */
  static async create(cacheKey: string | readonly string[], options?: AsyncGenerationSynchronizerOptions): Promise<AsyncGenerationSynchronizer> {
    const opts = optionsObject(options, 'AsyncGenerationSynchronizer options');
    const checked = checkSynchronizerOptions(cacheKey, opts);
    const store = opts.store ?? defaultStore();
    if (!isAnyStore(store)) {
      throw new InvalidArgumentError(`Option "store" must be a store such as RedisStore or SharedMemoryStore, not ${describe(store)}.`);
    }
    const bindOptions = { expirationSecs: checked.expirationSecs };
    const binding: AsyncKeyBinding = isAsyncStore(store)
      ? store.bind(checked.cacheKey, bindOptions)
      : new SyncBindingAdapter(store.bind(checked.cacheKey, bindOptions));
    const outages = new OutageReporter(checked.logger, checked.cacheKey);
    const synchronizer = new AsyncGenerationSynchronizer(CONSTRUCTION, checked.cacheKey, store, binding, checked.clock, outages);
    await outages.attemptAsync('checking for initial state in', () => binding.fetchOrCreate(readClock(checked.clock)), { throwIfFull: true });
    return synchronizer;
  }

  /** The generation last fetched or set by this instance; `null` if the store has not been reached yet. */
  get syncGen(): number | null {
    return this.#binding.synced;
  }

  /**
   * Whether the state has expired: `true` when the stored generation is
   * absent or differs from {@link syncGen}, and while the store cannot be
   * reached. Never rejects because of the store.
   */
  async isExpired(): Promise<boolean> {
    try {
      return await this.#binding.isStale();
    } catch (error) {
      this.#outages.failed(error, 'checking for expiration in');
      return true;
    }
  }

  /** Take the current generation, re-creating a cleared key. Resolves whether the store was reached. */
  async refresh(): Promise<boolean> {
    return this.#outages.attemptAsync('refreshing', () => this.#binding.fetchOrCreate(readClock(this.#clock)));
  }

  /** Remove the key, expiring every holder. Resolves whether the store was reached. */
  async clear(): Promise<boolean> {
    return this.#outages.attemptAsync('clearing', () => this.#binding.delete());
  }

  /**
   * Atomically move the stored generation up and take the result: one more
   * on the local stores, the larger of one more and the server's clock in
   * microseconds on Redis (a cleared key is re-created instead). Resolves whether the update reached
   * the store: `false` means other processes may not have been told.
   */
  async markUpdated(): Promise<boolean> {
    return this.#outages.attemptAsync('marking as updated', async () => {
      if (!(await this.#binding.increment())) await this.#binding.fetchOrCreate(readClock(this.#clock));
    });
  }

  /** {@inheritDoc GenerationSynchronizer.watch} */
  watch(listener: (change: GenerationChange) => void, options?: WatchOptions): Unwatch {
    return this.#watches.watch((onStopped) => watchKey(this.store, this.cacheKey, this.syncGen, listener, undefined, options, onStopped));
  }

  /** {@inheritDoc GenerationSynchronizer.changes} */
  changes(options?: ChangesOptions): ChangeIterator {
    return this.#watches.changes((onEnded) => keyChanges(this.store, this.cacheKey, this.syncGen, options, onEnded));
  }

  /**
   * Stop every {@link watch} and end every {@link changes} loop started
   * through this synchronizer. The store stays open: it belongs to whoever
   * opened it.
   */
  [Symbol.dispose](): void {
    this.#watches.stopAll();
  }

  /** {@inheritDoc GenerationSynchronizer.waitForChange} */
  waitForChange(options?: WaitForChangeOptions): Promise<GenerationChange | null> {
    return waitForKeyChange(this.store, this.cacheKey, this.syncGen, options);
  }
}

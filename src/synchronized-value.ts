/**
 * A cached value that reloads itself when another process changes it: the
 * pattern every djblets caller writes by hand, in one line.
 *
 * @module
 */

import { AsyncGenerationSynchronizer, type AsyncGenerationSynchronizerOptions } from './async-synchronizer';
import { InvalidArgumentError } from './errors';
import { GenerationSynchronizer, type GenerationSynchronizerOptions } from './synchronizer';
import { describe } from './validate';

function checkLoader(load: unknown): void {
  if (typeof load !== 'function') throw new InvalidArgumentError(`The loader must be a function, not ${describe(load)}.`);
}

/**
 * A value loaded once and kept, reloaded only when its generation changed
 * in some process.
 *
 * @example
 * const settings = new SynchronizedValue('site-settings', () => readSettingsFromDatabase());
 * settings.get();        // cached; reloads only after some process called invalidate()
 * writeSettingsToDatabase(changes);
 * settings.invalidate(); // reload here, expire everywhere
 */
export class SynchronizedValue<T> {
  /** The synchronizer that decides when to reload. */
  readonly synchronizer: GenerationSynchronizer;
  readonly #load: () => T;
  #loaded = false;
  #value: T | undefined;

  /**
   * @param cacheKey The key naming the state, as for {@link GenerationSynchronizer}.
   * @param load Loads the current value. It runs on the first {@link get}
   *   and after every change; if it throws, the error reaches the caller of
   *   `get()` and the next `get()` tries again.
   */
  constructor(cacheKey: string | readonly string[], load: () => T, options?: GenerationSynchronizerOptions) {
    checkLoader(load);
    this.#load = load;
    this.synchronizer = new GenerationSynchronizer(cacheKey, options);
  }

  /**
   * The value: the cached one while the generation is unchanged, otherwise
   * a fresh load. While the store cannot be reached, every call reloads,
   * which is slower but never stale.
   */
  get(): T {
    if (this.#loaded && !this.synchronizer.isExpired()) return this.#value as T;
    // Take the generation first, then load: a change during the load then
    // shows as expired on the next get(), instead of being lost.
    this.synchronizer.refresh();
    return this.#reload();
  }

  /**
   * Record that the underlying state changed (call it after writing it):
   * every other process reloads on its next {@link get}, and this one
   * reloads now. Returns the fresh value.
   */
  invalidate(): T {
    this.synchronizer.markUpdated();
    return this.#reload();
  }

  /** Load; if the loader throws, the next get() loads again whatever the generation says. */
  #reload(): T {
    this.#loaded = false;
    this.#value = this.#load();
    this.#loaded = true;
    return this.#value;
  }
}

/**
 * {@link SynchronizedValue} with an asynchronous loader and store. Concurrent
 * {@link get} calls that find the value expired share one reload (single
 * flight), so a burst of requests after a change loads it once.
 *
 * @example
 * const settings = await AsyncSynchronizedValue.create('site-settings', () => db.loadSettings(), { store });
 * await settings.get();
 */
export class AsyncSynchronizedValue<T> {
  /** The synchronizer that decides when to reload. */
  readonly synchronizer: AsyncGenerationSynchronizer;
  readonly #load: () => Promise<T>;
  #loaded = false;
  #value: T | undefined;
  #reloading: Promise<T> | undefined;

  private constructor(synchronizer: AsyncGenerationSynchronizer, load: () => Promise<T>) {
    this.synchronizer = synchronizer;
    this.#load = load;
  }

  /** Create the value's synchronizer; nothing is loaded until the first {@link get}. */
  static async create<T>(
    cacheKey: string | readonly string[],
    load: () => T | Promise<T>,
    options?: AsyncGenerationSynchronizerOptions,
  ): Promise<AsyncSynchronizedValue<T>> {
    checkLoader(load);
    const synchronizer = await AsyncGenerationSynchronizer.create(cacheKey, options);
    return new AsyncSynchronizedValue(synchronizer, async () => load());
  }

  /** The value: cached while unchanged, otherwise reloaded once for all concurrent callers. */
  async get(): Promise<T> {
    if (this.#reloading !== undefined) return this.#reloading;
    if (this.#loaded && !(await this.synchronizer.isExpired())) return this.#value as T;
    return this.#reloading ?? this.#startReload(() => this.synchronizer.refresh());
  }

  /** Record that the underlying state changed: reload here, expire everywhere. Resolves the fresh value. */
  invalidate(): Promise<T> {
    return this.#startReload(() => this.synchronizer.markUpdated());
  }

  /** Take the generation, then load (see SynchronizedValue.get); callers arriving meanwhile share it. */
  #startReload(takeGeneration: () => Promise<boolean>): Promise<T> {
    const reload = (async () => {
      await takeGeneration();
      this.#loaded = false; // a failed load must not leave the old value looking current
      const value = await this.#load();
      this.#value = value;
      this.#loaded = true;
      return value;
    })();
    this.#reloading = reload;
    const settle = (): void => {
      if (this.#reloading === reload) this.#reloading = undefined;
    };
    reload.then(settle, settle);
    return reload;
  }
}

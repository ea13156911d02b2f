/**
 * A cached value that reloads itself when another process changes it: the
 * pattern every djblets caller writes by hand, in one line.
 *
 * @module
 */

import { AsyncGenerationSynchronizer, type AsyncGenerationSynchronizerOptions } from './async-synchronizer';
import { InvalidArgumentError, StoreUnavailableError } from '../store/errors';
import { GenerationSynchronizer, type GenerationSynchronizerOptions } from './synchronizer';
import { describe } from '../store/validate';

function checkLoader(load: unknown): void {
  if (typeof load !== 'function') throw new InvalidArgumentError(`The loader must be a function, not ${describe(load)}.`);
}

const ASYNC_LOADER_ADVICE = 'SynchronizedValue needs a loader that returns the value itself; for a loader that returns a promise, use AsyncSynchronizedValue.';

function isThenable(value: unknown): boolean {
  return (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

/** The error of an invalidate() whose change did not reach the store. */
function notPublished(cacheKey: string): StoreUnavailableError {
  return new StoreUnavailableError(
    'ERR_GENSYNC_NOT_PUBLISHED',
    `The change to "${cacheKey}" was not recorded in the store, so other processes were not told and may keep serving ` +
      'the old value (the value here was reloaded). The store failure was logged; call invalidate() again once it is back.',
  );
}

/** A loader that must not return a promise: refused at once for an async function, and at the first promise otherwise. */
type SyncLoader<T> = () => T extends PromiseLike<unknown> ? never : T;

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
  /** Stop whatever watches this value's synchronizer started (`using settings = new SynchronizedValue(…)`). */
  [Symbol.dispose](): void {
    this.synchronizer[Symbol.dispose]();
  }

  constructor(cacheKey: string | readonly string[], load: SyncLoader<T>, options?: GenerationSynchronizerOptions) {
    checkLoader(load);
    if (load.constructor.name === 'AsyncFunction') throw new InvalidArgumentError(ASYNC_LOADER_ADVICE);
    this.#load = load as () => T;
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
   *
   * @throws {@link StoreUnavailableError} with `ERR_GENSYNC_NOT_PUBLISHED`
   *   when the change could not be recorded in the store (an outage): this
   *   process reloaded, but the others were not told.
   */
  invalidate(): T {
    const published = this.synchronizer.markUpdated();
    const value = this.#reload();
    if (!published) throw notPublished(this.synchronizer.cacheKey);
    return value;
  }

  /** Load; if the loader throws, the next get() loads again whatever the generation says. */
  #reload(): T {
    this.#loaded = false;
    const value = this.#load();
    if (isThenable(value)) {
      // Never cache a promise: it would be served, settled or rejected, until some process changed the key.
      (value as PromiseLike<unknown>).then(undefined, () => {});
      throw new InvalidArgumentError(ASYNC_LOADER_ADVICE);
    }
    this.#value = value;
    this.#loaded = true;
    return value;
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
  /** The generation the stored value was loaded for, and the number of the reload that loaded it. */
  #valueGeneration: number | null = null;
  #valueFlight = 0;
  /** Reloads are numbered in the order they start: a later one took its generation later. */
  #flights = 0;
  #reloading: Flight<T> | undefined;

  /** Stop whatever watches this value's synchronizer started. */
  [Symbol.dispose](): void {
    this.synchronizer[Symbol.dispose]();
  }

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

  /**
   * The value: cached while unchanged, otherwise reloaded once for all
   * concurrent callers. A caller joins a reload in progress only if that
   * reload took the generation the store holds now; otherwise (the state
   * changed again since it started) it starts a newer one. The value never
   * goes back to one loaded for an older generation.
   */
  async get(): Promise<T> {
    const flight = this.#reloading;
    if (flight !== undefined) {
      const generation = await flight.taken;
      // Finished or overtaken meanwhile: decide again from what is there now.
      if (flight !== this.#reloading) return this.get();
      if (generation === this.synchronizer.syncGen && !(await this.synchronizer.isExpired())) return flight.value;
      return this.#startReload(() => this.synchronizer.refresh());
    }
    const current = this.#loaded && this.#valueGeneration === this.synchronizer.syncGen && !(await this.synchronizer.isExpired());
    if (current) return this.#value as T;
    return this.#reloading?.value ?? this.#startReload(() => this.synchronizer.refresh());
  }

  /**
   * Record that the underlying state changed: reload here, expire
   * everywhere. Resolves the fresh value; rejects with
   * {@link StoreUnavailableError} `ERR_GENSYNC_NOT_PUBLISHED` when the
   * change could not be recorded in the store (this process reloaded, but
   * the others were not told).
   */
  async invalidate(): Promise<T> {
    let published = true;
    const value = await this.#startReload(async () => {
      published = await this.synchronizer.markUpdated();
      return published;
    });
    if (!published) throw notPublished(this.synchronizer.cacheKey);
    return value;
  }

  /**
   * Take the generation, then load (see SynchronizedValue.get); callers
   * arriving meanwhile may share it. A reload stores its value only if no
   * reload that started after it has stored one.
   */
  #startReload(takeGeneration: () => Promise<boolean>): Promise<T> {
    const number = ++this.#flights;
    let generationTaken: (generation: number | null) => void = () => {};
    const taken = new Promise<number | null>((resolve) => (generationTaken = resolve));
    const value = (async () => {
      try {
        await takeGeneration();
      } finally {
        generationTaken(this.synchronizer.syncGen);
      }
      const generation = this.synchronizer.syncGen;
      if (number > this.#valueFlight) this.#loaded = false; // a failed load must not leave an older value looking current
      const loaded = await this.#load();
      if (number > this.#valueFlight) {
        this.#value = loaded;
        this.#valueGeneration = generation;
        this.#valueFlight = number;
        this.#loaded = true;
      }
      return loaded;
    })();
    const flight: Flight<T> = { value, taken };
    this.#reloading = flight;
    const settle = (): void => {
      if (this.#reloading === flight) this.#reloading = undefined;
    };
    value.then(settle, settle);
    return value;
  }
}

/** A reload in progress: the generation it took (once taken) and the value it will load. */
interface Flight<T> {
  readonly taken: Promise<number | null>;
  readonly value: Promise<T>;
}

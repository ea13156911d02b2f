/**
 * Change notification: the bookkeeping every store's `watch()` shares, and
 * the `watch()` / `waitForChange()` of the synchronizers.
 *
 * @module
 */

import { InvalidArgumentError, type StoreClosedError } from './errors';
import type { GenerationListener } from './store';
import { describe, optionalInteger, optionsObject } from './validate';

/** One listener of a watched key, and the generation it last saw (undefined: not read yet; the first read sets it). */
export interface WatchRegistration {
  readonly listener: GenerationListener;
  /** Told when the store closes while the listener is registered. */
  readonly onClose: ((error: StoreClosedError) => void) | undefined;
  last: number | null | undefined;
}

/** A watched key: the store's handle on it (`target`) and its listeners. */
export interface WatchedKey<T> {
  readonly key: string;
  readonly target: T;
  readonly registrations: Set<WatchRegistration>;
}

/** The keys one store instance watches. */
export class WatchList<T> {
  readonly #entries = new Map<string, WatchedKey<T>>();

  get size(): number {
    return this.#entries.size;
  }

  values(): IterableIterator<WatchedKey<T>> {
    return this.#entries.values();
  }

  get(key: string): WatchedKey<T> | undefined {
    return this.#entries.get(key);
  }

  /** Start watching `key` with `target` (the first listener of a key). */
  open(key: string, target: T): WatchedKey<T> {
    const entry: WatchedKey<T> = { key, target, registrations: new Set() };
    this.#entries.set(key, entry);
    return entry;
  }

  /**
   * Add a listener knowing `since` (or the `current` generation when
   * undefined; a store that cannot read synchronously passes undefined for
   * `current`, and its next read sets the baseline). Returns whether the
   * listener may already be behind, so should be checked now, and a
   * function that removes it and says whether the key lost its last
   * listener (the caller then stops watching the key).
   */
  register(
    entry: WatchedKey<T>,
    since: number | null | undefined,
    current: number | null | undefined,
    listener: GenerationListener,
    onClose?: (error: StoreClosedError) => void,
  ): { readonly behind: boolean; readonly remove: () => boolean } {
    if (typeof listener !== 'function') throw new InvalidArgumentError('The watch listener must be a function.');
    const registration: WatchRegistration = { listener, onClose, last: since === undefined ? current : since };
    entry.registrations.add(registration);
    let active = true;
    return {
      behind: current === undefined || registration.last !== current,
      remove: () => {
        if (!active) return false;
        active = false;
        entry.registrations.delete(registration);
        if (entry.registrations.size > 0 || this.#entries.get(entry.key) !== entry) return false;
        this.#entries.delete(entry.key);
        return true;
      },
    };
  }

  /**
   * Give every listener whose key changed the current generation, as
   * `read` gives it; a key whose `read` returns undefined is skipped this
   * time. Listeners' errors are rethrown afterwards, each on its own.
   */
  deliverAll(read: (watched: WatchedKey<T>) => number | null | undefined): void {
    const failures: unknown[] = [];
    for (const watched of this.#entries.values()) {
      const generation = read(watched);
      if (generation !== undefined) deliver(watched, generation, failures);
    }
    rethrowLater(failures);
  }

  /** The store closed: tell every registration that asked (a pending waitForChange() rejects), and forget them all. */
  close(error: StoreClosedError): void {
    const registrations = [...this.#entries.values()].flatMap((entry) => [...entry.registrations]);
    this.#entries.clear();
    for (const registration of registrations) registration.onClose?.(error);
  }
}

/**
 * Tell each listener of `entry` that lags behind `generation`. Errors thrown
 * by listeners are collected into `failures` so that the other listeners
 * still run; see {@link rethrowLater}.
 */
export function deliver(entry: WatchedKey<unknown>, generation: number | null, failures: unknown[]): void {
  for (const registration of entry.registrations) {
    if (registration.last === generation) continue;
    const first = registration.last === undefined;
    registration.last = generation;
    if (first) continue;
    try {
      registration.listener(generation);
    } catch (error) {
      failures.push(error);
    }
  }
}

/** Like an EventEmitter listener's, a watch listener's error is not swallowed: rethrow each one on its own. */
export function rethrowLater(failures: readonly unknown[]): void {
  for (const error of failures) {
    queueMicrotask(() => {
      throw error;
    });
  }
}

/** What a watch listener is told: the key's new generation, and the one it had seen before. */
export interface GenerationChange {
  /** The generation now stored, or `null` when the key was cleared. */
  readonly generation: number | null;
  /** The generation this listener saw last (at first, the synchronizer's `syncGen` when watching began). */
  readonly previous: number | null;
}

/** Stops a watch. Call it, or let `using` dispose of it. */
export type Unwatch = (() => void) & Disposable;

/** Options of `watch()`. */
export interface WatchOptions {
  /** Stop watching when this signal aborts (an already aborted signal starts nothing). */
  readonly signal?: AbortSignal | undefined;
}

/** Options of `changes()`. */
export interface ChangesOptions {
  /** End the iteration when this signal aborts: the loop ends normally, it does not throw. */
  readonly signal?: AbortSignal | undefined;
}

/** The changes of one key, for `for await`; `return()` (a `break`) or disposing of it stops watching. */
export type ChangeIterator = AsyncIterableIterator<GenerationChange> & AsyncDisposable;

/** Options of `waitForChange()`. */
export interface WaitForChangeOptions {
  /** Stop waiting when this signal aborts; the promise rejects with the signal's reason. */
  readonly signal?: AbortSignal | undefined;
  /** Stop waiting after this many milliseconds; the promise resolves `null`. */
  readonly timeoutMs?: number | undefined;
}

/** Anything with a `watch()` like the stores'. */
interface Watchable {
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void;
}

function signalOption(options: unknown, what: string): AbortSignal | undefined {
  const { signal } = optionsObject(options as { signal?: unknown } | undefined, what);
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError(`Option "signal" must be an AbortSignal, not ${describe(signal)}.`);
  }
  return signal;
}

/** An unwatch that also stops when `signal` aborts, and forgets the signal once stopped. */
function stoppable(stop: () => void, signal: AbortSignal | undefined, onStopped: (() => void) | undefined): Unwatch {
  let stopped = false;
  const unwatch = (): void => {
    if (stopped) return;
    stopped = true;
    signal?.removeEventListener('abort', unwatch);
    stop();
    onStopped?.();
  };
  signal?.addEventListener('abort', unwatch, { once: true });
  return Object.assign(unwatch, { [Symbol.dispose]: unwatch });
}

/** @internal The watch() of both synchronizer classes. */
export function watchKey(
  store: Watchable,
  key: string,
  since: number | null,
  listener: (change: GenerationChange) => void,
  onClose?: (error: StoreClosedError) => void,
  options?: WatchOptions,
  onStopped?: () => void,
): Unwatch {
  if (typeof listener !== 'function') throw new InvalidArgumentError('watch() needs a listener function.');
  const signal = signalOption(options, 'watch options');
  if (signal?.aborted) {
    onStopped?.();
    return stoppable(() => undefined, undefined, undefined);
  }
  let previous = since;
  const stop = store.watch(
    key,
    since,
    (generation) => {
      const change: GenerationChange = { generation, previous };
      previous = generation;
      listener(change);
    },
    onClose,
  );
  return stoppable(stop, signal, onStopped);
}

/**
 * @internal The changes() of both synchronizer classes: the watch as an async iterator. A consumer slower than the
 * changes gets them merged (the latest generation, and the one it last saw), never a queue that grows. Ends, without
 * throwing, when the signal aborts or the store closes.
 */
export function keyChanges(
  store: Watchable,
  key: string,
  since: number | null,
  options: ChangesOptions | undefined,
  onEnded?: () => void,
): ChangeIterator {
  const signal = signalOption(options, 'changes options');
  let pending: GenerationChange | undefined;
  const waiters: Array<(result: IteratorResult<GenerationChange, undefined>) => void> = [];
  let ended = false;
  let unwatch: Unwatch | undefined;
  const end = (): void => {
    if (ended) return;
    ended = true;
    pending = undefined;
    signal?.removeEventListener('abort', end);
    unwatch?.();
    for (const waiter of waiters.splice(0)) waiter({ done: true, value: undefined });
    onEnded?.();
  };
  if (signal?.aborted) {
    end();
  } else {
    unwatch = watchKey(
      store,
      key,
      since,
      (change) => {
        const waiter = waiters.shift();
        if (waiter !== undefined) waiter({ done: false, value: change });
        else pending = pending === undefined ? change : { generation: change.generation, previous: pending.previous };
      },
      end,
      { signal },
    );
    signal?.addEventListener('abort', end, { once: true });
  }
  const finished = (): Promise<IteratorResult<GenerationChange, undefined>> => Promise.resolve({ done: true, value: undefined });
  return {
    next(): Promise<IteratorResult<GenerationChange, undefined>> {
      if (pending !== undefined) {
        const change = pending;
        pending = undefined;
        return Promise.resolve({ done: false, value: change });
      }
      if (ended) return finished();
      return new Promise((resolve) => waiters.push(resolve));
    },
    return(): Promise<IteratorResult<GenerationChange, undefined>> {
      end();
      return finished();
    },
    [Symbol.asyncIterator]() {
      return this;
    },
    async [Symbol.asyncDispose]() {
      end();
    },
  };
}

/**
 * @internal What a synchronizer started watching (its `watch()` listeners and `changes()` iterators), stopped
 * together when it is disposed of. Each forgets itself when it stops on its own (unwatched, aborted, ended).
 */
export class Watches {
  readonly #stops = new Set<() => void>();

  /** Start a watch with `start(onStopped)`, kept here until it stops. */
  watch(start: (onStopped: () => void) => Unwatch): Unwatch {
    let unwatch: Unwatch | undefined;
    const forget = this.#keep(() => unwatch?.());
    try {
      unwatch = start(forget);
    } catch (error) {
      forget();
      throw error;
    }
    return unwatch;
  }

  /** Start an iterator with `start(onEnded)`, kept here until it ends. */
  changes(start: (onEnded: () => void) => ChangeIterator): ChangeIterator {
    let iterator: ChangeIterator | undefined;
    const forget = this.#keep(() => void iterator?.return?.());
    try {
      iterator = start(forget);
    } catch (error) {
      forget();
      throw error;
    }
    return iterator;
  }

  /** Stop every watch and end every iterator. */
  stopAll(): void {
    for (const stop of [...this.#stops]) stop();
  }

  #keep(stop: () => void): () => void {
    const entry = (): void => stop();
    this.#stops.add(entry);
    return () => void this.#stops.delete(entry);
  }
}

/** @internal The waitForChange() of both synchronizer classes. */
export function waitForKeyChange(
  store: Watchable,
  key: string,
  since: number | null,
  options: WaitForChangeOptions | undefined,
): Promise<GenerationChange | null> {
  // Validation happens inside the executor, so bad options reject like every other failure of a promise API.
  return new Promise((resolve, reject) => {
    const { timeoutMs } = optionsObject(options, 'waitForChange options');
    const signal = signalOption(options, 'waitForChange options');
    const timeout = timeoutMs === undefined ? undefined : optionalInteger(timeoutMs, 'timeoutMs', 0, { min: 0, max: 2 ** 31 - 1 });
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    let unwatch: Unwatch | undefined;
    let settled = false;
    const finish = (): void => {
      settled = true;
      unwatch?.();
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = (): void => {
      finish();
      reject(signal?.reason);
    };
    unwatch = watchKey(
      store,
      key,
      since,
      (change) => {
        finish();
        resolve(change);
      },
      (error) => {
        finish();
        reject(error);
      },
    );
    if (settled) unwatch();
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeout !== undefined) {
      timer = setTimeout(() => {
        finish();
        resolve(null);
      }, timeout);
    }
  });
}

/**
 * A delayed stop of what watching keeps running (a notifier thread, a
 * subscriber connection) once no key is watched, so that watching and
 * unwatching in a loop (`waitForChange()`) does not restart it every time.
 * The timer never keeps the process alive.
 */
export class Linger {
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly ms: number) {}

  /** Call `stop` after the linger time if `idle()` still holds then; does nothing if already counting. */
  start(idle: () => boolean, stop: () => void): void {
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (idle()) stop();
    }, this.ms);
    this.#timer.unref();
  }

  cancel(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/**
 * The contract between a synchronizer and the store that keeps its
 * generations. A store holds, per key, either nothing or a generation: a
 * non-negative integer that only ever grows.
 *
 * @module
 */

import type { StoreClosedError } from './errors';

/**
 * One synchronizer's handle on one key of a synchronous store. A binding
 * remembers the generation it last fetched or set (its *synced* value), so
 * that the hot path, {@link KeyBinding.isStale}, is a single comparison.
 */
export interface KeyBinding {
  /** The key, exactly as stored. */
  readonly key: string;

  /** The generation last fetched or set through this binding; `null` before the first. */
  readonly synced: number | null;

  /**
   * Whether the stored generation is absent or differs from the synced
   * value. This is the hot path: it must not allocate, lock, or make a
   * system call when it can avoid it.
   */
  isStale(): boolean;

  /** The stored generation, or `null` when the key is absent. */
  read(): number | null;

  /**
   * Return the stored generation, creating it first if the key is absent.
   * Creation is atomic and only-if-absent; a created generation is the
   * larger of the store's seed for `now` (milliseconds since the epoch) and
   * one more than any value the key held before in this store. The result
   * becomes the synced value.
   */
  fetchOrCreate(now: number): number;

  /**
   * Atomically move the stored generation up, and make the result the
   * synced value, and return `true`: by one on the local stores; a store may
   * move it further (Redis moves it to the larger of one more and its clock
   * in microseconds, so that no value repeats after Redis loses data); or return `false`, changing nothing visible,
   * when the key is absent.
   */
  increment(): boolean;

  /** Remove the key. Every holder, this one included, then sees it as stale. */
  delete(): void;
}

/** One key of a store, as {@link Store.entries} reports it. */
export interface StoreEntry {
  /** The key. A store may keep only the start of a very long key; see `keyTruncated`. */
  readonly key: string;
  /** Whether `key` is only the start of a longer key (the shared-memory store keeps 256 UTF-8 bytes). */
  readonly keyTruncated: boolean;
  /** The generation, or `null` when the key was cleared. */
  readonly generation: number | null;
  /** When the key was first created; `null` where the store does not record it (Redis). */
  readonly createdAt: Date | null;
  /**
   * When the key was last created, re-created or cleared. The shared-memory
   * store does not time increments: reading the clock would triple their
   * cost. `null` where the store does not record it (Redis).
   */
  readonly updatedAt: Date | null;
}

/** Per-key settings a synchronizer passes to {@link Store.bind}. */
export interface BindOptions {
  /** Lifetime of the stored key, in seconds, where the store supports expiry. */
  readonly expirationSecs: number;
}

/**
 * Called by {@link Store.watch} with a key's generation, or `null` when the
 * key is absent, whenever it differs from the last one this listener saw.
 */
export type GenerationListener = (generation: number | null) => void;

/** A store that answers synchronously: shared memory, or a file. */
export interface Store {
  /** Short name of the kind of store: `'shm'`, `'file'`, … */
  readonly kind: string;
  /** The file holding the store, when there is one. */
  readonly path: string | undefined;
  /** Whether {@link Store.close} was called. */
  readonly closed: boolean;
  /** Get a handle on `key`. Does not create the key. */
  bind(key: string, options: BindOptions): KeyBinding;
  /** A snapshot of every key the store holds, in no particular order. */
  entries(): StoreEntry[];
  /**
   * Call `listener` soon after the generation of `key` changes in any
   * process, until the returned function is called. Changes in a burst may
   * arrive as one call with the latest generation. `since` is the
   * generation the listener already knows (the listener is called at once
   * if the key differs from it); undefined takes the current one.
   * `onClose` is called if the store is closed while the listener is
   * registered (a pending `waitForChange()` rejects with the error).
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void;
  /** Release the store's resources. Bindings made from it then report every key as stale. */
  close(): void;
}

/**
 * `T` with every method answering through a promise: the asynchronous form
 * of a synchronous contract, derived rather than written twice.
 */
export type Promised<T> = {
  readonly [Member in keyof T]: T[Member] extends (...args: infer Args) => infer Result ? (...args: Args) => Promise<Result> : T[Member];
};

/** One synchronizer's handle on one key of an asynchronous store; see {@link KeyBinding}. */
export type AsyncKeyBinding = Promised<KeyBinding>;

/** A store that answers asynchronously, over a network: Redis. */
export interface AsyncStore {
  /** Short name of the kind of store: `'redis'`. */
  readonly kind: string;
  /** Always true: tells an {@link AsyncStore} from a {@link Store}. */
  readonly asynchronous: true;
  /** Whether {@link AsyncStore.close} was called. */
  readonly closed: boolean;
  /** Get a handle on `key`. Does not create the key. */
  bind(key: string, options: BindOptions): AsyncKeyBinding;
  /** A snapshot of every key the store holds, in no particular order. */
  entries(): Promise<StoreEntry[]>;
  /** As {@link Store.watch}. */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void;
  /** Release the store's resources. */
  close(): Promise<void>;
}

/** The seed of a new generation in the local stores: the Unix time in whole seconds, as djblets seeds it. */
export function unixSecond(now: number): number {
  return Math.floor(now / 1000);
}

/** Runtime check that `value` has the shape of a store, synchronous or not. */
export function isAnyStore(value: unknown): value is Store | AsyncStore {
  if (value === null || typeof value !== 'object') return false;
  const candidate = value as Partial<Record<keyof Store, unknown>>;
  return typeof candidate.bind === 'function' && typeof candidate.close === 'function' && typeof candidate.kind === 'string';
}

/** Runtime check for a synchronous {@link Store}. */
export function isSyncStore(value: unknown): value is Store {
  return isAnyStore(value) && (value as { asynchronous?: unknown }).asynchronous !== true;
}

/** Runtime check for an {@link AsyncStore}. */
export function isAsyncStore(value: unknown): value is AsyncStore {
  return isAnyStore(value) && (value as { asynchronous?: unknown }).asynchronous === true;
}

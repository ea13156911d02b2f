/**
 * The contract between a synchronizer and the store that keeps its
 * generations. A store holds, per key, either nothing or a generation: a
 * non-negative integer that only ever grows.
 *
 * @module
 */

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
   * larger of `seed` and one more than any value the key held before in
   * this store. The result becomes the synced value.
   */
  fetchOrCreate(seed: number): number;

  /**
   * Atomically add one to the stored generation, which becomes the synced
   * value, and return `true`; or return `false`, changing nothing visible,
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
  /** When the key was first created. */
  readonly createdAt: Date;
  /**
   * When the key was last created, re-created or cleared. The shared-memory
   * store does not time increments: reading the clock would triple their cost.
   */
  readonly updatedAt: Date;
}

/** Per-key settings a synchronizer passes to {@link Store.bind}. */
export interface BindOptions {
  /** Lifetime of the stored key, in seconds, where the store supports expiry. */
  readonly expirationSecs: number;
}

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
  /** Release the store's resources. Bindings made from it then report every key as stale. */
  close(): void;
}

/** Runtime check that `value` has the shape of a {@link Store}. */
export function isStore(value: unknown): value is Store {
  if (value === null || typeof value !== 'object') return false;
  const candidate = value as Partial<Record<keyof Store, unknown>>;
  return typeof candidate.bind === 'function' && typeof candidate.close === 'function' && typeof candidate.kind === 'string';
}

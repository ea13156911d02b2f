/**
 * The default store when its directory cannot be used safely: an outage
 * that ends by itself once the directory is fixed, instead of an error
 * thrown from every synchronizer's constructor.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { StoreError, type StoreClosedError } from '../store/errors';
import type { BindOptions, GenerationListener, KeyBinding, Store, StoreEntry } from '../store/store';

/** How often, at most, the real store is tried again. */
const RETRY_MS = 1000;

/**
 * Stands in for a store that cannot be opened yet. Every operation fails
 * with the reason (a StoreError: synchronizers log it as an outage and
 * report keys as expired) until, tried again at most once a second, the
 * real store opens; from then on everything goes to it.
 */
export class UnreachableStore implements Store {
  readonly kind: string;
  readonly path: string;
  #reason: StoreError;
  #store: Store | undefined;
  #nextTry = 0;
  #closed = false;

  constructor(
    kind: string,
    path: string,
    reason: StoreError,
    private readonly open: () => Store,
  ) {
    this.kind = kind;
    this.path = path;
    this.#reason = reason;
    this.#nextTry = Date.now() + RETRY_MS;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The real store, or the reason there is none yet. */
  real(): Store {
    if (this.#store !== undefined) return this.#store;
    if (this.#closed || Date.now() < this.#nextTry) throw this.#reason;
    this.#nextTry = Date.now() + RETRY_MS;
    try {
      this.#store = this.open();
    } catch (error) {
      if (!(error instanceof StoreError)) throw error;
      this.#reason = error;
      throw error;
    }
    return this.#store;
  }

  bind(key: string, options: BindOptions): KeyBinding {
    return new DeferredBinding(key, () => this.real().bind(key, options));
  }

  entries(): StoreEntry[] {
    return this.real().entries();
  }

  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    return this.real().watch(key, since, listener, onClose);
  }

  close(): void {
    this.#closed = true;
    this.#store?.close();
  }
}

/** A binding made before its store could open: it binds for real on first use once the store is there. */
class DeferredBinding implements KeyBinding {
  #real: KeyBinding | undefined;

  constructor(
    readonly key: string,
    private readonly make: () => KeyBinding,
  ) {}

  #get(): KeyBinding {
    this.#real ??= this.make();
    return this.#real;
  }

  get synced(): number | null {
    return this.#real?.synced ?? null;
  }

  isStale(): boolean {
    return this.#get().isStale();
  }

  read(): number | null {
    return this.#get().read();
  }

  fetchOrCreate(now: number): number {
    return this.#get().fetchOrCreate(now);
  }

  increment(): boolean {
    return this.#get().increment();
  }

  delete(): void {
    this.#get().delete();
  }
}

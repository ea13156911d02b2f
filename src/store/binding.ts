/**
 * The binding of one key over a store that answers the four calls djblets
 * makes of its cache (read, create if absent, increment if present, delete):
 * the synced/stale bookkeeping, written once for every store that has no
 * faster way (the shared-memory store has its own, for its hot path).
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import type { AsyncKeyBinding, KeyBinding, Promised } from './store';

/** What a store answers for a key, synchronously. */
export interface KeyCalls {
  /** The live generation of `key`, or null when it is absent or expired. */
  generationOf(key: string): number | null;
  /** The generation of `key`, created first if absent (seeded for `now`, ms since the epoch; above any value it had). */
  fetchOrCreate(key: string, now: number, expirationSecs: number): number;
  /** The incremented generation, or null (nothing changed) when the key is absent. */
  increment(key: string): number | null;
  /** Remove `key`; it keeps its highest value, so that it comes back above it. */
  delete(key: string): void;
}

/** The same calls, answered with promises (over a network). */
export type AsyncKeyCalls = Promised<KeyCalls>;

/** The synced generation, NaN until there is one, so that it never matches a stored value. */
class Synced {
  protected expected = Number.NaN;

  get synced(): number | null {
    return Number.isNaN(this.expected) ? null : this.expected;
  }
}

/** A key of a synchronous store, over its {@link KeyCalls}. */
export class CallsBinding extends Synced implements KeyBinding {
  constructor(
    readonly key: string,
    private readonly calls: KeyCalls,
    private readonly expirationSecs: number,
  ) {
    super();
  }

  isStale(): boolean {
    return this.calls.generationOf(this.key) !== this.expected;
  }

  read(): number | null {
    return this.calls.generationOf(this.key);
  }

  fetchOrCreate(now: number): number {
    return (this.expected = this.calls.fetchOrCreate(this.key, now, this.expirationSecs));
  }

  increment(): boolean {
    const generation = this.calls.increment(this.key);
    if (generation === null) return false;
    this.expected = generation;
    return true;
  }

  delete(): void {
    this.calls.delete(this.key);
  }
}

/** A key of an asynchronous store, over its {@link AsyncKeyCalls}. */
export class AsyncCallsBinding extends Synced implements AsyncKeyBinding {
  constructor(
    readonly key: string,
    private readonly calls: AsyncKeyCalls,
    private readonly expirationSecs: number,
  ) {
    super();
  }

  async isStale(): Promise<boolean> {
    return (await this.calls.generationOf(this.key)) !== this.expected;
  }

  read(): Promise<number | null> {
    return this.calls.generationOf(this.key);
  }

  async fetchOrCreate(now: number): Promise<number> {
    return (this.expected = await this.calls.fetchOrCreate(this.key, now, this.expirationSecs));
  }

  async increment(): Promise<boolean> {
    const generation = await this.calls.increment(this.key);
    if (generation === null) return false;
    this.expected = generation;
    return true;
  }

  delete(): Promise<void> {
    return this.calls.delete(this.key);
  }
}

/**
 * Watching keys of the Redis store. Every change is announced on a pub/sub
 * channel as "<SHA-1 of the Redis key> <stored value>"; the store listens on
 * a second connection (see redis-subscription.ts: opened for the first
 * watcher, closed a second after the last) and tells listeners the value a
 * message carries at once, with no read. Watched keys are also read on the
 * main connection: when the subscriber or the main connection (re)connects,
 * every `watchPollMs`, and whenever a message would take a listener back.
 *
 * What a listener is told, in order:
 *
 * - A message is told to each listener whose last value it is newer than
 *   (a change message can only make a watcher look sooner). One that is
 *   older for some listener is not told, and has the key read again.
 * - A read is the truth when no message with a value not seen before
 *   arrived while it was on its way: it is told to every listener whose last
 *   value differs, even a lower one (Redis came back from an older snapshot;
 *   a forged message told a value Redis never held). A read that crossed
 *   such a message is told only where it is newer.
 * - A message value that a read made after it arrived did not find (Redis
 *   held less) is refuted: it never was, or is no longer, Redis' value, and
 *   the same value heard again is ignored. So repeating one forged message
 *   (a flood of it) costs the watchers one reload, not their sight.
 * - "Newer" is per listener (each starts from the generation it knows), in
 *   the order of a key's history: a generation g, then its tombstone after a
 *   clear, then the next generation, which is always above g.
 *
 * So one forged PUBLISH costs a listener one change it did not need, until
 * the next real change (whose message is older than the forged value, and
 * has the key read) or the next poll tells it the truth.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import type { StoreClosedError } from '../../store/errors';
import type { GenerationListener } from '../../store/store';
import { Linger, rethrowLater, WatchList, type WatchedKey, type WatchRegistration } from '../../store/watch';
import type { RedisConnection } from './redis-connection';
import type { RedisEngine } from './redis-engine';
import type { RedisKeys } from './redis-keys';
import { Subscription } from './redis-subscription';

/**
 * How long the subscriber connection outlives the last watcher, so that
 * `waitForChange()` in a loop does not open a connection per call.
 */
export const SUBSCRIBER_LINGER_MS = 1000;

/** A watched key's reads, and what its messages said. */
interface KeyState {
  running: boolean;
  again: boolean;
  /**
   * Registrations, and messages carrying a value not heard before, for the key so far: a read during which
   * this moved is not the whole truth.
   */
  events: number;
  /** Values messages carried that no read has confirmed or refuted yet, and the event of their first arrival. */
  readonly unconfirmed: Map<number, number>;
  /** Values messages carried that a later read refuted: heard again, they are ignored. */
  readonly refuted: Set<number>;
}

/** How many unconfirmed and refuted values a key remembers (the oldest are forgotten first). */
const REMEMBERED_VALUES = 64;

/** Where an absent key falls in the order: before every value (the next one is created above all earlier ones). */
const ABSENT_ORDER = -1;

/**
 * Where a stored value falls in a key's history: a generation g, then (after a
 * clear) its tombstone -(g + 1), then the next generation, which is always
 * above g.
 */
function orderOf(stored: number | null): number {
  if (stored === null) return ABSENT_ORDER;
  return stored >= 0 ? 2 * stored : -2 * stored - 1;
}

export class RedisWatching {
  readonly #watched = new WatchList<KeyState>();
  /** Per listener, the order of the last value it was told (or started from). */
  readonly #orders = new WeakMap<WatchRegistration, number>();
  #subscription: Subscription | undefined;
  #watchPoll: NodeJS.Timeout | undefined;
  readonly #subscriberLinger = new Linger(SUBSCRIBER_LINGER_MS);
  /** Watched keys by the SHA-1 (hex) of their Redis key, which is what change messages carry. */
  readonly #watchedDigests = new Map<string, string>();

  readonly #engine: RedisEngine;
  readonly #connection: RedisConnection;
  readonly #keys: RedisKeys;

  constructor(engine: RedisEngine) {
    this.#engine = engine;
    this.#connection = engine.connection;
    this.#keys = engine.keys;
    const connection = engine.connection;
    // Watchers read again at once when the main connection is back: an announcement the subscriber received
    // while it was down could not be read, and a restart or FLUSHALL meanwhile announces nothing.
    connection.onReady(() => this.#refreshAll());
  }

  /** See {@link RedisStore.watch}; `key` is checked. */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    const watched = this.#watched.get(key) ?? this.#startWatching(key);
    const { remove } = this.#watched.register(watched, since, undefined, listener, onClose);
    watched.target.events++; // a read already on its way was made before this listener knew `since`
    void this.#refreshWatched(watched);
    return () => {
      if (!remove()) return;
      this.#watchedDigests.delete(this.#keys.digestOf(key));
      if (this.#watched.size === 0) this.#stopWatchingSoon();
    };
  }

  /** The store closed: drop the subscriber and tell every listener with an `onClose`. */
  close(error: StoreClosedError): void {
    this.#stopWatching();
    this.#watched.close(error);
  }

  #startWatching(key: string): WatchedKey<KeyState> {
    this.#subscriberLinger.cancel();
    const watched = this.#watched.open(key, { running: false, again: false, events: 0, unconfirmed: new Map(), refuted: new Set() });
    this.#watchedDigests.set(this.#keys.digestOf(key), key);
    if (this.#subscription !== undefined) return watched;
    this.#subscription = new Subscription(this.#engine, (message) => this.#heard(message), () => this.#refreshAll());
    this.#subscription.start();
    this.#watchPoll = setInterval(() => this.#refreshAll(), this.#engine.settings.watchPollMs);
    this.#watchPoll.unref();
    return watched;
  }

  /**
   * A change message: "<digest of the Redis key> <stored value>", told as it is (one round trip from the change to
   * the listener). A bare digest, or a whole key, from a publisher of an earlier build: read the key.
   */
  #heard(message: string): void {
    const space = message.indexOf(' ');
    const byDigest = this.#watchedDigests.get(space < 0 ? message : message.slice(0, space));
    const key = byDigest ?? (message.startsWith(this.#keys.namespace) ? message.slice(this.#keys.namespace.length) : undefined);
    const entry = key === undefined ? undefined : this.#watched.get(key);
    if (entry === undefined) return;
    // Only a digest is followed by a value (a whole key may itself hold spaces).
    const stored = byDigest === undefined || space < 0 ? Number.NaN : Number(message.slice(space + 1));
    if (!Number.isSafeInteger(stored)) {
      entry.target.events++;
      void this.#refreshWatched(entry);
      return;
    }
    const state = entry.target;
    if (state.refuted.has(stored)) return;
    if (!state.unconfirmed.has(stored)) {
      state.events++;
      remember(state.unconfirmed, stored, state.events);
    }
    if (this.#tell(entry, stored, false)) void this.#refreshWatched(entry);
  }

  #stopWatchingSoon(): void {
    this.#subscriberLinger.start(() => this.#watched.size === 0, () => this.#stopWatching());
  }

  #stopWatching(): void {
    this.#subscriberLinger.cancel();
    clearInterval(this.#watchPoll);
    this.#watchPoll = undefined;
    this.#subscription?.close();
    this.#subscription = undefined;
  }

  #refreshAll(): void {
    for (const entry of this.#watched.values()) void this.#refreshWatched(entry);
  }

  /**
   * Tell the listeners of `entry` a stored value (null: absent): each one it is newer for, or, when it is the
   * `truth`, each one whose last value differs. Returns whether the value was older than some listener's last
   * (so that the key is read again). A listener registered without a generation takes the first value as its
   * starting point, untold.
   */
  #tell(entry: WatchedKey<KeyState>, stored: number | null, truth: boolean): boolean {
    const order = orderOf(stored);
    const generation = stored !== null && stored >= 0 ? stored : null;
    let behind = false;
    const failures: unknown[] = [];
    for (const registration of entry.registrations) {
      if (registration.last === undefined) {
        registration.last = generation;
        this.#orders.set(registration, order);
        continue;
      }
      const last = this.#orders.get(registration) ?? orderOf(registration.last);
      if (order === last) continue;
      if (order < last && !truth) {
        behind = true;
        continue;
      }
      this.#orders.set(registration, order);
      if (registration.last === generation) continue; // a tombstone after absent, or the reverse: null either way
      registration.last = generation;
      try {
        registration.listener(generation);
      } catch (error) {
        failures.push(error);
      }
    }
    rethrowLater(failures);
    return behind;
  }

  /**
   * A read issued at event `issuedAt` found `stored`: every value heard before it was issued is now confirmed
   * (Redis had it, or more) or refuted (Redis held less: it never was Redis' value, or no longer is).
   */
  #weigh(state: KeyState, stored: number | null, issuedAt: number): void {
    const order = orderOf(stored);
    for (const [value, heardAt] of state.unconfirmed) {
      if (heardAt > issuedAt) continue; // heard while the read was on its way: not known yet
      state.unconfirmed.delete(value);
      if (orderOf(value) > order) {
        state.refuted.add(value);
        if (state.refuted.size > REMEMBERED_VALUES) state.refuted.delete(state.refuted.values().next().value as number);
      }
    }
  }

  /** Read a watched key and tell its listeners; one read at a time per key, repeated if asked again meanwhile. */
  async #refreshWatched(entry: WatchedKey<KeyState>): Promise<void> {
    const state = entry.target;
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    try {
      do {
        state.again = false;
        if (this.#connection.closed) return;
        const issuedAt = state.events;
        let stored: number | null;
        try {
          stored = await this.#keys.storedOf(entry.key);
        } catch {
          return; // an outage: the next message, reconnection or poll tries again
        }
        if (this.#watched.get(entry.key) !== entry) return; // no longer watched
        this.#weigh(state, stored, issuedAt);
        this.#tell(entry, stored, state.events === issuedAt);
      } while (state.again);
    } finally {
      state.running = false;
    }
  }
}

/** Remember `value` (first heard at event `at`), forgetting the oldest beyond REMEMBERED_VALUES. */
function remember(values: Map<number, number>, value: number, at: number): void {
  values.set(value, at);
  if (values.size > REMEMBERED_VALUES) values.delete(values.keys().next().value as number);
}

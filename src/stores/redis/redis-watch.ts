/**
 * Watching keys of the Redis store. Every change is announced on a pub/sub
 * channel; the store listens on a second connection (opened for the first
 * watcher, closed a second after the last) and re-reads the key, so a
 * message is only a hint. After the subscriber reconnects, and every
 * `watchPollMs`, all watched keys are re-read, because messages sent while
 * disconnected are lost and `FLUSHALL` announces nothing.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { InvalidArgumentError, type StoreClosedError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import type { GenerationListener } from '../../store/store';
import { deliver, Linger, rethrowLater, WatchList, type WatchedKey } from '../../store/watch';
import { createOwnIORedisClient } from './ioredis-client';
import { createOwnClient, destroyForGood, type RedisClientLike } from './redis-client';
import type { RedisConnection } from './redis-connection';
import type { RedisKeys } from './redis-keys';

/**
 * How long the subscriber connection outlives the last watcher, so that
 * `waitForChange()` in a loop does not open a connection per call.
 */
export const SUBSCRIBER_LINGER_MS = 1000;

/** What watching needs to know of its store. */
export interface WatchSettings {
  /** Where the server is, when the store made its own client (the subscriber is made alike); else undefined. */
  readonly url: string | undefined;
  readonly socket: Readonly<Record<string, unknown>>;
  /** The package the store made its own client with. */
  readonly driver: 'redis' | 'ioredis';
  readonly watchPollMs: number;
  readonly logger: Logger;
  /** Whether the subscriber must not keep the process alive (see UNREFERENCED in redis-store.ts). */
  readonly unreferenced?: boolean;
}

interface Refresh {
  running: boolean;
  again: boolean;
  /** The order (see {@link orderOf}) of the last value delivered, so that nothing older is delivered after it. */
  order: number | undefined;
}

/**
 * Where a stored value falls in a key's history: a generation g, then (after a
 * clear) its tombstone -(g + 1), then the next generation, which is always
 * above g. Change messages (on the subscriber) and re-reads (on the main
 * connection) can arrive out of order with each other; this keeps the older
 * of two from being delivered after the newer.
 */
function orderOf(stored: number): number {
  return stored >= 0 ? 2 * stored : -2 * stored - 1;
}

export class RedisWatching {
  readonly #watched = new WatchList<Refresh>();
  #subscriber: RedisClientLike | undefined;
  #watchPoll: NodeJS.Timeout | undefined;
  readonly #subscriberLinger = new Linger(SUBSCRIBER_LINGER_MS);
  /** Watched keys by the SHA-1 (hex) of their Redis key, which is what change messages carry. */
  readonly #watchedDigests = new Map<string, string>();
  readonly #logger: Logger;
  readonly #watchPollMs: number;

  constructor(
    private readonly connection: RedisConnection,
    private readonly keys: RedisKeys,
    private readonly settings: WatchSettings,
  ) {
    this.#logger = settings.logger;
    this.#watchPollMs = settings.watchPollMs;
    // Watchers re-read at once when the main connection is back: an announcement the subscriber received
    // while it was down could not be read, and a restart or FLUSHALL meanwhile announces nothing.
    connection.onReady(() => this.#refreshAll());
  }

  /** See {@link RedisStore.watch}; `key` is checked. */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    const watched = this.#watched.get(key) ?? this.#startWatching(key);
    const { remove } = this.#watched.register(watched, since, undefined, listener, onClose);
    void this.#refreshWatched(watched);
    return () => {
      if (!remove()) return;
      this.#watchedDigests.delete(this.keys.digestOf(key));
      if (this.#watched.size === 0) this.#stopWatchingSoon();
    };
  }

  /** The store closed: drop the subscriber and tell every listener with an `onClose`. */
  close(error: StoreClosedError): void {
    this.#stopWatching();
    this.#watched.close(error);
  }

  #startWatching(key: string): WatchedKey<Refresh> {
    this.#subscriberLinger.cancel();
    const watched = this.#watched.open(key, { running: false, again: false, order: undefined });
    this.#watchedDigests.set(this.keys.digestOf(key), key);
    if (this.#subscriber !== undefined) return watched;
    const subscriber = this.#makeSubscriber();
    if (this.settings.unreferenced === true) subscriber.unref?.();
    this.#subscriber = subscriber;
    // The subscriber reconnects (and resubscribes) by itself. Its loss is reported once, and its return:
    // meanwhile watchers hear of changes only from their poll.
    let lostAt: number | undefined;
    subscriber.on('error', (error: Error) => {
      if (lostAt !== undefined || this.connection.closed || this.#subscriber !== subscriber) return;
      lostAt = Date.now();
      this.#logger.error(
        `generation-sync: lost the change subscription to Redis${this.connection.where} (${error.message}). ` +
          `Reconnecting; until then watchers hear of changes only every watchPollMs (${this.#watchPollMs} ms).`,
      );
    });
    subscriber.on('ready', () => {
      if (lostAt !== undefined) {
        (this.#logger.info ?? this.#logger.warn).call(this.#logger, `generation-sync: the change subscription to Redis works again after ${Date.now() - lostAt} ms.`);
        lostAt = undefined;
      }
      this.#refreshAll();
    });
    const onMessage = (message: string): void => {
      // "<digest of the Redis key> <stored value>": delivered as it is, with no read (one round trip from the bump to
      // the listener). A bare digest, or a whole key, from a publisher of an earlier build: re-read.
      const space = message.indexOf(' ');
      const byDigest = this.#watchedDigests.get(space < 0 ? message : message.slice(0, space));
      const key = byDigest ?? (message.startsWith(this.keys.namespace) ? message.slice(this.keys.namespace.length) : undefined);
      const entry = key === undefined ? undefined : this.#watched.get(key);
      if (entry === undefined) return;
      // Only a digest is followed by a value (a whole key may itself hold spaces).
      const stored = byDigest === undefined || space < 0 ? Number.NaN : Number(message.slice(space + 1));
      if (Number.isSafeInteger(stored)) this.#deliverStored(entry, stored, false);
      else void this.#refreshWatched(entry);
    };
    const subscribed = subscriber.isOpen ? Promise.resolve() : subscriber.connect();
    subscribed
      .then(async () => {
        // Watching may have stopped while this connection was being made.
        if (this.#subscriber !== subscriber) {
          subscriber.destroy();
          return;
        }
        await subscriber.subscribe?.(this.keys.channel, onMessage);
        this.#refreshAll();
      })
      .catch(() => undefined); // retried by the client; the poll covers the gap
    this.#watchPoll = setInterval(() => this.#refreshAll(), this.#watchPollMs);
    this.#watchPoll.unref();
    return watched;
  }

  #makeSubscriber(): RedisClientLike {
    // Subscribing may wait for the connection: queueing is safe here, unlike for INCR.
    if (this.settings.url !== undefined) {
      return this.settings.driver === 'ioredis'
        ? createOwnIORedisClient(this.settings.url, this.settings.socket, false)
        : createOwnClient(this.settings.url, this.settings.socket, false);
    }
    if (typeof this.connection.client.duplicate !== 'function' || typeof this.connection.client.subscribe !== 'function') {
      throw new InvalidArgumentError('Watching needs a client with duplicate() and subscribe(), as the redis package\'s clients have.');
    }
    return this.connection.client.duplicate({ disableOfflineQueue: false });
  }

  /** Stop watching once no key has been watched for SUBSCRIBER_LINGER_MS. */
  #stopWatchingSoon(): void {
    this.#subscriberLinger.start(() => this.#watched.size === 0, () => this.#stopWatching());
  }

  #stopWatching(): void {
    this.#subscriberLinger.cancel();
    clearInterval(this.#watchPoll);
    this.#watchPoll = undefined;
    if (this.#subscriber !== undefined) destroyForGood(this.#subscriber);
    this.#subscriber = undefined;
  }

  #refreshAll(): void {
    for (const entry of this.#watched.values()) void this.#refreshWatched(entry);
  }

  /** Tell the listeners of `entry` of a stored value, unless something newer was delivered already. */
  #deliverStored(entry: WatchedKey<Refresh>, stored: number, again: boolean): void {
    const order = orderOf(stored);
    const last = entry.target.order;
    if (last !== undefined && (again ? order < last : order <= last)) return;
    entry.target.order = order;
    const failures: unknown[] = [];
    deliver(entry, stored >= 0 ? stored : null, failures);
    rethrowLater(failures);
  }

  /** Re-read a watched key and tell its listeners; one read at a time per key, repeated if asked again meanwhile. */
  async #refreshWatched(entry: WatchedKey<Refresh>): Promise<void> {
    const state = entry.target;
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    try {
      do {
        state.again = false;
        if (this.connection.closed) return;
        let stored: number | null;
        try {
          stored = await this.keys.storedOf(entry.key);
        } catch {
          return; // an outage: the next message, reconnection or poll tries again
        }
        if (stored === null) {
          // Absent (expired, FLUSHALL, a restart without persistence): no place in the history; the next value is
          // seeded above every earlier one, so the order stays as it is.
          const failures: unknown[] = [];
          deliver(entry, null, failures);
          rethrowLater(failures);
        } else {
          // What was read may be older than a message that arrived meanwhile; equal is delivered again, for a
          // listener that registered since (deliver() tells each listener only of a value new to it).
          this.#deliverStored(entry, stored, true);
        }
      } while (state.again);
    } finally {
      state.running = false;
    }
  }
}

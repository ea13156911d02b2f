/**
 * Generations in Redis, for processes on many hosts. This module is the
 * store's front: options, connecting, the public calls, closing. The work
 * is done by the modules beside it:
 *
 * ```
 * redis-store.ts       the front (this file)
 *   redis-keys.ts      read, create, increment, clear: one script each
 *   redis-watch.ts     the subscriber, change messages, the poll
 *   redis-connection.ts  commands with timeouts, dead connections, outages
 *   redis-scripts.ts   stored values and the Lua scripts
 *   redis-client.ts    which clients are accepted; making our own
 * ```
 *
 * @module
 */

import { AsyncCallsBinding } from '../../store/binding';
import { InvalidArgumentError, StoreClosedError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import type { AsyncKeyBinding, AsyncStore, BindOptions, GenerationListener, StoreEntry } from '../../store/store';
import { describe, optionsObject, wellFormedString } from '../../store/validate';
import type { RedisClientLike } from './redis-client';
import type { RedisConnection } from './redis-connection';
import { checkRedisOptions, createEngine, type RedisEngine } from './redis-engine';
import type { RedisKeys } from './redis-keys';
import { escapeGlob } from './redis-scripts';
import { RedisWatching } from './redis-watch';

export type { RedisClientLike } from './redis-client';
export { SUBSCRIBER_LINGER_MS } from './redis-watch';

/** Options of {@link RedisStore.connect}. */
export interface RedisStoreOptions {
  /**
   * Where the server is: `redis[s]://[[user][:password]@]host[:port][/db]`.
   * Ignored when `client` is given.
   * @default 'redis://127.0.0.1:6379'
   */
  readonly url?: string | undefined;
  /**
   * A client to use instead of making one: a `createClient()` client of the
   * `redis` package, or an `ioredis` client (`new Redis(…)`). The store does
   * not close it. For outages to be reported promptly, create it so that
   * commands fail while it reconnects instead of waiting:
   * `disableOfflineQueue: true` (redis), `enableOfflineQueue: false` (ioredis).
   */
  readonly client?: RedisClientLike | object | undefined;
  /**
   * Which package the store makes its own clients with, when no `client` is
   * given: `redis` or `ioredis` (either is an optional peer dependency;
   * install the one you use). `socket` options are passed to that package's
   * client (`createClient({ socket })`, or `new Redis(url, options)`).
   * @default 'redis'
   */
  readonly driver?: 'redis' | 'ioredis' | undefined;
  /**
   * The name under which this store keeps its keys, so that it shares a
   * database with other data safely. Keys are stored as `<namespace>:<key>`,
   * with any `:` and `%` inside the name percent-encoded, so that no two
   * namespaces can share a key (`app` with key `sub:x`, and `app:sub` with
   * key `x`, stay apart). A trailing `:` is allowed and changes nothing:
   * `app` and `app:` are the same namespace.
   * @default 'generation-sync:'
   */
  readonly namespace?: string | undefined;
  /**
   * How long any one command may take, in milliseconds, before it counts as
   * an outage.
   * @default 500
   */
  readonly commandTimeoutMs?: number | undefined;
  /**
   * How long {@link RedisStore.connect} waits for the first connection. If
   * the server is not reachable by then, the store is returned anyway and
   * keeps reconnecting in the background; until it succeeds every key reads
   * as expired. 0 returns at once. This bounds only the wait in connect():
   * each connection attempt has its own timeout (`socket.connectTimeout`,
   * node-redis' default unless given).
   * @default 2000
   */
  readonly connectTimeoutMs?: number | undefined;
  /**
   * Socket options for the client the store makes (the `socket` options of
   * the redis package's `createClient()`), such as TLS settings for a
   * private certificate authority: `{ ca: readFileSync('ca.pem') }` with a
   * `rediss://` URL, or `connectTimeout`. The store's own reconnection
   * strategy (randomised backoff up to 1 s) applies unless
   * `reconnectStrategy` is given. Ignored when `client` is given.
   * @default {}
   */
  readonly socket?: Readonly<Record<string, unknown>> | undefined;
  /**
   * Where losing and regaining the connection is reported, once each per
   * outage.
   * @default console
   */
  readonly logger?: Logger | undefined;
  /**
   * Give up connecting when this signal aborts: `connect()` rejects with the
   * signal's reason and nothing is left running. It does not affect a store
   * already returned (close that with `close()`).
   */
  readonly signal?: AbortSignal | undefined;
  /**
   * How often watchers re-read their keys, in milliseconds, besides the
   * change messages. Messages are lost while the subscriber is disconnected
   * and nothing is published on a `FLUSHALL` or an expiry; this catches those.
   * @default 5000
   */
  readonly watchPollMs?: number | undefined;
}

const SCAN_BATCH = 1000;

/**
 * Generations in Redis, through the `redis` or `ioredis` client package,
 * for processes on many hosts. Use it with {@link AsyncGenerationSynchronizer}.
 *
 * Creation is one atomic script (`GET`, then `SET … EX` only if absent),
 * increments are one script that changes the key only when it exists, and keys expire
 * `cacheExpirationSecs` after creation. Every command has a timeout; while
 * the server is unreachable, every key reads as expired and updates report
 * that they did not reach the store, and the client reconnects by itself.
 *
 * Generations never repeat for a key, whatever Redis loses, as long as
 * the server's clock moves forward. Each generation is a hybrid clock kept
 * by the scripts on the server: a key is created at the server's clock
 * (`TIME`) in **microseconds** (not seconds, as in the local stores), and
 * each change moves it to the larger of one more and that clock. So a
 * change made after Redis lost data (a restart from an older RDB snapshot,
 * writes lost with AOF `everysec`, a failover to a replica that missed the
 * last writes, `FLUSHALL`, an eviction) lands above every value handed out
 * before, and `clear()` leaves a tombstone holding the highest generation,
 * so the re-created key continues above it. No client's clock is involved.
 * What remains: a server clock stepped backwards (by hand, or a VM restored
 * with an old clock) can hand a value out again until it has caught up.
 * Generations therefore grow by the elapsed microseconds between changes,
 * not by one: compare them, never count them.
 *
 * @example
 * const store = await RedisStore.connect({ url: 'redis://cache.internal:6379' });
 * const sync = await AsyncGenerationSynchronizer.create('site-settings', { store });
 */
export class RedisStore implements AsyncStore {
  readonly kind = 'redis';
  readonly asynchronous = true;
  /** Where the server is, when the store made its own client. */
  readonly url: string | undefined;
  /** Prefix of every key this store writes: the namespace, encoded (see {@link RedisStoreOptions.namespace}), then `:`. */
  readonly namespace: string;
  readonly #connection: RedisConnection;
  readonly #keys: RedisKeys;
  readonly #watching: RedisWatching;

  private constructor(engine: RedisEngine) {
    this.#connection = engine.connection;
    this.#keys = engine.keys;
    this.#watching = new RedisWatching(engine);
    this.url = engine.settings.url;
    this.namespace = engine.keys.namespace;
  }

  /**
   * Connect to Redis. Resolves once connected, or after `connectTimeoutMs`
   * with a store that keeps reconnecting (and reads every key as expired
   * until it succeeds), so that an application can start while Redis is
   * down. Throws {@link DependencyMissingError} when the `redis` package is
   * not installed, and a typed error for bad options.
   */
  static async connect(options?: RedisStoreOptions): Promise<RedisStore> {
    const opts = optionsObject(options, 'RedisStore options');
    const signal = opts.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new InvalidArgumentError(`Option "signal" must be an AbortSignal, not ${describe(signal)}.`);
    }
    signal?.throwIfAborted();
    const settings = checkRedisOptions(opts);
    const engine = createEngine(settings);
    const store = new RedisStore(engine);
    if (signal === undefined) {
      await engine.connection.open(settings.connectTimeoutMs);
      return store;
    }
    // Aborted while connecting: the store is closed (nothing keeps reconnecting) and connect() rejects with the reason.
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([engine.connection.open(settings.connectTimeoutMs), aborted]);
    } catch (error) {
      await store.close().catch(() => undefined);
      throw error;
    } finally {
      signal.removeEventListener('abort', onAbort as () => void);
    }
    return store;
  }

  get closed(): boolean {
    return this.#connection.closed;
  }

  bind(key: string, options: BindOptions): AsyncKeyBinding {
    this.#connection.checkOpen();
    return new AsyncCallsBinding(wellFormedString(key, 'key'), this.#keys, options.expirationSecs);
  }

  /**
   * Every key under this store's namespace, found with `SCAN`. Anything
   * under the namespace that the store did not write (a value that is not a
   * generation or a tombstone, a list, a hash) is refused with
   * `ERR_GENSYNC_CORRUPT` naming the key, as every other call on that key
   * refuses it: move it out of the namespace.
   */
  async entries(): Promise<StoreEntry[]> {
    this.#connection.checkOpen();
    const entries: StoreEntry[] = [];
    const pattern = `${escapeGlob(this.namespace)}*`;
    let cursor = '0';
    do {
      const [next, keys] = (await this.#connection.command(['SCAN', cursor, 'MATCH', pattern, 'COUNT', String(SCAN_BATCH)])) as [string, string[]];
      cursor = next;
      // One GET per key (sent together): a key of another type answers WRONGTYPE, which is refused like a bad value.
      const values = await Promise.all(keys.map((redisKey) => this.#keys.storedAt(redisKey)));
      keys.forEach((redisKey, index) => {
        const value = values[index];
        if (value === null || value === undefined) return; // expired or removed since the scan
        entries.push({
          key: redisKey.slice(this.namespace.length),
          keyTruncated: false,
          generation: value >= 0 ? value : null,
          createdAt: null,
          updatedAt: null,
        });
      });
    } while (cursor !== '0');
    return entries;
  }

  /**
   * Call `listener` soon after the generation of `key` changes, in any
   * process on any host, until the returned function is called (see
   * {@link Store.watch}). Every change is announced on a pub/sub channel
   * with the value it stored, which the store, listening on a second
   * connection, tells the listener at once. The key is also read: when
   * either connection comes back, every `watchPollMs`, and when a message
   * is older than what a listener was told. A read that no message crossed
   * is the truth and is told even when it is lower (Redis came back from an
   * older snapshot, or someone published a value Redis never held), so a
   * message can make a watcher reload sooner, never keep it from the truth.
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    this.#connection.checkOpen();
    return this.#watching.watch(wellFormedString(key, 'key'), since, listener, onClose);
  }

  /** {@link close}, for `await using store = await RedisStore.connect(…)`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Disconnect (only the client this store made; a client passed in stays
   * open). Bounded: pending replies are waited for at most
   * `commandTimeoutMs`, then the connection is dropped.
   */
  async close(): Promise<void> {
    if (this.#connection.closed) return;
    const closing = this.#connection.close(); // closed from here on, before any listener hears of it
    this.#watching.close(new StoreClosedError(`The Redis store${this.#connection.where} was closed while a watch was pending.`));
    await closing;
  }
}

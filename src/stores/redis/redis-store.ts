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
import { describe, optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import { checkSupportedClient, checkUrl, createOwnClient, namespacePrefix, type RedisClientLike } from './redis-client';
import { createOwnIORedisClient, IORedisClient, isIORedisClient, isIORedisCluster } from './ioredis-client';
import { RedisConnection } from './redis-connection';
import { RedisKeys } from './redis-keys';
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

/** What the relay (src/stores/relay) works through, below the public calls. Not part of the public API. */
export interface RedisInternals {
  readonly connection: RedisConnection;
  readonly keys: RedisKeys;
}

const internals = new WeakMap<RedisStore, RedisInternals>();

/**
 * An option only the relay passes to {@link RedisStore.connect}: connections
 * that do not keep the process alive (where the client package allows it),
 * so that a process exits when its own work is done even while it relays.
 */
export const UNREFERENCED = Symbol('generation-sync.unreferenced');

/** The connection and key calls of `store`, for the relay. */
export function redisInternalsOf(store: RedisStore): RedisInternals {
  const found = internals.get(store);
  if (found === undefined) throw new TypeError('not a RedisStore');
  return found;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
const DEFAULT_NAMESPACE = 'generation-sync:';
const DEFAULT_COMMAND_TIMEOUT_MS = 500;
const DEFAULT_CONNECT_TIMEOUT_MS = 2000;
const DEFAULT_WATCH_POLL_MS = 5000;
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

  private constructor(connection: RedisConnection, keys: RedisKeys, watching: RedisWatching, url: string | undefined) {
    this.#connection = connection;
    this.#keys = keys;
    this.#watching = watching;
    this.url = url;
    this.namespace = keys.namespace;
    internals.set(this, { connection, keys });
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
    const namespace = namespacePrefix(opts.namespace === undefined ? DEFAULT_NAMESPACE : wellFormedString(opts.namespace, 'Option "namespace"'));
    const commandTimeoutMs = optionalInteger(opts.commandTimeoutMs, 'commandTimeoutMs', DEFAULT_COMMAND_TIMEOUT_MS, { min: 1, max: 2 ** 31 - 1 });
    const connectTimeoutMs = optionalInteger(opts.connectTimeoutMs, 'connectTimeoutMs', DEFAULT_CONNECT_TIMEOUT_MS, { min: 0, max: 2 ** 31 - 1 });
    const watchPollMs = optionalInteger(opts.watchPollMs, 'watchPollMs', DEFAULT_WATCH_POLL_MS, { min: 10, max: 2 ** 31 - 1 });
    const socket = optionsObject(opts.socket, 'Option "socket"') as Readonly<Record<string, unknown>>;
    const logger = opts.logger ?? console;
    if (typeof logger.error !== 'function' || typeof logger.warn !== 'function') {
      throw new InvalidArgumentError(`Option "logger" must have error() and warn() methods, not ${describe(logger)}.`);
    }
    const signal = opts.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new InvalidArgumentError(`Option "signal" must be an AbortSignal, not ${describe(signal)}.`);
    }
    signal?.throwIfAborted();

    const driver = opts.driver ?? 'redis';
    if (driver !== 'redis' && driver !== 'ioredis') {
      throw new InvalidArgumentError(`Option "driver" must be 'redis' or 'ioredis', not ${describe(driver)}.`);
    }
    let client: RedisClientLike;
    let url: string | undefined;
    if (opts.client !== undefined) {
      const given: unknown = opts.client;
      if (typeof given === 'object' && given !== null && isIORedisCluster(given)) {
        throw new InvalidArgumentError(
          'Option "client" is an ioredis Cluster client, which the Redis store does not support. Use a standalone Redis, or a primary with replicas, through new Redis(…).',
        );
      }
      if (typeof given === 'object' && given !== null && isIORedisClient(given)) {
        client = new IORedisClient(given as ConstructorParameters<typeof IORedisClient>[0]);
      } else {
        if (typeof given !== 'object' || given === null || typeof (given as RedisClientLike).sendCommand !== 'function') {
          throw new InvalidArgumentError(`Option "client" must be a client from the redis package's createClient(), or an ioredis client, not ${describe(given)}.`);
        }
        checkSupportedClient(given);
        client = given as RedisClientLike;
      }
      if ((client as { options?: { disableOfflineQueue?: unknown } }).options?.disableOfflineQueue !== true) {
        logger.warn(
          'generation-sync: the Redis client passed to RedisStore queues commands while disconnected, so an update ' +
            'reported as failed during an outage can still run when it reconnects, and checks wait instead of failing fast. ' +
            'Create it with createClient({ ..., disableOfflineQueue: true }) (redis) or new Redis({ ..., enableOfflineQueue: false }) ' +
            '(ioredis), or let the store make its own (the "url" option).',
        );
      }
    } else {
      url = opts.url === undefined ? DEFAULT_URL : checkUrl(opts.url);
      client = driver === 'ioredis' ? createOwnIORedisClient(url, socket) : createOwnClient(url, socket);
    }

    const unreferenced = (opts as { [UNREFERENCED]?: unknown })[UNREFERENCED] === true;
    if (unreferenced) client.unref?.();
    const channel = `${namespace}changes`;
    const connection = new RedisConnection({ client, ownsClient: opts.client === undefined, url, commandTimeoutMs, channel, watchPollMs, logger });
    const keys = new RedisKeys(connection, namespace, channel);
    const watching = new RedisWatching(connection, keys, { url, socket, driver, watchPollMs, commandTimeoutMs, logger, unreferenced });
    const store = new RedisStore(connection, keys, watching, url);
    if (signal === undefined) {
      await connection.open(connectTimeoutMs);
      return store;
    }
    // Aborted while connecting: the store is closed (nothing keeps reconnecting) and connect() rejects with the reason.
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([connection.open(connectTimeoutMs), aborted]);
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

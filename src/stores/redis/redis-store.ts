/**
 * Generations in Redis, for processes on many hosts.
 *
 * @module
 */

import { createHash } from 'node:crypto';

import { AsyncCallsBinding } from '../../store/binding';
import { corruptValueError, DependencyMissingError, InvalidArgumentError, StoreClosedError, StoreError, StoreFormatError, StoreUnavailableError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import type { AsyncKeyBinding, AsyncStore, BindOptions, GenerationListener, StoreEntry } from '../../store/store';
import { describe, optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import { deliver, rethrowLater, WatchList, type WatchedKey } from '../../store/watch';

/**
 * The part of a `redis` (node-redis 5 or newer) client this store uses. A
 * client made by `createClient()` from the `redis` package fits.
 */
export interface RedisClientLike {
  readonly isOpen: boolean;
  readonly isReady: boolean;
  connect(): Promise<unknown>;
  sendCommand(args: ReadonlyArray<string>, options?: { timeout?: number }): Promise<unknown>;
  // Listener arguments are `any` to accept EventEmitter's own signature.
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  close(): Promise<void>;
  destroy(): void;
  /** A second connection like this one (for pub/sub). */
  duplicate?(overrides?: Record<string, unknown>): RedisClientLike;
  subscribe?(channel: string, listener: (message: string, channel: string) => void): Promise<unknown>;
}

/** Options of {@link RedisStore.connect}. */
export interface RedisStoreOptions {
  /**
   * Where the server is: `redis[s]://[[user][:password]@]host[:port][/db]`.
   * Ignored when `client` is given.
   * @default 'redis://127.0.0.1:6379'
   */
  readonly url?: string | undefined;
  /**
   * A client to use instead of making one. The store does not close it.
   * For outages to be reported promptly, create it with
   * `disableOfflineQueue: true`, so commands fail while it reconnects
   * instead of waiting.
   */
  readonly client?: RedisClientLike | undefined;
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
   * How often watchers re-read their keys, in milliseconds, besides the
   * change messages. Messages are lost while the subscriber is disconnected
   * and nothing is published on a `FLUSHALL` or an expiry; this catches those.
   * @default 5000
   */
  readonly watchPollMs?: number | undefined;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
const DEFAULT_NAMESPACE = 'generation-sync:';
const DEFAULT_COMMAND_TIMEOUT_MS = 500;
const DEFAULT_CONNECT_TIMEOUT_MS = 2000;
/** Reconnection backoff: 50 ms, doubling, at most 1 s, each delay randomised by ±50 % so that processes do not reconnect in lockstep. */
const RECONNECT_FIRST_MS = 50;
const RECONNECT_MAX_MS = 1000;
/**
 * A command left unanswered this many command timeouts (and at least
 * DEAD_CONNECTION_MIN_MS) means the connection is dead even if the socket
 * looks open (a peer that vanished, a middlebox that dropped it): the store
 * drops it and connects again.
 */
const DEAD_CONNECTION_TIMEOUTS = 4;
const DEAD_CONNECTION_MIN_MS = 1000;
const SCAN_BATCH = 1000;
const DEFAULT_WATCH_POLL_MS = 5000;
/**
 * How long the subscriber connection outlives the last watcher, so that
 * `waitForChange()` in a loop does not open a connection per call.
 */
export const SUBSCRIBER_LINGER_MS = 1000;

// Stored values: a generation (an integer >= 0), or a tombstone -(g + 1)
// for a cleared key whose highest generation was g. Each script reads and
// writes one key atomically, and announces a change on the store's channel
// (the last argument) for watchers. Numbers are written with %.0f: Lua's
// default formatting of large numbers loses digits.
// A new generation is the server's own clock in microseconds (TIME), never
// a client's: hosts' clocks disagree, and a millisecond clock repeats
// within a millisecond. Scripts replicate their effects (the default since
// Redis 5), so reading TIME before writing is allowed.
// Every script starts with this reader: absent is false; a generation or a
// tombstone is an integer written plainly ("0", "17", "-18"; never "-0",
// "007" or "1e3"); anything else, a value of another type included, is
// foreign data under our namespace.
const READ_STORED = `
local function stored(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then
    return nil, redis.error_reply('GENSYNC_CORRUPT ' .. key .. ' holds a value that is not a string')
  end
  if not raw then return false end
  if raw ~= '0' and not string.find(raw, '^%-?[1-9]%d*$') then
    return nil, redis.error_reply('GENSYNC_CORRUPT ' .. key .. ' holds ' .. string.sub(raw, 1, 40))
  end
  return tonumber(raw)
end
`;

const FETCH_OR_CREATE = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
local now = redis.call('TIME')
local seed = tonumber(now[1]) * 1000000 + tonumber(now[2])
if value then
  if value >= 0 then return value end
  if -value > seed then seed = -value end
end
redis.call('SET', KEYS[1], string.format('%.0f', seed), 'EX', ARGV[1])
redis.pcall('PUBLISH', ARGV[2], redis.sha1hex(KEYS[1]))
return seed
`;

const INCREMENT = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
if not value or value < 0 then return false end
local generation = redis.call('INCR', KEYS[1])
redis.pcall('PUBLISH', ARGV[1], redis.sha1hex(KEYS[1]))
return generation
`;

const CLEAR = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
if not value or value < 0 then return 0 end
redis.call('SET', KEYS[1], string.format('%.0f', -value - 1), 'KEEPTTL')
redis.pcall('PUBLISH', ARGV[1], redis.sha1hex(KEYS[1]))
return 1
`;

interface Script {
  readonly source: string;
  readonly sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
const SCRIPTS = { fetchOrCreate: script(FETCH_OR_CREATE), increment: script(INCREMENT), clear: script(CLEAR) };

/**
 * Generations in Redis, through the `redis` client package, for processes
 * on many hosts. Use it with {@link AsyncGenerationSynchronizer}.
 *
 * Creation is one atomic script (`GET`, then `SET … EX` only if absent),
 * increments are `INCR` only when the key exists, and keys expire
 * `cacheExpirationSecs` after creation. Every command has a timeout; while
 * the server is unreachable, every key reads as expired and updates report
 * that they did not reach the store, and the client reconnects by itself.
 *
 * Generations never repeat for a key:
 *
 * - `clear()` leaves a tombstone holding the highest generation, so the
 *   re-created key continues above it.
 * - Across a `FLUSHALL`, an eviction, or a restart without persistence,
 *   Redis forgets everything, so new generations are seeded from the Redis
 *   server's own clock (`TIME`) in **microseconds** (not seconds, as in the
 *   local stores), read inside the creating script: no client's clock is
 *   involved. A key re-created after data loss therefore starts above every
 *   value it had, as long as it was incremented less than once per
 *   microsecond on average since it was first created (Redis itself cannot
 *   go much past a few hundred thousand increments per second) and the
 *   server's clock did not go back. A replica promoted after a failover may
 *   have missed the last increments (and has its own clock); those
 *   generations can come back once.
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
  readonly #client: RedisClientLike;
  readonly #ownsClient: boolean;
  readonly #commandTimeoutMs: number;
  readonly #logger: Logger;
  #connected = false;
  #closed = false;
  #lostAt: number | undefined;
  /** The oldest command that timed out and has not been answered yet, and since when (performance.now()). */
  #stalled: Promise<unknown> | undefined;
  #stalledSince = 0;
  /** A dead connection of a client passed in was reported (the store cannot reconnect a client it did not make). */
  #deadClientReported = false;
  /** The pub/sub channel on which every change in this namespace is announced. */
  readonly #channel: string;
  readonly #watchPollMs: number;
  readonly #socket: Readonly<Record<string, unknown>>;
  readonly #watched = new WatchList<{ running: boolean; again: boolean }>();
  #subscriber: RedisClientLike | undefined;
  #watchPoll: NodeJS.Timeout | undefined;
  #subscriberLinger: NodeJS.Timeout | undefined;
  /** Watched keys by the SHA-1 (hex) of their Redis key, which is what change messages carry. */
  readonly #watchedDigests = new Map<string, string>();
  readonly #onError = (error: Error): void => this.#connectionLost(error);
  readonly #onReady = (): void => {
    this.#connectionBack();
    // Watchers re-read at once: an announcement the subscriber received while this connection was down
    // could not be read, and a restart or FLUSHALL meanwhile announces nothing.
    this.#refreshAll();
    // During connect() the checks are connect()'s, which reports an unsupported server by rejecting.
    if (!this.#connectReturned) return;
    void this.#checkServer().catch(() => undefined); // an unsupported server is reported by #checkServer itself
    void this.#checkPublishPermission();
  };
  /** Whether connect() has returned this store (until then it makes the connection checks itself). */
  #connectReturned = false;
  /** Why this server cannot be used (a Redis Cluster node): every command fails with it. */
  #unsupported: StoreError | undefined;
  /** Whether the channel permission was checked on some connection (once is enough). */
  #publishChecked = false;

  private constructor(client: RedisClientLike, ownsClient: boolean, url: string | undefined, namespace: string, timing: Timing, logger: Logger) {
    this.#client = client;
    this.#ownsClient = ownsClient;
    this.url = url;
    this.namespace = namespace;
    this.#channel = `${namespace}changes`;
    this.#commandTimeoutMs = timing.commandTimeoutMs;
    this.#watchPollMs = timing.watchPollMs;
    this.#socket = timing.socket;
    this.#logger = logger;
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

    let client: RedisClientLike;
    let url: string | undefined;
    if (opts.client !== undefined) {
      if (typeof opts.client !== 'object' || opts.client === null || typeof opts.client.sendCommand !== 'function') {
        throw new InvalidArgumentError(`Option "client" must be a client from the redis package's createClient(), not ${describe(opts.client)}.`);
      }
      checkSupportedClient(opts.client);
      client = opts.client;
      if ((client as { options?: { disableOfflineQueue?: unknown } }).options?.disableOfflineQueue !== true) {
        logger.warn(
          'generation-sync: the Redis client passed to RedisStore queues commands while disconnected, so an update ' +
            'reported as failed during an outage can still run when it reconnects, and checks wait instead of failing fast. ' +
            'Create it with createClient({ ..., disableOfflineQueue: true }), or let the store make its own (the "url" option).',
        );
      }
    } else {
      url = opts.url === undefined ? DEFAULT_URL : checkUrl(opts.url);
      client = createOwnClient(url, socket);
    }

    const store = new RedisStore(client, opts.client === undefined, url, namespace, { commandTimeoutMs, watchPollMs, socket }, logger);
    client.on('error', store.#onError);
    client.on('ready', store.#onReady);
    if (client.isReady) {
      store.#connected = true;
      await store.#refuseUnsupportedServer();
      void store.#checkPublishPermission();
      store.#connectReturned = true;
      return store;
    }
    if (!client.isOpen) {
      // connect() settles when the first connection succeeds or the client gives up; either way we do not wait past the timeout.
      client.connect().then(
        () => undefined,
        (error: unknown) => store.#connectionLost(error as Error),
      );
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, connectTimeoutMs);
      function done(): void {
        clearTimeout(timer);
        client.off('ready', done);
        resolve();
      }
      client.on('ready', done);
      if (client.isReady) done();
    });
    if (!client.isReady) {
      store.#connectionLost(new Error(`not connected within ${connectTimeoutMs} ms`));
    } else {
      await store.#refuseUnsupportedServer();
      void store.#checkPublishPermission();
    }
    store.#connectReturned = true;
    return store;
  }

  get closed(): boolean {
    return this.#closed;
  }

  bind(key: string, options: BindOptions): AsyncKeyBinding {
    this.#checkOpen();
    return new AsyncCallsBinding(wellFormedString(key, 'key'), this, options.expirationSecs);
  }

  /** Every key under this store's namespace, found with `SCAN`. */
  async entries(): Promise<StoreEntry[]> {
    this.#checkOpen();
    const entries: StoreEntry[] = [];
    const pattern = `${escapeGlob(this.namespace)}*`;
    let cursor = '0';
    do {
      const [next, keys] = (await this.#command(['SCAN', cursor, 'MATCH', pattern, 'COUNT', String(SCAN_BATCH)])) as [string, string[]];
      cursor = next;
      if (keys.length === 0) continue;
      const values = (await this.#command(['MGET', ...keys])) as Array<string | null>;
      keys.forEach((redisKey, index) => {
        const raw = values[index];
        if (raw === null || raw === undefined) return;
        const value = parseStored(raw, redisKey);
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
   * {@link Store.watch}). Every change is announced on a pub/sub channel;
   * the store listens on a second connection and re-reads the key, so a
   * message is only a hint. After the subscriber reconnects, and every
   * `watchPollMs`, all watched keys are re-read, because messages sent
   * while disconnected are lost and `FLUSHALL` announces nothing.
   */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    this.#checkOpen();
    const checked = wellFormedString(key, 'key');
    const watched = this.#watched.get(checked) ?? this.#startWatching(checked);
    const { remove } = this.#watched.register(watched, since, undefined, listener, onClose);
    void this.#refreshWatched(watched);
    return () => {
      if (!remove()) return;
      this.#watchedDigests.delete(this.#digestOf(checked));
      if (this.#watched.size === 0) this.#stopWatchingSoon();
    };
  }

  /**
   * Disconnect (only the client this store made; a client passed in stays
   * open). Bounded: pending replies are waited for at most
   * `commandTimeoutMs`, then the connection is dropped.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopWatching();
    this.#watched.close(new StoreClosedError(`The Redis store${this.url ? ` at ${redactUrl(this.url)}` : ''} was closed while a watch was pending.`));
    this.#client.off('ready', this.#onReady);
    if (!this.#ownsClient) {
      this.#client.off('error', this.#onError);
      return;
    }
    // Our own client keeps its 'error' listener (a no-op once closed): a connection that drops while or after
    // closing must never become an unhandled 'error' event, which would end the process.
    if (this.#client.isReady && this.#stalled === undefined) {
      let timer: NodeJS.Timeout | undefined;
      const gaveUp = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), this.#commandTimeoutMs);
        timer.unref();
      });
      const closed = this.#client.close().then(
        () => true,
        () => false,
      );
      const done = await Promise.race([closed, gaveUp]);
      clearTimeout(timer);
      if (done) return;
    }
    this.#client.destroy();
  }

  /** @internal The live generation of `key`, or null when absent. */
  async generationOf(key: string): Promise<number | null> {
    const raw = (await this.#command(['GET', this.#redisKey(key)])) as string | null;
    if (raw === null) return null;
    const value = parseStored(raw, this.#redisKey(key));
    return value >= 0 ? value : null;
  }

  /** @internal */
  async fetchOrCreate(key: string, _now: number, expirationSecs: number): Promise<number> {
    // `now` is not used: the creating script seeds a new generation from the server's own clock.
    return checkReply(await this.#script(SCRIPTS.fetchOrCreate, key, [String(expirationSecs), this.#channel]), this.#redisKey(key));
  }

  /** @internal The incremented generation, or null (nothing changed) when the key is absent. */
  async increment(key: string): Promise<number | null> {
    const reply = await this.#script(SCRIPTS.increment, key, [this.#channel]);
    return reply === null ? null : checkReply(reply, this.#redisKey(key));
  }

  /** @internal */
  async delete(key: string): Promise<void> {
    await this.#script(SCRIPTS.clear, key, [this.#channel]);
  }

  #redisKey(key: string): string {
    return this.namespace + key;
  }

  /** What change messages carry for `key`: the SHA-1 (hex) of its Redis key, as the scripts' redis.sha1hex() gives it. */
  #digestOf(key: string): string {
    return createHash('sha1').update(this.#redisKey(key)).digest('hex');
  }

  #startWatching(key: string): WatchedKey<{ running: boolean; again: boolean }> {
    clearTimeout(this.#subscriberLinger);
    this.#subscriberLinger = undefined;
    const watched = this.#watched.open(key, { running: false, again: false });
    this.#watchedDigests.set(this.#digestOf(key), key);
    if (this.#subscriber !== undefined) return watched;
    const subscriber = this.#makeSubscriber();
    this.#subscriber = subscriber;
    // The subscriber reconnects (and resubscribes) by itself. Its loss is reported once, and its return:
    // meanwhile watchers hear of changes only from their poll.
    let lostAt: number | undefined;
    subscriber.on('error', (error: Error) => {
      if (lostAt !== undefined || this.#closed || this.#subscriber !== subscriber) return;
      lostAt = Date.now();
      this.#logger.error(
        `generation-sync: lost the change subscription to Redis${this.url ? ` at ${redactUrl(this.url)}` : ''} (${error.message}). ` +
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
      // A digest of the Redis key; a whole key from a publisher of an older version.
      const key = this.#watchedDigests.get(message) ?? (message.startsWith(this.namespace) ? message.slice(this.namespace.length) : undefined);
      const entry = key === undefined ? undefined : this.#watched.get(key);
      if (entry !== undefined) void this.#refreshWatched(entry);
    };
    const subscribed = subscriber.isOpen ? Promise.resolve() : subscriber.connect();
    subscribed
      .then(async () => {
        // Watching may have stopped while this connection was being made.
        if (this.#subscriber !== subscriber) {
          subscriber.destroy();
          return;
        }
        await subscriber.subscribe?.(this.#channel, onMessage);
        this.#refreshAll();
      })
      .catch(() => undefined); // retried by the client; the poll covers the gap
    this.#watchPoll = setInterval(() => this.#refreshAll(), this.#watchPollMs);
    this.#watchPoll.unref();
    return watched;
  }

  #makeSubscriber(): RedisClientLike {
    // Subscribing may wait for the connection: queueing is safe here, unlike for INCR.
    if (this.#ownsClient) return createOwnClient(this.url as string, this.#socket, false);
    if (typeof this.#client.duplicate !== 'function' || typeof this.#client.subscribe !== 'function') {
      throw new InvalidArgumentError('Watching needs a client with duplicate() and subscribe(), as the redis package\'s clients have.');
    }
    return this.#client.duplicate({ disableOfflineQueue: false });
  }

  /** Stop watching once no key has been watched for SUBSCRIBER_LINGER_MS. */
  #stopWatchingSoon(): void {
    if (this.#subscriberLinger !== undefined) return;
    this.#subscriberLinger = setTimeout(() => {
      this.#subscriberLinger = undefined;
      if (this.#watched.size === 0) this.#stopWatching();
    }, SUBSCRIBER_LINGER_MS);
    this.#subscriberLinger.unref();
  }

  #stopWatching(): void {
    clearTimeout(this.#subscriberLinger);
    this.#subscriberLinger = undefined;
    clearInterval(this.#watchPoll);
    this.#watchPoll = undefined;
    this.#subscriber?.destroy();
    this.#subscriber = undefined;
  }

  #refreshAll(): void {
    for (const entry of this.#watched.values()) void this.#refreshWatched(entry);
  }

  /** Re-read a watched key and tell its listeners; one read at a time per key, repeated if asked again meanwhile. */
  async #refreshWatched(entry: WatchedKey<{ running: boolean; again: boolean }>): Promise<void> {
    const state = entry.target;
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    try {
      do {
        state.again = false;
        if (this.#closed) return;
        let generation: number | null;
        try {
          generation = await this.generationOf(entry.key);
        } catch {
          return; // an outage: the next message, reconnection or poll tries again
        }
        const failures: unknown[] = [];
        deliver(entry, generation, failures);
        rethrowLater(failures);
      } while (state.again);
    } finally {
      state.running = false;
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new StoreClosedError(`The Redis store${this.url ? ` at ${redactUrl(this.url)}` : ''} was closed.`);
  }

  async #script(entry: Script, key: string, args: string[]): Promise<unknown> {
    const redisKey = this.#redisKey(key);
    try {
      return await this.#command(['EVALSHA', entry.sha, '1', redisKey, ...args], true);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw this.#translate(error);
    }
    return this.#command(['EVAL', entry.source, '1', redisKey, ...args]);
  }

  /**
   * Send one command, bounded by the command timeout; translate failures
   * into typed errors (unless `raw`). node-redis's own `timeout` stops
   * counting once a command is written, so a server that stops answering
   * (stopped, or a network that drops packets) would hang it: we race it
   * against our own deadline. A command is always sent, even while an
   * earlier one is unanswered: a stall that clears within its timeout must
   * not fail it unsent. The oldest unanswered command tells a dead
   * connection (see {@link #dropDeadConnection}).
   */
  async #command(args: string[], raw = false): Promise<unknown> {
    this.#checkOpen();
    if (this.#unsupported !== undefined) throw this.#unsupported;
    if (this.#stalled !== undefined) {
      const stalledMs = performance.now() - this.#stalledSince;
      if (stalledMs > Math.max(DEAD_CONNECTION_MIN_MS, DEAD_CONNECTION_TIMEOUTS * this.#commandTimeoutMs)) this.#dropDeadConnection(stalledMs);
    }
    const pending = this.#client.sendCommand(args, { timeout: this.#commandTimeoutMs });
    let timer: { cancel(): void } | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = this.#deadline(() => reject(new CommandTimeout(this.#commandTimeoutMs)));
    });
    try {
      return await Promise.race([pending, deadline]);
    } catch (error) {
      if (error instanceof CommandTimeout && this.#stalled === undefined) {
        this.#stalled = pending;
        this.#stalledSince = performance.now();
        const settled = (): void => {
          if (this.#stalled === pending) this.#stalled = undefined;
        };
        pending.then(settled, settled);
      }
      if (raw) throw error;
      throw this.#translate(error);
    } finally {
      timer?.cancel();
    }
  }

  /**
   * Call `expire` when a command sent now has had `commandTimeoutMs` of the
   * server's time to answer. Our own slowness must not count: if this
   * process's event loop was blocked (the timer fires late), the reply may
   * be waiting unread, or the command may have been written only after the
   * stall; so a late timer first lets pending I/O be read (setImmediate runs
   * after the poll phase) and, if it was late by more than half the
   * timeout, gives the command one more full timeout from now.
   */
  #deadline(expire: () => void): { cancel(): void } {
    const timeoutMs = this.#commandTimeoutMs;
    let cancelled = false;
    let extended = false;
    let timer: NodeJS.Timeout;
    const arm = (): void => {
      const due = performance.now() + timeoutMs;
      timer = setTimeout(() => {
        const lateMs = performance.now() - due;
        setImmediate(() => {
          if (cancelled) return;
          if (!extended && lateMs > timeoutMs / 2) {
            extended = true;
            arm();
          } else {
            expire();
          }
        }); // not unref'd: an unref'd immediate would let the poll phase block until the next I/O
      }, timeoutMs);
      timer.unref();
    };
    arm();
    return {
      cancel: () => {
        cancelled = true;
        clearTimeout(timer);
      },
    };
  }

  /**
   * A command has gone unanswered far longer than a timeout: drop the
   * connection and connect again after a random pause (so that the
   * processes of a fleet do not all reconnect at once). Commands fail fast
   * while it reconnects, as during any outage. A client passed in is not ours to
   * reconnect: say so, once.
   */
  #dropDeadConnection(stalledMs: number): void {
    const why = new Error(`a command went unanswered for ${Math.round(stalledMs)} ms on a connection that looked open`);
    if (!this.#ownsClient) {
      if (!this.#deadClientReported) {
        this.#deadClientReported = true;
        this.#logger.error(
          `generation-sync: Redis stopped answering on the client passed to RedisStore (${why.message}). ` +
            'The store does not reconnect a client it did not create: reconnect or replace it, or let the store make its own (the "url" option).',
        );
      }
      return;
    }
    this.#connectionLost(why);
    this.#stalled = undefined;
    const client = this.#client;
    client.destroy();
    const pause = setTimeout(() => {
      if (this.#closed || client.isOpen) return;
      client.connect().then(
        () => undefined,
        (error: unknown) => this.#connectionLost(error as Error),
      );
    }, Math.random() * RECONNECT_MAX_MS);
    pause.unref();
  }

  #translate(error: unknown): Error {
    if (error instanceof StoreFormatError || error instanceof StoreClosedError) return error;
    const message = error instanceof Error ? error.message : String(error);
    if (message.startsWith('WRONGTYPE')) {
      return corruptValueError('A generation key in Redis holds a value of another type (a list, a hash, …).');
    }
    if (message.startsWith('GENSYNC_CORRUPT')) {
      return corruptValueError(`A generation key in Redis holds something that is not a generation (${message.slice('GENSYNC_CORRUPT '.length)}).`);
    }
    // A client shared with the application queues the store's commands behind the application's own:
    // one blocking command there stalls every key.
    const shared =
      error instanceof CommandTimeout && !this.#ownsClient
        ? ' The client was passed in, so the application shares it: a blocking command on it (BLPOP, BRPOP, XREAD BLOCK, ' +
          'WAIT, …) holds up every command behind it. Give the store a connection of its own (client.duplicate(), or the "url" option).'
        : '';
    return new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `Redis${this.url ? ` at ${redactUrl(this.url)}` : ''} did not answer: ${message}.${shared}`,
      { cause: error },
    );
  }

  /** At connect: an unsupported server closes the store and rejects connect(). */
  async #refuseUnsupportedServer(): Promise<void> {
    try {
      await this.#checkServer(false);
    } catch (error) {
      await this.close();
      throw error;
    }
  }

  /**
   * Refuse a Redis Cluster node: keys of other shards would answer MOVED,
   * which would read as an outage for ever. Throws (from connect()) and
   * remembers the error, so that every later command fails with it; logs it
   * once when found on a later connection.
   */
  async #checkServer(log = true): Promise<void> {
    if (this.#unsupported !== undefined || this.#closed) return;
    let info: string;
    try {
      info = String(await this.#command(['INFO', 'cluster'], true));
    } catch {
      return; // an outage: checked again on the next connection
    }
    if (!/^cluster_enabled:1\s*$/m.test(info)) return;
    this.#unsupported = new StoreError(
      'ERR_GENSYNC_UNSUPPORTED_SERVER',
      `Redis${this.url ? ` at ${redactUrl(this.url)}` : ''} is a Redis Cluster node, which the Redis store does not support ` +
        '(keys on other shards would never answer). Use a standalone Redis, or a primary with replicas.',
    );
    if (log) this.#logger.error(`generation-sync: ${this.#unsupported.message}`);
    throw this.#unsupported;
  }

  /**
   * Changes are announced on the store's channel; a Redis user without
   * access to it can still write (the scripts publish with pcall), but
   * watchers in other processes then learn of changes only from their poll.
   * Publish nothing (an empty message, which watchers ignore) once, and say
   * what permission is missing.
   */
  async #checkPublishPermission(): Promise<void> {
    if (this.#publishChecked || this.#closed) return;
    this.#publishChecked = true;
    try {
      await this.#command(['PUBLISH', this.#channel, ''], true);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (!/NOPERM/i.test(message)) {
        this.#publishChecked = false; // an outage, not an answer: check again on the next connection
        return;
      }
      this.#logger.error(
        `generation-sync: the Redis user cannot publish to the channel "${this.#channel}" (${message.split('\n')[0]}). ` +
          `Updates still work, but watchers in other processes learn of them only every watchPollMs (${this.#watchPollMs} ms). ` +
          `Grant it: ACL SETUSER <user> &${this.#channel}`,
      );
    }
  }

  #connectionLost(error: Error): void {
    if (this.#closed || this.#lostAt !== undefined) return;
    this.#lostAt = Date.now();
    const wasConnected = this.#connected;
    this.#logger.error(
      `generation-sync: ${wasConnected ? 'lost the connection to' : 'cannot connect to'} Redis${this.url ? ` at ${redactUrl(this.url)}` : ''} ` +
        `(${error.message}). Reconnecting; until then every key reads as expired and updates report failure.`,
    );
  }

  #connectionBack(): void {
    this.#connected = true;
    if (this.#lostAt === undefined) return;
    const downMs = Date.now() - this.#lostAt;
    this.#lostAt = undefined;
    (this.#logger.info ?? this.#logger.warn).call(
      this.#logger,
      `generation-sync: connected to Redis${this.url ? ` at ${redactUrl(this.url)}` : ''} again after ${downMs} ms.`,
    );
  }
}

interface Timing {
  readonly commandTimeoutMs: number;
  readonly watchPollMs: number;
  /** Socket options for clients the store makes (the main one and the subscriber). */
  readonly socket: Readonly<Record<string, unknown>>;
}

class CommandTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
  }
}

/**
 * The prefix of every Redis key in `namespace`: its name with `%` and `:`
 * percent-encoded, then one `:`. Such a prefix holds exactly one `:`, at its
 * end, so the first `:` of any key ends its namespace, and no namespace's
 * keys can be another's.
 */
function namespacePrefix(namespace: string): string {
  const name = namespace.endsWith(':') ? namespace.slice(0, -1) : namespace;
  if (name === '') {
    throw new InvalidArgumentError(
      'Option "namespace" must name something: an empty namespace would share its keys with every other. ' +
        "Leave it out for the default 'generation-sync:', or name your application.",
    );
  }
  return `${name.replaceAll('%', '%25').replaceAll(':', '%3A')}:`;
}

function createOwnClient(url: string, socket: Readonly<Record<string, unknown>>, failWhileOffline = true): RedisClientLike {
  let redis: { createClient(options: Record<string, unknown>): RedisClientLike };
  try {
    redis = require('redis') as typeof redis;
  } catch (cause) {
    throw new DependencyMissingError('RedisStore needs the "redis" package: install it with "npm install redis".', { cause });
  }
  return redis.createClient({
    url,
    // Fail fast while disconnected rather than queue: a queued INCR could run long after we reported failure.
    disableOfflineQueue: failWhileOffline,
    socket: {
      reconnectStrategy: (retries: number) => Math.min(RECONNECT_FIRST_MS * 2 ** Math.min(retries, 10), RECONNECT_MAX_MS) * (0.5 + Math.random()),
      ...socket,
    },
  });
}

/**
 * Only a single node-redis client will do: Cluster and Sentinel clients route
 * commands themselves and take other arguments, a pool cannot give watching a
 * connection of its own, and other libraries (ioredis) have other APIs.
 * Refuse them clearly instead of failing on every call.
 */
function checkSupportedClient(client: object): void {
  const has = (name: string): boolean => typeof (client as Record<string, unknown>)[name] === 'function';
  if (has('getSlotMaster') || 'masters' in client) {
    throw new InvalidArgumentError(
      'Option "client" is a Redis Cluster client (createCluster()), which the Redis store does not support. ' +
        'Use a standalone Redis, or a primary with replicas, through createClient().',
    );
  }
  if (has('getMasterNode') || has('getSentinelNode')) {
    throw new InvalidArgumentError(
      'Option "client" is a Redis Sentinel client (createSentinel()), which the Redis store does not support yet. ' +
        'Pass a createClient() client connected to the current primary.',
    );
  }
  const isBoolean = (name: string): boolean => typeof (client as Record<string, unknown>)[name] === 'boolean';
  if (has('execute') && 'totalClients' in client) {
    throw new InvalidArgumentError(
      'Option "client" is a node-redis client pool (createClientPool()), which the Redis store does not support: ' +
        'watching needs a connection of its own. Pass a createClient() client, or let the store make its own (the "url" option).',
    );
  }
  if (!isBoolean('isReady') || !isBoolean('isOpen')) {
    throw new InvalidArgumentError(
      'Option "client" must be a client from the redis package\'s createClient() (node-redis 5 or newer); ' +
        'other clients, such as ioredis, are not supported yet. Pass one, or let the store make its own (the "url" option).',
    );
  }
}

function checkUrl(url: unknown): string {
  if (typeof url !== 'string' || !/^rediss?:\/\//.test(url)) {
    throw new InvalidArgumentError(`Option "url" must be a redis:// or rediss:// URL, not ${typeof url === 'string' ? describe(redactUrl(url)) : describe(url)}.`);
  }
  return url;
}

/** A URL without its password, for messages. */
function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, (ch) => `\\${ch}`);
}

function parseStored(raw: string, redisKey: string): number {
  const value = Number(raw);
  // Written plainly, as the scripts write them: "-0" or "007" are not ours.
  if (!/^(0|-?[1-9]\d*)$/.test(raw) || !Number.isSafeInteger(value)) {
    throw corruptValueError(`The Redis key ${redisKey} holds ${JSON.stringify(raw.slice(0, 40))}, not a generation.`);
  }
  return value;
}

function checkReply(reply: unknown, redisKey: string): number {
  const value = typeof reply === 'number' ? reply : Number(reply);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw corruptValueError(`Redis answered ${describe(reply)} for ${redisKey}, not a generation.`);
  }
  return value;
}

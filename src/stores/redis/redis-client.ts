/**
 * The client the Redis store talks through: which clients it accepts, how
 * it makes its own, and how URLs and namespaces are checked.
 *
 * Not part of the public API: the package exports only what index.ts names
 * (and {@link RedisClientLike}).
 *
 * @module
 */

import { DependencyMissingError, InvalidArgumentError } from '../../store/errors';
import { describe } from '../../store/validate';

/** Reconnection backoff: 50 ms, doubling, at most 1 s, each delay randomised by ±50 % so that processes do not reconnect in lockstep. */
const RECONNECT_FIRST_MS = 50;
export const RECONNECT_MAX_MS = 1000;

/** The pause before reconnection attempt `retries` (0 first). */
export function reconnectDelayMs(retries: number): number {
  return Math.min(RECONNECT_FIRST_MS * 2 ** Math.min(retries, 10), RECONNECT_MAX_MS) * (0.5 + Math.random());
}

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
  /** Let the process exit while connected (the redis package's clients). */
  unref?(): void;
}

/**
 * The prefix of every Redis key in `namespace`: its name with `%` and `:`
 * percent-encoded, then one `:`. Such a prefix holds exactly one `:`, at its
 * end, so the first `:` of any key ends its namespace, and no namespace's
 * keys can be another's.
 */
export function namespacePrefix(namespace: string): string {
  const name = namespace.endsWith(':') ? namespace.slice(0, -1) : namespace;
  if (name === '') {
    throw new InvalidArgumentError(
      'Option "namespace" must name something: an empty namespace would share its keys with every other. ' +
        "Leave it out for the default 'generation-sync:', or name your application.",
    );
  }
  return `${name.replaceAll('%', '%25').replaceAll(':', '%3A')}:`;
}

/** How a client of the store's own is made. */
export interface OwnClientOptions {
  /** Fail commands while disconnected instead of queueing them (the command connection; not the subscriber). */
  readonly failWhileOffline: boolean;
  /**
   * The client does not reconnect by itself: {@link keepReconnecting} does, on timers that never keep the
   * process alive (the driver's own reconnection waits on timers that do).
   */
  readonly selfReconnect: boolean;
}

export function createOwnClient(url: string, socket: Readonly<Record<string, unknown>>, options: OwnClientOptions = { failWhileOffline: true, selfReconnect: false }): RedisClientLike {
  let redis: { createClient(options: Record<string, unknown>): RedisClientLike };
  try {
    redis = require('redis') as typeof redis;
  } catch (cause) {
    throw new DependencyMissingError('RedisStore needs the "redis" package: install it with "npm install redis".', { cause });
  }
  return redis.createClient({
    url,
    // Fail fast while disconnected rather than queue: a queued INCR could run long after we reported failure.
    disableOfflineQueue: options.failWhileOffline,
    socket: {
      reconnectStrategy: options.selfReconnect ? false : reconnectDelayMs,
      ...socket,
    },
  });
}

/**
 * Reconnect `client` (made with `selfReconnect`) whenever it closes, until `closed()` or the returned
 * function is called: after a randomised backoff, on a timer of ours that the store clears when it closes
 * (a driver's own waits on timers nothing can cancel) and that, when `unreferenced`, never keeps the
 * process alive.
 */
export function keepReconnecting(client: RedisClientLike, closed: () => boolean, unreferenced: boolean): () => void {
  let retries = 0;
  let timer: NodeJS.Timeout | undefined;
  const later = (): void => {
    if (timer !== undefined || closed() || client.isOpen) return;
    timer = setTimeout(() => {
      timer = undefined;
      if (closed() || client.isOpen) return;
      client.connect().then(
        () => undefined,
        () => later(), // the attempt failed (and was reported as an error): try again later
      );
    }, reconnectDelayMs(retries++));
    if (unreferenced) timer.unref();
  };
  client.on('terminated', later); // node-redis: its strategy gave up at once, as it was told to
  client.on('end', () => queueMicrotask(later)); // ioredis (and node-redis once closed)
  client.on('ready', () => {
    retries = 0;
  });
  return () => {
    clearTimeout(timer);
    timer = undefined;
  };
}

/**
 * Close a client for good. node-redis (5 and 6) loses a `destroy()` that lands
 * while a connection attempt is still opening its socket: the socket is kept
 * once it connects, waits for a handshake that a stalled or silent server
 * never answers, and keeps the process alive. So destroy it again when that
 * socket connects (found with a server that accepts and never answers, and a
 * `connect()` aborted at once).
 */
export function destroyForGood(client: RedisClientLike): void {
  client.destroy();
  const again = (): void => {
    client.off('connect', again);
    client.destroy();
  };
  client.on('connect', again);
}

/**
 * Only a single node-redis client will do here (ioredis clients are taken
 * by ioredis-client.ts): Cluster and Sentinel clients route commands
 * themselves and take other arguments, and a pool cannot give watching a
 * connection of its own. Refuse them clearly instead of failing on every call.
 */
export function checkSupportedClient(client: object): void {
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
      'Option "client" must be a client from the redis package\'s createClient() (node-redis 5 or newer) or an ioredis ' +
        'client (new Redis(…)). Pass one, or let the store make its own (the "url" option).',
    );
  }
}

export function checkUrl(url: unknown): string {
  if (typeof url !== 'string' || !/^rediss?:\/\//.test(url)) {
    throw new InvalidArgumentError(`Option "url" must be a redis:// or rediss:// URL, not ${typeof url === 'string' ? describe(redactUrl(url)) : describe(url)}.`);
  }
  return url;
}

/** A URL without its password, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}


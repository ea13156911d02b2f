/**
 * What both Redis-backed stores stand on: their options, checked once; the
 * client they talk through (made here, or accepted from the application);
 * the command connection and the key calls over it; and how subscriber
 * connections are made. `RedisStore` adds watching and its public calls;
 * the relay (src/stores/relay) adds its own subscription and sync.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { InvalidArgumentError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import { describe, optionalInteger, optionsObject, wellFormedString } from '../../store/validate';
import { createOwnIORedisClient, IORedisClient, isIORedisClient, isIORedisCluster } from './ioredis-client';
import { checkSupportedClient, checkUrl, createOwnClient, keepReconnecting, namespacePrefix, type RedisClientLike } from './redis-client';
import { RedisConnection } from './redis-connection';
import { RedisKeys } from './redis-keys';

const DEFAULT_URL = 'redis://127.0.0.1:6379';
export const DEFAULT_NAMESPACE = 'generation-sync:';
const DEFAULT_COMMAND_TIMEOUT_MS = 500;
const DEFAULT_CONNECT_TIMEOUT_MS = 2000;
const DEFAULT_WATCH_POLL_MS = 5000;

/** The options both stores take for Redis, checked. */
export interface RedisSettings {
  /** Where the server is, when the store makes its own client. */
  readonly url: string | undefined;
  /** A client the application passed in (RedisStore only). */
  readonly client: RedisClientLike | undefined;
  /** The package the store makes its own clients with. */
  readonly driver: 'redis' | 'ioredis';
  /** Prefix of every key, encoded, `:` included. */
  readonly namespace: string;
  readonly commandTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly watchPollMs: number;
  readonly socket: Readonly<Record<string, unknown>>;
  readonly logger: Logger;
}

/** Option values as a caller gives them (RedisStoreOptions, or RelayStoreOptions.redis with a logger). */
export interface RedisOptionValues {
  readonly url?: unknown;
  readonly client?: unknown;
  readonly driver?: unknown;
  readonly namespace?: unknown;
  readonly commandTimeoutMs?: unknown;
  readonly connectTimeoutMs?: unknown;
  readonly watchPollMs?: unknown;
  readonly socket?: unknown;
  readonly logger?: unknown;
}

/** Check every Redis option once, for either store; `prefix` names them in messages (`''` or `'redis.'`). */
export function checkRedisOptions(opts: RedisOptionValues, prefix = ''): RedisSettings {
  const name = (option: string): string => `${prefix}${option}`;
  const namespace = namespacePrefix(opts.namespace === undefined ? DEFAULT_NAMESPACE : wellFormedString(opts.namespace, `Option "${name('namespace')}"`));
  const commandTimeoutMs = optionalInteger(opts.commandTimeoutMs, name('commandTimeoutMs'), DEFAULT_COMMAND_TIMEOUT_MS, { min: 1, max: 2 ** 31 - 1 });
  const connectTimeoutMs = optionalInteger(opts.connectTimeoutMs, name('connectTimeoutMs'), DEFAULT_CONNECT_TIMEOUT_MS, { min: 0, max: 2 ** 31 - 1 });
  const watchPollMs = optionalInteger(opts.watchPollMs, name('watchPollMs'), DEFAULT_WATCH_POLL_MS, { min: 10, max: 2 ** 31 - 1 });
  const socket = optionsObject(opts.socket as Record<string, unknown> | undefined, `Option "${name('socket')}"`) as Readonly<Record<string, unknown>>;
  const logger = (opts.logger ?? console) as Logger;
  if (typeof logger.error !== 'function' || typeof logger.warn !== 'function') {
    throw new InvalidArgumentError(`Option "logger" must have error() and warn() methods, not ${describe(logger)}.`);
  }
  const driver = opts.driver ?? 'redis';
  if (driver !== 'redis' && driver !== 'ioredis') {
    throw new InvalidArgumentError(`Option "${name('driver')}" must be 'redis' or 'ioredis', not ${describe(driver)}.`);
  }
  const client = opts.client === undefined ? undefined : acceptClient(opts.client, logger);
  const url = client !== undefined ? undefined : opts.url === undefined ? DEFAULT_URL : checkUrl(opts.url);
  return { url, client, driver, namespace, commandTimeoutMs, connectTimeoutMs, watchPollMs, socket, logger };
}

/** A client the application passed in: a node-redis or an ioredis client, as the store sees them. */
function acceptClient(given: unknown, logger: Logger): RedisClientLike {
  if (typeof given === 'object' && given !== null && isIORedisCluster(given)) {
    throw new InvalidArgumentError(
      'Option "client" is an ioredis Cluster client, which the Redis store does not support. Use a standalone Redis, or a primary with replicas, through new Redis(…).',
    );
  }
  let client: RedisClientLike;
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
  return client;
}

/** The command connection and the key calls over it, and how to make a subscriber connection. */
export interface RedisEngine {
  readonly connection: RedisConnection;
  readonly keys: RedisKeys;
  /** A new subscriber connection (not connected yet), made like the command connection. */
  readonly makeSubscriber: () => RedisClientLike;
  /** Whether connections must not keep the process alive (the relay's). */
  readonly unreferenced: boolean;
  readonly settings: RedisSettings;
}

/**
 * Make the engine of a store (nothing is connected yet: see RedisConnection.open). `unreferenced`: the
 * store's connections, their sockets and their reconnection timers never keep the process alive (the relay
 * runs inside an application process that must exit when its own work is done, Redis reachable or not); it
 * applies to clients the store makes.
 */
export function createEngine(settings: RedisSettings, unreferenced = false): RedisEngine {
  const { url, driver, socket } = settings;
  const own = (failWhileOffline: boolean): RedisClientLike => {
    if (url === undefined) throw new InvalidArgumentError('No Redis URL to connect to.');
    // Our clients reconnect on timers of ours (keepReconnecting, the subscription's own), which closing the
    // store clears: a driver's reconnection waits on timers nothing can cancel.
    const made = driver === 'ioredis' ? createOwnIORedisClient(url, socket, { failWhileOffline, selfReconnect: true }) : createOwnClient(url, socket, { failWhileOffline, selfReconnect: true });
    if (unreferenced) made.unref?.();
    return made;
  };
  const client = settings.client ?? own(true);
  const channel = `${settings.namespace}changes`;
  const connection = new RedisConnection({
    client,
    ownsClient: settings.client === undefined,
    url,
    commandTimeoutMs: settings.commandTimeoutMs,
    channel,
    watchPollMs: settings.watchPollMs,
    logger: settings.logger,
  });
  if (settings.client === undefined) connection.onClose(keepReconnecting(client, () => connection.closed, unreferenced));
  const keys = new RedisKeys(connection, settings.namespace, channel);
  const makeSubscriber = (): RedisClientLike => {
    if (url !== undefined) return own(false); // subscribing may wait for the connection: queueing is safe here
    if (typeof client.duplicate !== 'function' || typeof client.subscribe !== 'function') {
      throw new InvalidArgumentError("Watching needs a client with duplicate() and subscribe(), as the redis package's clients have.");
    }
    return client.duplicate({ disableOfflineQueue: false });
  };
  return { connection, keys, makeSubscriber, unreferenced, settings };
}

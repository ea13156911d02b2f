/**
 * ioredis clients, seen through the part of a node-redis client the Redis
 * store uses ({@link RedisClientLike}): commands, readiness, the connection's
 * events, a second connection for pub/sub. Many Node services already hold
 * an ioredis client; the store takes it as it is, or makes its own
 * (`driver: 'ioredis'`).
 *
 * Not part of the public API.
 *
 * @module
 */

import { DependencyMissingError, InvalidArgumentError } from '../../store/errors';
import { reconnectDelayMs, type OwnClientOptions, type RedisClientLike } from './redis-client';

/** The part of an ioredis `Redis` instance used here. */
interface IORedisLike {
  readonly status: string;
  readonly options: { enableOfflineQueue?: boolean };
  call(command: string, ...args: string[]): Promise<unknown>;
  connect(): Promise<void>;
  quit(): Promise<unknown>;
  disconnect(reconnect?: boolean): void;
  duplicate(overrides?: Record<string, unknown>): IORedisLike;
  subscribe(channel: string): Promise<unknown>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  /** The socket of the current connection (ioredis makes a new one for each). */
  readonly stream?: { unref?(): void; destroy?(): void } | undefined;
}

/** Whether `client` is an ioredis client (a single connection; a Cluster is refused elsewhere). */
export function isIORedisClient(client: object): boolean {
  const value = client as Record<string, unknown>;
  return typeof value.call === 'function' && typeof value.status === 'string' && typeof value.duplicate === 'function' && !('isReady' in value);
}

/** An ioredis Cluster client, which the store refuses like node-redis' cluster. */
export function isIORedisCluster(client: object): boolean {
  const value = client as Record<string, unknown>;
  return typeof value.nodes === 'function' && typeof value.call === 'function' && typeof value.status === 'string';
}

/** Statuses of an ioredis client in which it is neither connected nor trying to be. */
const CLOSED = new Set(['wait', 'end']);

/** An ioredis client as a {@link RedisClientLike}. */
export class IORedisClient implements RedisClientLike {
  constructor(readonly io: IORedisLike) {}

  /** Let the process exit while connected: this connection's socket, and each one made when it reconnects. */
  unref(): void {
    const unrefStream = (): void => this.io.stream?.unref?.();
    unrefStream();
    this.io.on('connect', unrefStream);
  }

  get isOpen(): boolean {
    return !CLOSED.has(this.io.status);
  }

  get isReady(): boolean {
    return this.io.status === 'ready';
  }

  /** What the store checks to warn about an offline queue (node-redis' name for it). */
  get options(): { disableOfflineQueue: boolean } {
    return { disableOfflineQueue: this.io.options.enableOfflineQueue === false };
  }

  connect(): Promise<unknown> {
    return this.io.connect();
  }

  sendCommand(args: ReadonlyArray<string>): Promise<unknown> {
    const [command, ...rest] = args;
    return this.io.call(command as string, ...rest);
  }

  on(event: string, listener: (...args: any[]) => void): unknown {
    return this.io.on(event, listener);
  }

  off(event: string, listener: (...args: any[]) => void): unknown {
    return this.io.off(event, listener);
  }

  async close(): Promise<void> {
    await this.io.quit();
  }

  destroy(): void {
    // disconnect() only half-closes the socket and waits up to ioredis' disconnectTimeout (2 s) for the server to
    // close its side: a server that never answers would keep the process alive that long. Nothing more is wanted
    // from it: destroy the socket first.
    this.io.stream?.destroy?.();
    this.io.disconnect(false);
  }

  duplicate(overrides?: Record<string, unknown>): RedisClientLike {
    const queue = overrides?.disableOfflineQueue;
    return new IORedisClient(this.io.duplicate(queue === undefined ? {} : { enableOfflineQueue: queue !== true }));
  }

  async subscribe(channel: string, listener: (message: string, channel: string) => void): Promise<unknown> {
    this.io.on('message', (from: string, message: string) => {
      if (from === channel) listener(message, from);
    });
    return this.io.subscribe(channel);
  }
}

/** An ioredis client of the store's own, connecting only when connect() is called (as node-redis' do). */
export function createOwnIORedisClient(
  url: string,
  socket: Readonly<Record<string, unknown>>,
  { failWhileOffline, selfReconnect }: OwnClientOptions = { failWhileOffline: true, selfReconnect: false },
): IORedisClient {
  let IORedis: new (url: string, options: Record<string, unknown>) => IORedisLike;
  try {
    IORedis = require('ioredis') as typeof IORedis;
  } catch (cause) {
    throw new DependencyMissingError('RedisStore with driver "ioredis" needs the "ioredis" package: install it with "npm install ioredis".', { cause });
  }
  if (typeof IORedis !== 'function') throw new InvalidArgumentError('The "ioredis" package did not export its client class.');
  return new IORedisClient(
    new IORedis(url, {
      lazyConnect: true,
      // Fail fast while disconnected rather than queue: a queued INCR could run long after we reported failure.
      enableOfflineQueue: !failWhileOffline,
      maxRetriesPerRequest: failWhileOffline ? 0 : null,
      retryStrategy: selfReconnect ? () => null : (times: number) => reconnectDelayMs(times - 1),
      // How long ioredis waits for a server to close its side after disconnect(). It also waits this long, with a
      // timer that keeps the process alive, after a connection that failed while connecting is already closed:
      // a connect() aborted against a silent server held the process 2 s longer with the default. The store
      // closes gracefully with QUIT, never with disconnect(): nothing is lost by not waiting.
      disconnectTimeout: 0,
      ...socket,
    }),
  );
}

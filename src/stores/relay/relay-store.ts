/**
 * Many hosts at shared-memory speed: the shared-memory store of each host,
 * kept in step with Redis by one process per host. This module is the
 * store's front; the work is done by the modules beside it:
 *
 * ```
 * relay-store.ts   the front (this file): the synchronous store every process opens
 *   election.ts    which process of the host is its relay (a kernel lock)
 *   relay.ts       what the relay does: forward, take in, remember the bases
 * ```
 *
 * @module
 */

import { join } from 'node:path';

import { DependencyMissingError, InvalidArgumentError, OutOfRangeError, type StoreClosedError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import type { BindOptions, GenerationListener, KeyBinding, Store, StoreEntry } from '../../store/store';
import { optionalInteger, optionsObject } from '../../store/validate';
import { fileModeOption, preparedDefaultDirectory, storePathArgument } from '../../system/filesystem';
import { checkRedisOptions, createEngine, type RedisSettings } from '../redis/redis-engine';
import type { RedisStoreOptions } from '../redis/redis-store';
import { nativeAddon } from '../shm/native';
import type { Replica } from '../shm/replica';
import { INLINE_KEY_BYTES } from '../shm/shm-format';
import { SharedMemoryStore, type SharedMemoryStoreOptions } from '../shm/shm-store';
import { Election } from './election';
import { Relay, type RelayBacklog, type RelayCounters } from './relay';

/** File name of a relayed store in the default directory. */
export const RELAY_FILE_NAME = 'relayed.shm';

/** How often a process that is not the relay tries to become it. A relay that dies is replaced within this. */
export const ELECTION_INTERVAL_MS = 250;

/** How often the relay looks for keys created on this host. */
export const RELAY_SCAN_INTERVAL_MS = 100;

const ONE_YEAR_SECS = 365 * 24 * 60 * 60;

/** Options of {@link RelayStore.open}. */
export interface RelayStoreOptions extends SharedMemoryStoreOptions {
  /**
   * Where Redis is and how to talk to it, as for {@link RedisStore.connect}
   * (`url`, `namespace`, `driver`, `socket`, `commandTimeoutMs`,
   * `connectTimeoutMs`, `watchPollMs`). Only the relay process connects,
   * with a client it makes itself: hosts relayed to the same Redis and
   * namespace share their keys, with each other and with processes that use
   * a {@link RedisStore} of that namespace directly.
   */
  readonly redis?: Omit<RedisStoreOptions, 'client' | 'signal' | 'logger'> | undefined;
  /**
   * Lifetime of a key created in Redis by the relay, in seconds (every
   * change of the key in Redis keeps it).
   * @default one year
   */
  readonly expirationSecs?: number | undefined;
  /**
   * How often, in milliseconds, a process that is not the relay tries to
   * become it: when the relay dies, another process takes over within this.
   * @default 250
   */
  readonly electionIntervalMs?: number | undefined;
  /**
   * Where the relay reports Redis outages (once each) and problems with its
   * state file.
   * @default console
   */
  readonly logger?: Logger | undefined;
}

/** What {@link RelayStore.relayStatus} reports. */
export interface RelayStatus {
  /** Whether this process is the host's relay now. */
  readonly relaying: boolean;
  /** Whether the relay (when this process is it) is connected to Redis. */
  readonly connected: boolean;
  /** What this process did as the relay, over its life. */
  readonly counters: Readonly<RelayCounters>;
  /** The relay's work waiting now (all zero, `reading` null, when this process is not the relay). */
  readonly backlog: RelayBacklog;
}

/**
 * A synchronous store for {@link GenerationSynchronizer} on many hosts: each
 * host keeps its generations in a shared-memory store, and one process of
 * the host, its *relay*, keeps that file in step with Redis. Checks and
 * bumps are the shared-memory store's (one atomic load or add, no system
 * call, no network); changes reach the other hosts through the relays.
 *
 * Every process of the host opens the same file. The relay is whichever
 * process holds a kernel lock on `<path>.relay-lock`; when it dies the lock
 * dies with it and another process takes over within `electionIntervalMs`.
 * Only the relay connects to Redis (two connections per host: commands and
 * one subscription), whatever the number of processes.
 *
 * What `markUpdated()` returning true means here: the change is in the
 * host's shared memory, seen at once by every process of the host, and it
 * reaches Redis (and so every other host) as soon as a relay is connected,
 * across relay crashes and Redis reconnects, as long as the host's store
 * file survives. Redis orders changes across hosts: every host converges to
 * Redis' value, and a host's value only ever moves up. While the relay
 * cannot reach Redis, every key of the host reads as expired once (a change
 * elsewhere cannot be ruled out) and the outage is logged once.
 *
 * See docs/relay.md for the flow, the guarantees and their limits.
 *
 * @example
 * const store = RelayStore.open('/var/lib/myapp/generations-relayed.shm', { redis: { url: 'redis://cache.internal:6379' } });
 * const settings = new GenerationSynchronizer('site-settings', { store });
 */
export class RelayStore implements Store {
  readonly kind = 'relay';
  /** Absolute path of the host's store file. */
  readonly path: string;
  readonly #shm: SharedMemoryStore;
  readonly #replica: Replica;
  readonly #election: Election;
  readonly #redis: RedisSettings;
  readonly #expirationSecs: number;
  readonly #mode: number;
  readonly #logger: Logger;
  /** This process's relay, while it is the host's relay: never more than one. */
  #relay: Relay | undefined;
  #starting: Promise<void> | undefined;
  #stopping: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(
    shm: SharedMemoryStore,
    replica: Replica,
    options: { redis: RedisSettings; expirationSecs: number; electionIntervalMs: number; mode: number; logger: Logger },
  ) {
    this.#shm = shm;
    this.#replica = replica;
    this.path = shm.path;
    this.#redis = options.redis;
    this.#expirationSecs = options.expirationSecs;
    this.#mode = options.mode;
    this.#logger = options.logger;
    const heartbeat = {
      read: () => replica.heartbeat(),
      beat: () => replica.beat(),
      exclusively: (action: () => void) => replica.exclusively(action),
    };
    this.#election = new Election(`${shm.path}.relay-lock`, nativeAddon(), options.mode, options.electionIntervalMs, heartbeat, {
      elected: () => this.#becomeRelay(),
      deposed: () => this.#stopRelaying(),
    });
    this.#election.start();
  }

  /**
   * Open the host's store file at `path` (created if needed; without a
   * path, `relayed.shm` in the default directory) and take part in
   * electing the host's relay. Throws as {@link SharedMemoryStore.open}
   * does, and {@link InvalidArgumentError} for bad options; Redis being
   * down is not an error (the relay keeps reconnecting, and keys read as
   * expired meanwhile).
   */
  static open(path?: string, options?: RelayStoreOptions): RelayStore {
    const opts = optionsObject(options, 'RelayStore options');
    const redisOptions = optionsObject(opts.redis, 'Option "redis"') as RedisStoreOptions;
    for (const refused of ['client', 'signal', 'logger'] as const) {
      if (redisOptions[refused] !== undefined) {
        throw new InvalidArgumentError(`Option "redis.${refused}" is not accepted by RelayStore: only the relay process connects, with a client it makes itself.`);
      }
    }
    const redis = checkRedisOptions({ ...redisOptions, logger: opts.logger }, 'redis.');
    try {
      require.resolve(redis.driver);
    } catch (cause) {
      throw new DependencyMissingError(`RelayStore needs the "${redis.driver}" package for its relay: install it with "npm install ${redis.driver}".`, { cause });
    }
    const expirationSecs = optionalInteger(opts.expirationSecs, 'expirationSecs', ONE_YEAR_SECS, { min: 1, max: 2 ** 31 - 1 });
    const electionIntervalMs = optionalInteger(opts.electionIntervalMs, 'electionIntervalMs', ELECTION_INTERVAL_MS, { min: 10, max: 60_000 });
    const mode = fileModeOption(opts.mode);
    const file = path === undefined ? join(preparedDefaultDirectory(), RELAY_FILE_NAME) : storePathArgument(path);
    const { redis: _redis, expirationSecs: _e, electionIntervalMs: _i, logger: _l, ...shmOptions } = opts as RelayStoreOptions;
    const { store, replica } = SharedMemoryStore.openForRelay(file, shmOptions);
    return new RelayStore(store, replica, { redis, expirationSecs, electionIntervalMs, mode, logger: redis.logger });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The host's shared-memory store, which every read and bump goes to. */
  get local(): SharedMemoryStore {
    return this.#shm;
  }

  /**
   * Whether this process is the host's relay, whether it is connected (and
   * every key of the host was brought in step with Redis since it last
   * connected), and what it did.
   */
  relayStatus(): RelayStatus {
    const relay = this.#relay;
    return {
      // The term in the host's file says who relays: a relay whose place another took (its lock file removed,
      // or it was frozen) is not the relay any more, even before it notices.
      relaying: this.#election.leading && relay !== undefined && relay.holdsPlace,
      connected: relay?.connected ?? false,
      counters: { ...(relay?.counters ?? { forwarded: 0, takenIn: 0, outages: 0, failed: 0, implausible: 0 }) },
      backlog: relay?.backlog ?? { queued: 0, inFlight: 0, retrying: 0, reading: null },
    };
  }

  /**
   * Resolve true once every change made on this host before the call is in
   * Redis (every key of the host's file, whoever changed it): this process
   * must be the relay (false at once otherwise). For a relay process that
   * wants its changes out before it exits (a CLI, a cron job), and for
   * tests. False after `timeoutMs` (default 5000).
   */
  async flush(timeoutMs = 5000): Promise<boolean> {
    // The relay's connections do not keep the process alive; a caller waiting here does.
    const keepAlive = setInterval(() => undefined, 60_000);
    try {
      if (this.#starting !== undefined) await this.#starting;
      const relay = this.#relay;
      return relay === undefined ? false : await relay.flush(timeoutMs);
    } finally {
      clearInterval(keepAlive);
    }
  }

  /**
   * As {@link SharedMemoryStore.bind}. Throws {@link OutOfRangeError} for a
   * key longer than 256 bytes in UTF-8: the host's file keeps only the start
   * of such a key, and the relay must read whole keys from it.
   */
  bind(key: string, options: BindOptions): KeyBinding {
    if (typeof key === 'string' && Buffer.byteLength(key) > INLINE_KEY_BYTES) {
      throw new OutOfRangeError(
        `Key "${key.slice(0, 40)}…" is ${Buffer.byteLength(key)} bytes long in UTF-8; a relayed store relays keys of at most ${INLINE_KEY_BYTES}. ` +
          'Use a shorter key, or makeCacheKey() with useEncryption, which gives 64 characters.',
      );
    }
    return this.#shm.bind(key, options);
  }

  entries(): StoreEntry[] {
    return this.#shm.entries();
  }

  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    return this.#shm.watch(key, since, listener, onClose);
  }

  /** {@link close}, for `using store = RelayStore.open(…)`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Leave the election (the relay, if this process is it, writes its state
   * and hands over: another process takes over within `electionIntervalMs`)
   * and close the file. The Redis connection closes in the background;
   * `whenClosed()` resolves when it has.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopRelaying();
    this.#election.close();
    this.#shm.close();
  }

  /** Resolves once the Redis connection of this process, if it had one, is closed. */
  async whenClosed(): Promise<void> {
    await this.#starting;
    await this.#stopping;
  }

  /** Elected: start the one relay of this process (if one is still stopping, after it). */
  #becomeRelay(): void {
    if (this.#relay !== undefined || this.#starting !== undefined || this.#closed) return;
    const previous = this.#stopping;
    const starting = (async () => {
      await previous;
      if (this.#closed || !this.#election.leading) return;
      let relay: Relay;
      try {
        const term = this.#replica.claimTerm();
        relay = new Relay(this.#replica, createEngine(this.#redis, true), {
          statePath: `${this.path}.relay-state.json`,
          mode: this.#mode,
          expirationSecs: this.#expirationSecs,
          logger: this.#logger,
          term,
          onDeposed: () => {
            if (this.#relay !== relay) return;
            this.#stopRelaying();
            this.#election.resign();
          },
        });
      } catch (error) {
        // The local store closed or broke under the relay: let another process try.
        this.#logger.error(`generation-sync: relay for ${this.path} could not start: ${(error as Error).message}`);
        this.#election.resign();
        return;
      }
      this.#relay = relay;
      await relay.start().catch((error: unknown) => {
        this.#logger.error(`generation-sync: relay for ${this.path} could not start: ${(error as Error).message}`);
        this.#stopRelaying();
        this.#election.resign();
      });
    })();
    this.#starting = starting.finally(() => {
      this.#starting = undefined;
    });
  }

  #stopRelaying(): void {
    const relay = this.#relay;
    this.#relay = undefined;
    if (relay !== undefined) this.#stopping = relay.stop();
  }
}

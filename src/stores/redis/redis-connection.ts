/**
 * The Redis store's main connection: every command goes through here,
 * bounded by the command timeout and translated into typed errors. It tells
 * a dead connection from a slow one, reconnects the client it made, refuses
 * servers it cannot use, and reports each outage once when it starts and
 * once when it ends.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { corruptValueError, StoreClosedError, StoreError, StoreFormatError, StoreUnavailableError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import { destroyForGood, redactUrl, type RedisClientLike } from './redis-client';
import type { Script } from './redis-scripts';

/**
 * A command left unanswered this many command timeouts (and at least
 * DEAD_CONNECTION_MIN_MS) means the connection is dead even if the socket
 * looks open (a peer that vanished, a middlebox that dropped it): the store
 * drops it and connects again.
 */
export const DEAD_CONNECTION_TIMEOUTS = 4;
export const DEAD_CONNECTION_MIN_MS = 1000;

/**
 * At most this many commands are handed to the client at once; more wait
 * here, in order. A command's deadline starts when it is handed over, so
 * that a burst the server answers (50,000 checks at once) is never taken
 * for an outage: each command waits behind at most this many, not behind
 * the whole burst.
 */
export const MAX_IN_FLIGHT = 512;

/** What a connection is told when it is made. */
export interface ConnectionSettings {
  readonly client: RedisClientLike;
  /** Whether the store made the client (and so may reconnect and close it). */
  readonly ownsClient: boolean;
  /** Where the server is, when the store made its own client; for messages. */
  readonly url: string | undefined;
  readonly commandTimeoutMs: number;
  /** The channel changes are announced on. */
  readonly channel: string;
  /** For the message about a missing publish permission. */
  readonly watchPollMs: number;
  readonly logger: Logger;
}

export class CommandTimeout extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
  }
}

/**
 * The prefix of a Redis error reply ("OOM", "NOPERM", "ERR", …), read from
 * the error either driver rejects with (its message starts with the prefix,
 * in capitals); undefined for anything else (a timeout, a closed socket).
 */
export function redisErrorReply(error: unknown): string | undefined {
  if (error instanceof CommandTimeout || !(error instanceof Error)) return undefined;
  return /^([A-Z][A-Z_]+) /.exec(error.message)?.[1];
}

export class RedisConnection {
  readonly #client: RedisClientLike;
  readonly #ownsClient: boolean;
  readonly #url: string | undefined;
  readonly #commandTimeoutMs: number;
  readonly #channel: string;
  readonly #watchPollMs: number;
  readonly #logger: Logger;
  #connected = false;
  #closed = false;
  #lostAt: number | undefined;
  /** The oldest command that timed out and has not been answered yet, and since when (performance.now()). */
  #stalled: Promise<unknown> | undefined;
  #stalledSince = 0;
  /** A dead connection of a client passed in was reported (the store cannot reconnect a client it did not make). */
  #deadClientReported = false;
  /** Whether the store was handed to the application (until then connect() makes the connection checks itself). */
  #handedOver = false;
  /** Why this server cannot be used (a Redis Cluster node): every command fails with it. */
  #unsupported: StoreError | undefined;
  /** Whether the channel permission was checked on some connection (once is enough). */
  #publishChecked = false;
  /** Commands handed to the client and not answered yet. */
  #inFlight = 0;
  /** Commands waiting for a place among those in flight, in order: each is started, or failed with the reason. */
  readonly #waiting: Array<{ start: () => void; fail: (error: Error) => void }> = [];
  /** Ends connect()'s wait for the first connection (when the store is closed meanwhile). */
  #endOpenWait: (() => void) | undefined;
  /** Called when the connection is ready again. */
  readonly #readyHooks: Array<() => void> = [];
  /** Called when an outage starts. */
  readonly #lostHooks: Array<() => void> = [];
  /** Called when the store closes. */
  readonly #closeHooks: Array<() => void> = [];
  readonly #onError = (error: Error): void => this.connectionLost(error);
  // ioredis reports a connection the server closed (CLIENT KILL, a restart) only by reconnecting; node-redis
  // reports an error first. Either way, reconnecting means the connection was lost.
  readonly #onReconnecting = (): void => this.connectionLost(new Error('the connection closed; reconnecting'));
  readonly #onReady = (): void => {
    this.#connectionBack();
    for (const hook of this.#readyHooks) hook();
    // During connect() the checks are connect()'s, which reports an unsupported server by rejecting.
    if (!this.#handedOver) return;
    void this.#checkServer().catch(() => undefined); // an unsupported server is reported by #checkServer itself
    void this.#checkPublishPermission();
  };

  constructor(settings: ConnectionSettings) {
    this.#client = settings.client;
    this.#ownsClient = settings.ownsClient;
    this.#url = settings.url;
    this.#commandTimeoutMs = settings.commandTimeoutMs;
    this.#channel = settings.channel;
    this.#watchPollMs = settings.watchPollMs;
    this.#logger = settings.logger;
    this.#client.on('error', this.#onError);
    this.#client.on('reconnecting', this.#onReconnecting);
    this.#client.on('ready', this.#onReady);
  }

  get client(): RedisClientLike {
    return this.#client;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** " at <url>" without its password, or nothing when the client was passed in; for messages. */
  get where(): string {
    return this.#url ? ` at ${redactUrl(this.#url)}` : '';
  }

  /** Call `hook` each time the connection is ready again (after connect()). */
  onReady(hook: () => void): void {
    this.#readyHooks.push(hook);
  }

  /** Call `hook` each time an outage starts (once per outage, as it is logged). */
  onLost(hook: () => void): void {
    this.#lostHooks.push(hook);
  }

  /** Call `hook` when the store closes. */
  onClose(hook: () => void): void {
    this.#closeHooks.push(hook);
  }

  /** Whether the connection is up: connected, and no outage since. */
  get up(): boolean {
    return this.#connected && this.#lostAt === undefined && !this.#closed;
  }

  /**
   * Wait (at most `connectTimeoutMs`) for the first connection, then check
   * the server. Rejects, closed, for a server the store cannot use.
   */
  async open(connectTimeoutMs: number): Promise<void> {
    const client = this.#client;
    if (client.isReady) {
      this.#connected = true;
    } else {
      if (!client.isOpen) {
        // connect() settles when the first connection succeeds or the client gives up; either way we do not wait past the timeout.
        client.connect().then(
          () => undefined,
          (error: unknown) => this.connectionLost(error as Error),
        );
      }
      await new Promise<void>((resolve) => {
        let timer: NodeJS.Timeout | undefined;
        const done = (): void => {
          clearTimeout(timer);
          client.off('ready', done);
          this.#endOpenWait = undefined;
          resolve();
        };
        this.#endOpenWait = done;
        timer = setTimeout(done, connectTimeoutMs);
        client.on('ready', done);
        if (client.isReady || this.#closed) done();
      });
      if (this.#closed) return;
    }
    if (!client.isReady) {
      this.connectionLost(new Error(`not connected within ${connectTimeoutMs} ms`));
    } else {
      await this.#refuseUnsupportedServer();
      void this.#checkPublishPermission();
    }
    this.#handedOver = true;
  }

  /**
   * Disconnect (only the client this store made; a client passed in stays
   * open). Bounded: pending replies are waited for at most
   * `commandTimeoutMs`, then the connection is dropped.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // connect() waiting for the first connection stops waiting: no timer of ours outlives the store.
    this.#endOpenWait?.();
    for (const hook of this.#closeHooks) hook();
    this.#failWaiting(new StoreClosedError(`The Redis store${this.where} was closed.`));
    this.#client.off('ready', this.#onReady);
    this.#client.off('reconnecting', this.#onReconnecting);
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
    destroyForGood(this.#client);
  }

  checkOpen(): void {
    if (this.#closed) throw new StoreClosedError(`The Redis store${this.where} was closed.`);
  }

  /** Run a script (by its SHA-1, sending its source only if the server does not have it yet) on one key. */
  async script(entry: Script, redisKey: string, args: string[]): Promise<unknown> {
    try {
      return await this.command(['EVALSHA', entry.sha, '1', redisKey, ...args], true);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw this.#translate(error, redisKey);
    }
    return this.command(['EVAL', entry.source, '1', redisKey, ...args]);
  }

  /**
   * Send one command, bounded by the command timeout; translate failures
   * into typed errors (unless `raw`). The timeout is ours, not the
   * client's: a client's own timeout also counts the time a command waits
   * in its write queue, and stops counting once a command is written, so a
   * server that stops answering (stopped, or a network that drops packets)
   * would hang it. At most MAX_IN_FLIGHT commands are handed to the client
   * at once, and a command's deadline starts when it is handed over. A
   * command is always sent, even while an earlier one is unanswered: a
   * stall that clears within its timeout must not fail it unsent. The
   * oldest unanswered command tells a dead connection (see
   * {@link #dropDeadConnection}).
   */
  async command(args: string[], raw = false): Promise<unknown> {
    this.checkOpen();
    if (this.#unsupported !== undefined) throw this.#unsupported;
    if (this.#inFlight >= MAX_IN_FLIGHT) {
      try {
        await new Promise<void>((start, fail) => this.#waiting.push({ start, fail }));
      } catch (error) {
        if (raw) throw error;
        throw this.#translate(error, args[1]);
      }
    }
    this.#inFlight++;
    try {
      return await this.#send(args, raw);
    } finally {
      this.#inFlight--;
      this.#waiting.shift()?.start();
    }
  }

  async #send(args: string[], raw: boolean): Promise<unknown> {
    this.checkOpen();
    if (this.#stalled !== undefined) {
      const stalledMs = performance.now() - this.#stalledSince;
      if (stalledMs > Math.max(DEAD_CONNECTION_MIN_MS, DEAD_CONNECTION_TIMEOUTS * this.#commandTimeoutMs)) this.#dropDeadConnection(stalledMs);
    }
    const pending = this.#client.sendCommand(args);
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
      throw this.#translate(error, args[0] === 'EVALSHA' || args[0] === 'EVAL' ? args[3] : args[1]);
    } finally {
      timer?.cancel();
    }
  }

  /** Fail every command still waiting for a place (the store closed, or an outage began: they would only time out). */
  #failWaiting(error: Error): void {
    for (const waiter of this.#waiting.splice(0)) waiter.fail(error);
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
    this.connectionLost(why);
    this.#stalled = undefined;
    // Our own client: it reconnects after a random pause (see keepReconnecting), so that the processes of a
    // fleet do not all reconnect at once.
    this.#client.destroy();
  }

  /** A failure of a command as a typed error; `redisKey` is the key it was about, if any, for the message. */
  #translate(error: unknown, redisKey: string | undefined): Error {
    if (error instanceof StoreFormatError || error instanceof StoreClosedError) return error;
    const message = error instanceof Error ? error.message : String(error);
    if (message.startsWith('WRONGTYPE')) {
      return corruptValueError(`The Redis key ${redisKey ?? '(unknown)'} holds a value of another type (a list, a hash, …), not a generation.`);
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
    // An error reply ("OOM …", "NOPERM …", "READONLY …") is an answer: say so, so that a log tells it from silence.
    const what = redisErrorReply(error) === undefined ? 'did not answer' : 'refused the command';
    return new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `Redis${this.where} ${what}: ${message}.${shared}`, { cause: error });
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
      info = String(await this.command(['INFO', 'cluster'], true));
    } catch {
      return; // an outage: checked again on the next connection
    }
    if (!/^cluster_enabled:1\s*$/m.test(info)) return;
    this.#unsupported = new StoreError(
      'ERR_GENSYNC_UNSUPPORTED_SERVER',
      `Redis${this.where} is a Redis Cluster node, which the Redis store does not support ` +
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
      await this.command(['PUBLISH', this.#channel, ''], true);
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

  connectionLost(error: Error): void {
    if (this.#closed || this.#lostAt !== undefined) return;
    this.#lostAt = Date.now();
    this.#failWaiting(error);
    const wasConnected = this.#connected;
    this.#logger.error(
      `generation-sync: ${wasConnected ? 'lost the connection to' : 'cannot connect to'} Redis${this.where} ` +
        `(${error.message}). Reconnecting; until then every key reads as expired and updates report failure.`,
    );
    for (const hook of this.#lostHooks) hook();
  }

  #connectionBack(): void {
    this.#connected = true;
    if (this.#lostAt === undefined) return;
    const downMs = Date.now() - this.#lostAt;
    this.#lostAt = undefined;
    (this.#logger.info ?? this.#logger.warn).call(
      this.#logger,
      `generation-sync: connected to Redis${this.where} again after ${downMs} ms.`,
    );
  }
}

/**
 * The Redis store's subscriber: the second connection, subscribed to the
 * store's change channel while anything is watched. It is checked as the
 * command connection is: a PING every {@link SUBSCRIBER_PING_MS}, and a
 * subscriber from which nothing arrives (no answer, no message) for as long
 * as a dead command connection's command would wait (a network path that
 * swallows bytes while the kernel still acknowledges them) is dropped and
 * replaced. A subscriber still reading a burst of messages is not dead,
 * however long its PING's answer waits behind them. Its loss and its
 * return are logged once each, on both drivers, and a subscription the
 * server refuses (an ACL user without SUBSCRIBE or the channel) is logged
 * once with the fix.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import type { Logger } from '../../store/logger';
import { destroyForGood, RECONNECT_MAX_MS, type RedisClientLike } from './redis-client';
import { DEAD_CONNECTION_MIN_MS, DEAD_CONNECTION_TIMEOUTS } from './redis-connection';
import type { RedisEngine } from './redis-engine';

/** How often the subscriber is asked whether it still answers. */
export const SUBSCRIBER_PING_MS = 1000;

interface SubscriptionSettings {
  /** Makes a new subscriber connection (not connected yet). */
  readonly make: () => RedisClientLike;
  readonly channel: string;
  /** " at <url>" or nothing; for messages. */
  readonly where: string;
  readonly logger: Logger;
  readonly watchPollMs: number;
  /** A PING unanswered this long means the connection is dead. */
  readonly deadAfterMs: number;
  /** Every change message, as published. */
  readonly onMessage: (message: string) => void;
  /** Subscribed (again): messages sent meanwhile were lost, so watched keys are read again. */
  readonly onSubscribed: () => void;
}

export class Subscription {
  private readonly settings: SubscriptionSettings;
  #client: RedisClientLike | undefined;
  #closed = false;
  /** When the current outage of the subscription began (logged once), or undefined while it works. */
  #lostAt: number | undefined;
  /** When the unanswered PING was sent (performance.now()), or undefined. */
  #pingSentAt: number | undefined;
  #pinger: NodeJS.Timeout | undefined;
  /** When a message last arrived (performance.now()). */
  #heardAt = 0;
  #restart: NodeJS.Timeout | undefined;
  #refusalLogged = false;

  /**
   * A subscription to `engine`'s change channel: `onMessage` gets every message; `onSubscribed` is called each
   * time the subscription is (re)made, when messages may have been lost.
   */
  constructor(engine: RedisEngine, onMessage: (message: string) => void, onSubscribed: () => void) {
    const { settings, connection, keys } = engine;
    this.settings = {
      make: engine.makeSubscriber,
      channel: keys.channel,
      where: connection.where,
      logger: settings.logger,
      watchPollMs: settings.watchPollMs,
      deadAfterMs: Math.max(DEAD_CONNECTION_MIN_MS, DEAD_CONNECTION_TIMEOUTS * settings.commandTimeoutMs),
      onMessage: (message) => {
        // Whatever arrives after a PING was sent comes from a connection that works: the answer is queued
        // behind it (a burst of messages, a process busy reading them), not lost.
        this.#heardAt = performance.now();
        onMessage(message);
      },
      onSubscribed,
    };
  }

  /** Connect and subscribe; from here on the subscription keeps itself alive until close(). */
  start(): void {
    this.#connect();
    this.#pinger = setInterval(() => this.#ping(), SUBSCRIBER_PING_MS);
    this.#pinger.unref();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#pinger);
    clearTimeout(this.#restart);
    if (this.#client !== undefined) destroyForGood(this.#client);
    this.#client = undefined;
  }

  #connect(): void {
    const client = this.settings.make();
    this.#client = client;
    this.#pingSentAt = undefined;
    this.#heardAt = 0; // what the connection before it delivered says nothing of this one
    const current = (): boolean => this.#client === client && !this.#closed;
    client.on('error', (error: Error) => {
      if (current()) this.#lost(error.message);
    });
    client.on('reconnecting', () => {
      if (!current()) return;
      this.#pingSentAt = undefined; // a PING sent before the drop is not an answer owed by the new connection
      this.#lost('the connection closed; reconnecting');
    });
    // A client that does not reconnect by itself (the relay's) closes for good: make a new one.
    const closed = (): void => {
      if (current() && !client.isOpen) this.#replace('the connection closed');
    };
    client.on('terminated', closed);
    client.on('end', () => queueMicrotask(closed));
    // The client subscribes again by itself after it reconnects; messages sent meanwhile are lost.
    client.on('ready', () => {
      if (!current()) return;
      this.#back();
      this.settings.onSubscribed();
    });
    const connected = client.isOpen ? Promise.resolve() : client.connect();
    connected
      .then(async () => {
        if (!current()) {
          destroyForGood(client); // closed or replaced while this connection was being made
          return;
        }
        await client.subscribe?.(this.settings.channel, this.settings.onMessage);
        if (current()) this.settings.onSubscribed();
      })
      .catch((error: unknown) => {
        if (!current()) return;
        const message = error instanceof Error ? error.message : String(error);
        if (/NOPERM/i.test(message)) {
          this.#refused(message);
          this.#retryLater(this.settings.watchPollMs); // the operator may grant it: try again at each poll
          return;
        }
        // Not connected or not subscribed (the client gave up, or the subscription failed on the way): start over.
        this.#replace(message);
      });
  }

  /** Ask the subscriber whether it answers; one that has left a PING unanswered too long is replaced. */
  #ping(): void {
    const client = this.#client;
    if (client === undefined || this.#closed || !client.isReady) return;
    if (this.#pingSentAt !== undefined) {
      // Measured from the PING, or from the last message if one came since: a connection that delivers works,
      // its answer queued behind a burst it is still reading.
      const waited = performance.now() - Math.max(this.#pingSentAt, this.#heardAt);
      if (waited > this.settings.deadAfterMs) this.#replace(`a PING went unanswered, and nothing else came, for ${Math.round(waited)} ms on a connection that looked open`);
      return;
    }
    const sentAt = performance.now();
    this.#pingSentAt = sentAt;
    client.sendCommand(['PING']).then(
      () => {
        if (this.#pingSentAt === sentAt) this.#pingSentAt = undefined;
      },
      () => {
        if (this.#pingSentAt === sentAt) this.#pingSentAt = undefined; // a drop: reported by the client's own events
      },
    );
  }

  /** Drop the subscriber and make a new one after a random pause (so that a fleet does not reconnect at once). */
  #replace(why: string): void {
    this.#lost(why);
    this.#retryLater(Math.random() * RECONNECT_MAX_MS);
  }

  /** Drop the subscriber and make a new one after `ms`. */
  #retryLater(ms: number): void {
    const old = this.#client;
    this.#client = undefined;
    if (old !== undefined) destroyForGood(old);
    clearTimeout(this.#restart);
    this.#restart = setTimeout(() => {
      if (!this.#closed && this.#client === undefined) this.#connect();
    }, ms);
    this.#restart.unref();
  }

  #lost(why: string): void {
    if (this.#lostAt !== undefined || this.#closed) return;
    this.#lostAt = Date.now();
    this.settings.logger.error(
      `generation-sync: lost the change subscription to Redis${this.settings.where} (${why}). ` +
        `Reconnecting; until then watchers hear of changes only every watchPollMs (${this.settings.watchPollMs} ms).`,
    );
  }

  #back(): void {
    if (this.#lostAt === undefined) return;
    const downMs = Date.now() - this.#lostAt;
    this.#lostAt = undefined;
    (this.settings.logger.info ?? this.settings.logger.warn).call(this.settings.logger, `generation-sync: the change subscription to Redis works again after ${downMs} ms.`);
  }

  /** The server refuses the subscription: say once what permission is missing; watchers fall back to the poll. */
  #refused(message: string): void {
    if (this.#refusalLogged) return;
    this.#refusalLogged = true;
    this.settings.logger.error(
      `generation-sync: the Redis user cannot subscribe to the channel "${this.settings.channel}" (${message.split('\n')[0]}). ` +
        `Watchers in this process learn of changes only every watchPollMs (${this.settings.watchPollMs} ms). ` +
        `Grant it: ACL SETUSER <user> +subscribe &${this.settings.channel}`,
    );
  }
}

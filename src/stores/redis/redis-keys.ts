/**
 * The four calls djblets makes of its cache, over Redis: read a key,
 * create it if absent, increment it if present, clear it. Each change is
 * one atomic script that also announces it on the store's channel.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';

import type { AsyncKeyCalls } from '../../store/binding';
import type { RedisConnection } from './redis-connection';
import { checkReply, parseStored, SCRIPTS } from './redis-scripts';

export class RedisKeys implements AsyncKeyCalls {
  constructor(
    private readonly connection: RedisConnection,
    /** Prefix of every key, `:` included. */
    readonly namespace: string,
    /** The channel changes are announced on. */
    readonly channel: string,
  ) {}

  /** The live generation of `key`, or null when absent. */
  async generationOf(key: string): Promise<number | null> {
    const value = await this.storedOf(key);
    return value !== null && value >= 0 ? value : null;
  }

  /** What Redis holds for `key`: a generation, a tombstone `-(g + 1)` after a clear, or null when absent. */
  storedOf(key: string): Promise<number | null> {
    return this.storedAt(this.redisKey(key));
  }

  /** What Redis holds at `redisKey`, a key under the namespace; a value the store did not write is refused. */
  async storedAt(redisKey: string): Promise<number | null> {
    const raw = (await this.connection.command(['GET', redisKey])) as string | null;
    return raw === null ? null : parseStored(raw, redisKey);
  }

  async fetchOrCreate(key: string, _now: number, expirationSecs: number): Promise<number> {
    // `now` is not used: the creating script seeds a new generation from the server's own clock.
    const reply = await this.connection.script(SCRIPTS.fetchOrCreate, this.redisKey(key), [String(expirationSecs), this.channel]);
    return checkReply(reply, this.redisKey(key));
  }

  /** The incremented generation, or null (nothing changed) when the key is absent. */
  async increment(key: string): Promise<number | null> {
    const reply = await this.connection.script(SCRIPTS.increment, this.redisKey(key), [this.channel]);
    return reply === null ? null : checkReply(reply, this.redisKey(key));
  }

  async delete(key: string): Promise<void> {
    await this.connection.script(SCRIPTS.clear, this.redisKey(key), [this.channel]);
  }

  redisKey(key: string): string {
    return this.namespace + key;
  }

  /** What change messages carry for `key`: the SHA-1 (hex) of its Redis key, as the scripts' redis.sha1hex() gives it. */
  digestOf(key: string): string {
    return createHash('sha1').update(this.redisKey(key)).digest('hex');
  }
}

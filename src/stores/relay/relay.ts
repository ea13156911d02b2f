/**
 * The relay: the one process of a host that keeps the host's shared-memory
 * store in step with Redis. It holds the host's only Redis connections
 * (one for commands, one subscriber), forwards what processes of the host
 * change, and writes into the host's file what other hosts change.
 *
 * For every key it remembers the *base*: the Redis value that the local
 * value last took in. The local value is then the base plus the changes
 * made on this host and not yet forwarded, so forwarding is "add the
 * difference" (one script that also announces the change), and taking in a
 * change from Redis is "the new Redis value plus what is still pending
 * here". Local values only ever move up.
 *
 * The bases are written to a file beside the store (every
 * {@link STATE_WRITE_MS}, and when the relay stops), so that the next
 * relay after a crash knows what is pending. A base written late is only
 * older: the next relay then forwards some changes twice, which other hosts
 * see as one more change, never as one less. A key whose base is unknown
 * (never relayed, or taken in during an outage) is forwarded as "changed"
 * if it lives here: one extra change for the other hosts, never a lost one.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { readFileSync, renameSync, writeFileSync } from 'node:fs';

import type { Logger } from '../../store/logger';
import { checkReply, SCRIPTS } from '../redis/redis-scripts';
import { redisInternalsOf, type RedisInternals, type RedisStore } from '../redis/redis-store';
import type { SharedMemoryBinding } from '../shm/shm-binding';
import type { SharedMemoryStore } from '../shm/shm-store';

/**
 * How often the relay writes the bases of keys it changed, at most, in
 * milliseconds; one more for every ten keys it knows, so that the writes
 * stay small beside the work. A relay killed mid-stream lost at most this much of its bases.
 */
export const STATE_WRITE_MS = 10;

/** How many times taking in one reply may find the local value changed under it before the key is synced again instead. */
const APPLY_ATTEMPTS = 1000;

const STATE_VERSION = 1;

/** What the relay knows of one key. */
interface KeyState {
  readonly binding: SharedMemoryBinding;
  /** The Redis value the local value last took in; null: Redis has no live value; undefined: not known. */
  base: number | null | undefined;
  running: boolean;
  again: boolean;
  /** A change from Redis was heard while a sync ran: the next round reads Redis even if nothing is pending here. */
  reread: boolean;
  readonly stop: Array<() => void>;
}

export interface RelaySettings {
  /** The state file (the bases), beside the store. */
  readonly statePath: string;
  readonly mode: number;
  readonly expirationSecs: number;
  /** How often new keys in the local store are looked for. */
  readonly scanIntervalMs: number;
  readonly logger: Logger;
}

/** What a relay counts, for tests, benchmarks and `doctor`. */
export interface RelayCounters {
  /** Scripts sent to Redis. */
  forwarded: number;
  /** Changes from Redis written into the local store. */
  takenIn: number;
  /** Outages seen. */
  outages: number;
}

export class Relay {
  readonly #keys = new Map<string, KeyState>();
  readonly #redis: RedisInternals;
  #scanTimer: NodeJS.Timeout | undefined;
  #stateTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Bumped by every outage: a reply sent before it must not be taken in after it. */
  #epoch = 0;
  #stateProblemLogged = false;
  readonly counters: RelayCounters = { forwarded: 0, takenIn: 0, outages: 0 };

  constructor(
    private readonly shm: SharedMemoryStore,
    private readonly redisStore: RedisStore,
    private readonly settings: RelaySettings,
  ) {
    this.#redis = redisInternalsOf(redisStore);
  }

  get redis(): RedisStore {
    return this.redisStore;
  }

  /** Take over: read the bases the last relay left, look at every key, and keep watching. */
  start(): void {
    const bases = this.#readState();
    this.#redis.connection.onLost(() => this.#outage());
    this.#redis.connection.onReady(() => this.#syncAll());
    this.#scan(bases);
    if (!this.#redis.connection.up) this.#outage();
    this.#scanTimer = setInterval(() => this.#scan(), this.settings.scanIntervalMs);
    this.#scanTimer.unref();
  }

  /** Stop relaying; the bases are written now. Redis is closed in the background (bounded by its command timeout). */
  stop(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    this.#stopped = true;
    clearInterval(this.#scanTimer);
    clearTimeout(this.#stateTimer);
    this.#stateTimer = undefined;
    for (const state of this.#keys.values()) for (const stop of state.stop) stop();
    this.#writeState();
    return this.redisStore.close().catch(() => undefined);
  }

  /** Wait until no key has a sync running (for tests and `flush()`), at most `timeoutMs`. */
  async settled(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let busy = false;
      for (const state of this.#keys.values()) busy ||= state.running || !this.#inStep(state);
      if (!busy) return true;
      if (Date.now() >= deadline || this.#stopped) return false;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Find keys the local store holds that the relay does not know yet, and watch them. */
  #scan(bases?: ReadonlyMap<string, number | null>): void {
    if (this.#stopped || this.shm.closed) return;
    let entries;
    try {
      entries = this.shm.entries();
    } catch {
      return; // the file is being replaced: the next scan looks again
    }
    for (const entry of entries) {
      if (this.#keys.has(entry.key) || entry.keyTruncated) continue;
      this.#adopt(entry.key, bases?.get(entry.key));
    }
  }

  #adopt(key: string, base: number | null | undefined): void {
    const binding = this.shm.bind(key) as SharedMemoryBinding;
    const state: KeyState = { binding, base, running: false, again: false, reread: false, stop: [] };
    this.#keys.set(key, state);
    try {
      state.stop.push(this.shm.watch(key, undefined, () => this.#localChanged(state)));
      state.stop.push(this.redisStore.watch(key, undefined, (generation) => this.#remoteChanged(state, generation)));
    } catch {
      // The store closed under us: stop() follows.
    }
    if (!this.#inStep(state)) this.#sync(state);
  }

  /** Whether the local value is what the base says, with nothing pending. */
  #inStep(state: KeyState): boolean {
    const { generation } = this.#local(state);
    return state.base !== undefined && generation === state.base;
  }

  #local(state: KeyState): { generation: number | null; highest: number; untouched: boolean } {
    try {
      return state.binding.snapshot();
    } catch {
      return { generation: null, highest: 0, untouched: false };
    }
  }

  /**
   * Write into the local file (see SharedMemoryBinding.replace); false, changing nothing, when the file
   * refuses just now (replaced under us, full, its lock stuck): the key is synced again later. Called from
   * watch listeners and timers, so nothing may be thrown from here into the host.
   */
  #replace(state: KeyState, expected: number | null, next: number | null): boolean {
    try {
      return state.binding.replace(expected, next);
    } catch {
      return false;
    }
  }

  #localChanged(state: KeyState): void {
    if (!this.#inStep(state)) this.#sync(state);
  }

  /** A change from Redis (a message, or a re-read after a reconnect or on the poll). */
  #remoteChanged(state: KeyState, generation: number | null): void {
    if (this.#stopped) return;
    if (state.running) {
      // Its reply may or may not include this change: read Redis again once it is in.
      state.again = true;
      state.reread = true;
      return;
    }
    const base = state.base;
    const local = this.#local(state);
    if (typeof base === 'number' && generation !== null && generation <= base) return; // our own, or older
    if (generation === null) {
      if (base === null) return;
      if (typeof base === 'number' && local.generation !== null && this.#replace(state, local.generation, null)) {
        this.#took(state, null);
        return;
      }
    } else if (typeof base === 'number' && local.generation !== null && local.generation >= base) {
      if (this.#replace(state, local.generation, generation + (local.generation - base))) {
        this.#took(state, generation);
        return;
      }
    } else if (base === null && local.generation === null && this.#replace(state, null, generation)) {
      this.#took(state, generation);
      return;
    }
    this.#sync(state);
  }

  #took(state: KeyState, base: number | null): void {
    state.base = base;
    this.counters.takenIn++;
    this.#stateChanged();
  }

  /** Bring one key in step, one script at a time; changes meanwhile run it again. Never rejects. */
  #sync(state: KeyState): void {
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    void (async () => {
      try {
        do {
          state.again = false;
          if (this.#stopped || !this.#redis.connection.up) break; // the reconnect syncs every key
          await this.#syncOnce(state);
        } while (state.again && !this.#stopped);
      } catch {
        // Redis failed or timed out: the connection reports the outage, and every key is synced when it is back.
      } finally {
        state.running = false;
      }
    })();
  }

  async #syncOnce(state: KeyState): Promise<void> {
    const epoch = this.#epoch;
    const sent = this.#local(state);
    const base = state.base;
    const reread = state.reread;
    state.reread = false;
    const redisKey = this.#redis.keys.redisKey(state.binding.key);
    let mode: 'add' | 'create' | 'adopt' | 'read';
    let delta = 0;
    if (sent.generation !== null) {
      if (typeof base === 'number' && sent.generation >= base) {
        if (sent.generation === base && !reread) return;
        mode = 'add';
        delta = sent.generation - base;
      } else {
        // Created here and untouched since: a host meeting a key, not a change. Otherwise what changed here
        // since Redis' value was last known is not known: count one change.
        mode = sent.untouched && (base === undefined || base === null) ? 'adopt' : 'create';
      }
    } else if (typeof base === 'number') {
      this.counters.forwarded++;
      await this.#redis.connection.script(SCRIPTS.clear, redisKey, [this.#redis.keys.channel]);
      if (epoch !== this.#epoch || this.#stopped) return;
      state.base = null;
      this.#stateChanged();
      if (this.#local(state).generation !== null) state.again = true;
      return;
    } else if (base === null && !reread) {
      return;
    } else {
      mode = 'read';
    }
    this.counters.forwarded++;
    const reply = await this.#redis.connection.script(SCRIPTS.relaySync, redisKey, [
      mode,
      String(delta),
      String(sent.generation ?? 0),
      String(this.settings.expirationSecs),
      this.#redis.keys.channel,
    ]);
    if (epoch !== this.#epoch || this.#stopped) return;
    const result = reply === null || reply === false ? null : checkReply(reply, redisKey);
    this.#apply(state, sent.generation, result);
  }

  /** Take in Redis' answer to a sync sent when the local value was `sent`. */
  #apply(state: KeyState, sent: number | null, result: number | null): void {
    for (let attempt = 0; attempt < APPLY_ATTEMPTS; attempt++) {
      const now = this.#local(state);
      if (result === null) {
        // Redis has no live value (cleared, expired, flushed): the host goes absent, and is forwarded when re-created.
        if (now.generation === null || this.#replace(state, now.generation, null)) {
          state.base = null;
          if (sent === null && now.generation !== null) state.again = true;
          break;
        }
        continue;
      }
      if (now.generation === null) {
        if (sent !== null) {
          // Cleared here meanwhile: the next round forwards the clear.
          state.base = result;
          state.again = true;
        } else if (this.#replace(state, null, result)) {
          state.base = result;
        } else {
          // The key was higher here once than Redis is now: it is forwarded (above that) when re-created.
          state.base = null;
        }
        break;
      }
      if (sent === null || now.generation < sent) {
        // Created here meanwhile, or the local file lost its value: what changed here is not known.
        state.base = undefined;
        state.again = true;
        break;
      }
      const target = result + (now.generation - sent);
      if (target === now.generation || this.#replace(state, now.generation, target)) {
        state.base = result;
        break;
      }
    }
    if (!this.#inStep(state)) state.again = true;
    this.#stateChanged();
  }

  /** Redis is unreachable: what other hosts change is unknown, so every key here reads as expired, once. */
  #outage(): void {
    if (this.#stopped) return;
    this.#epoch++;
    this.counters.outages++;
    for (const state of this.#keys.values()) {
      const { generation } = this.#local(state);
      state.base = undefined;
      if (generation !== null) this.#replace(state, generation, null);
    }
    this.#stateChanged();
  }

  /**
   * Connected again: read every key, in step or not. Redis may have lost data or come back from an older
   * snapshot: each read also raises Redis to this host's value (the script's floor), so that the next change
   * anywhere lands above every value a host holds.
   */
  #syncAll(): void {
    for (const state of this.#keys.values()) {
      state.reread = true;
      this.#sync(state);
    }
  }

  #stateChanged(): void {
    if (this.#stateTimer !== undefined || this.#stopped) return;
    this.#stateTimer = setTimeout(
      () => {
        this.#stateTimer = undefined;
        this.#writeState();
      },
      Math.max(STATE_WRITE_MS, Math.ceil(this.#keys.size / 10)),
    );
    this.#stateTimer.unref();
  }

  /** The bases the last relay wrote, if they are for this Redis namespace. */
  #readState(): Map<string, number | null> {
    const bases = new Map<string, number | null>();
    let text: string;
    try {
      text = readFileSync(this.settings.statePath, 'utf8');
    } catch {
      return bases; // none yet: every key's base is unknown
    }
    try {
      const parsed = JSON.parse(text) as { version?: unknown; namespace?: unknown; bases?: unknown };
      if (parsed.version !== STATE_VERSION || parsed.namespace !== this.#redis.keys.namespace) return bases;
      if (typeof parsed.bases !== 'object' || parsed.bases === null) return bases;
      for (const [key, base] of Object.entries(parsed.bases as Record<string, unknown>)) {
        if (base === null || (typeof base === 'number' && Number.isSafeInteger(base) && base >= 0)) bases.set(key, base);
      }
    } catch {
      this.#stateProblem(`${this.settings.statePath} is not a relay state file; every key is forwarded as changed once`);
    }
    return bases;
  }

  #writeState(): void {
    const bases: Record<string, number | null> = {};
    for (const [key, state] of this.#keys) if (state.base !== undefined) bases[key] = state.base;
    const text = JSON.stringify({ version: STATE_VERSION, namespace: this.#redis.keys.namespace, bases });
    const temporary = `${this.settings.statePath}.${process.pid}.tmp`;
    try {
      writeFileSync(temporary, text, { mode: this.settings.mode });
      renameSync(temporary, this.settings.statePath);
    } catch (error) {
      this.#stateProblem(`cannot write ${this.settings.statePath} (${(error as Error).message}); a relay taking over forwards every key as changed once`);
    }
  }

  #stateProblem(message: string): void {
    if (this.#stateProblemLogged) return;
    this.#stateProblemLogged = true;
    this.settings.logger.warn(`generation-sync: relay: ${message}.`);
  }
}

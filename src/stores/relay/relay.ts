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
 * here". Local values only ever move up. (sync.ts decides each step.)
 *
 * Its work grows with what changes, not with how many keys there are:
 *
 * - A key's word carries the RELAYED flag once the relay has forwarded it;
 *   the next process to change the key clears the flag, sets the key's bit
 *   in the file's dirty map and wakes the relay if it sleeps (see
 *   src/stores/shm/replica.ts). Later changes are plain atomic adds until
 *   the relay has taken the key, forwarded it and set the flag again.
 * - Changes from Redis arrive as messages carrying the new value, found by
 *   the digest they name.
 * - Everything is read again only when it has to be: when the relay starts
 *   (a takeover: whatever happened while no relay ran), when Redis or the
 *   subscription comes back, and when the store moves to another file.
 *   The relay reports itself connected only once such a pass is done.
 * - Work is done in slices of {@link SLICE} keys, and at most
 *   {@link MAX_IN_FLIGHT} scripts are in flight: a burst of 100,000 keys
 *   never holds the event loop more than a few milliseconds at a time.
 * - A script that fails is retried, with a backoff up to
 *   {@link RETRY_MAX_MS}, until it lands; each kind of failure is logged
 *   once and counted.
 *
 * The bases are written to a file beside the store (every
 * {@link STATE_WRITE_MS}, and when the relay stops), so that the next
 * relay after a crash knows what is pending. A base written late is only
 * older: the next relay then forwards some changes twice, which other hosts
 * see as one more change, never as one less. A key whose base is unknown
 * (never relayed, or taken in during an outage) is forwarded as "changed"
 * if it lives here: one extra change for the other hosts, never a lost one.
 *
 * Each relay holds a term in the host's file, above every earlier relay's,
 * and writes only while the term is its own: a relay that lost its place
 * (its lock file removed, a frozen relay replaced) stops at its next write.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { readFileSync, renameSync, writeFileSync } from 'node:fs';

import { StoreFormatError } from '../../store/errors';
import type { Logger } from '../../store/logger';
import { CommandTimeout, redisErrorReply } from '../redis/redis-connection';
import type { RedisEngine } from '../redis/redis-engine';
import { checkReply, SCRIPTS } from '../redis/redis-scripts';
import { Subscription } from '../redis/redis-subscription';
import type { Replica } from '../shm/replica';
import type { SharedMemoryBinding } from '../shm/shm-binding';
import { decide, RELAY_SCRIPT, settle, type Base, type Local } from './sync';

/**
 * How often the relay writes the bases of keys it changed, at most, in
 * milliseconds; one more for every ten keys it knows, so that the writes
 * stay small beside the work. A relay killed mid-stream lost at most this much of its bases.
 */
export const STATE_WRITE_MS = 10;

/** Keys handled per turn of the event loop (taking changes, reading every key again, an outage). */
export const SLICE = 500;

/** Scripts in flight at once. */
export const MAX_IN_FLIGHT = 256;

/** How often the relay says it is alive (a counter in the host's file; see RelayStore's takeover of a frozen relay). */
export const BEAT_MS = 100;

/** Backoff of a key whose script failed: doubling from RETRY_FIRST_MS to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 50;
export const RETRY_MAX_MS = 5000;

/** How many times taking in one reply may find the local value changed under it before the key is synced again instead. */
const APPLY_ATTEMPTS = 1000;

/**
 * A change message carrying a value further ahead of the server's clock than this (in microseconds) was not
 * made by a script of ours: every value a script writes is at most the clock plus the changes made faster
 * than the clock runs. It is ignored (and counted). A value ahead of the clock, but nearer, is taken in and
 * read again; a value at or below the clock is taken in as it is (one someone else published costs the
 * hosts one reload: the next change lands above it, on the clock). Before the relay has read the server's
 * clock, a message only has the key read.
 */
export const PLAUSIBLE_AHEAD_US = 60_000_000;

/** How often the server's clock is read (for the plausibility of change messages). */
const CLOCK_CHECK_MS = 30_000;

const STATE_VERSION = 1;

/** What the relay knows of one key. */
interface KeyState {
  readonly key: string;
  readonly binding: SharedMemoryBinding;
  /** The SHA-1 (hex) of its Redis key, which change messages carry. */
  readonly digest: string;
  base: Base;
  /** A script for the key is on its way. */
  busy: boolean;
  /** In the queue of keys to sync. */
  queued: boolean;
  /** Sync again once the current script is in. */
  again: boolean;
  /** Read Redis even if nothing is pending here. */
  reread: boolean;
  /** Failed scripts in a row (for the backoff); 0 when the last one landed. */
  failures: number;
  /** Waiting for its backoff to end. */
  delayed: boolean;
  /** Part of the read-everything pass under way (see #pass). */
  inPass: boolean;
  /**
   * Made absent here by an outage (see #outage), and perhaps still so: once Redis is back, its value is put
   * back unless the host changed or cleared the key meanwhile (SharedMemoryBinding.restore).
   */
  poisoned: boolean;
}

export interface RelaySettings {
  /** The state file (the bases), beside the store. */
  readonly statePath: string;
  readonly mode: number;
  readonly expirationSecs: number;
  readonly logger: Logger;
  /** This relay's term (see Replica.claimTerm). */
  readonly term: number;
  /** The relay found another relay's term in the file: it has stopped writing; its owner must stop it. */
  readonly onDeposed: () => void;
}

/** The relay's work waiting, now. */
export interface RelayBacklog {
  /** Keys changed on the host (or heard changed in Redis) and not sent yet. */
  readonly queued: number;
  /** Scripts sent and not answered yet. */
  readonly inFlight: number;
  /** Keys whose script failed, waiting for their next attempt. */
  readonly retrying: number;
  /** While the relay reads every key again (after a start, a reconnect, a move): keys left to read; null otherwise. */
  readonly reading: number | null;
}

/** What a relay counts, for tests, benchmarks and `doctor`. */
export interface RelayCounters {
  /** Scripts sent to Redis. */
  forwarded: number;
  /** Changes from Redis written into the local store. */
  takenIn: number;
  /** Outages seen. */
  outages: number;
  /** Scripts Redis refused or failed to answer outside an outage (each retried until it lands). */
  failed: number;
  /** Change messages ignored: a value no script of ours could have written. */
  implausible: number;
}

export class Relay {
  readonly #keys = new Map<string, KeyState>();
  readonly #byDigest = new Map<string, KeyState>();
  /** Key states by record number in the file of epoch #recordsEpoch. */
  #byRecord: Array<KeyState | undefined> = [];
  #recordsEpoch = -1;
  readonly #subscription: Subscription;
  #queue: KeyState[] = [];
  #inFlight = 0;
  #pumpScheduled = false;
  /** Records marked changed and not taken yet (taken a slice at a time). */
  #changed: number[] = [];
  #changedScheduled = false;
  /** The read-everything pass: the next record to look at, and how many keys of it are not in step yet. */
  #pass: { next: number; epoch: number; remaining: number } | undefined;
  #passScheduled = false;
  /** Whether a pass completed since the connection (and the subscription) last came back. */
  #inStep = false;
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #delayed = new Set<KeyState>();
  #beatTimer: NodeJS.Timeout | undefined;
  #clockTimer: NodeJS.Timeout | undefined;
  #stateTimer: NodeJS.Timeout | undefined;
  /** Bases changed since the write under way (or scheduled) began. */
  #stateDirty = false;
  /** The server's clock minus this process's, in microseconds, when last read. */
  #clockOffsetUs: number | undefined;
  /** No more work: stopped, or deposed by another relay's term. */
  #stopped = false;
  #closed = false;
  #deposed = false;
  /** Bumped by every outage: a reply sent before it must not be taken in after it. */
  #epoch = 0;
  readonly #logged = new Set<string>();
  #bases: ReadonlyMap<string, Base> = new Map();
  readonly counters: RelayCounters = { forwarded: 0, takenIn: 0, outages: 0, failed: 0, implausible: 0 };

  constructor(
    private readonly replica: Replica,
    private readonly engine: RedisEngine,
    private readonly settings: RelaySettings,
  ) {
    this.#subscription = new Subscription(
      engine,
      (message) => this.#heard(message),
      () => this.#readEverything(), // messages were lost while it was away
    );
  }

  /** Connected to Redis, and every key of the host brought in step with it since the connection last came back. */
  get connected(): boolean {
    return this.#inStep && this.engine.connection.up && !this.#stopped;
  }

  /** The work waiting (see RelayStatus.backlog). */
  get backlog(): RelayBacklog {
    return {
      queued: this.#queue.length + this.#changed.length,
      inFlight: this.#inFlight,
      retrying: this.#delayed.size,
      reading: this.#pass === undefined ? null : this.#pass.remaining + Math.max(0, this.#passRecordsLeft()),
    };
  }

  #passRecordsLeft(): number {
    try {
      return this.#pass === undefined ? 0 : this.replica.recordCount() - this.#pass.next;
    } catch {
      return 0;
    }
  }

  /** Whether this relay still holds its place: not stopped, and its term is the host file's. */
  get holdsPlace(): boolean {
    if (this.#stopped) return false;
    try {
      return this.replica.ownsTerm(this.settings.term);
    } catch {
      return false;
    }
  }

  /**
   * Take over: read the bases the last relay left, listen to the host's changes and to Redis, and connect.
   * Resolves once the first connection attempt settled (connected or not: it keeps trying).
   */
  async start(): Promise<void> {
    this.#bases = this.#readState();
    const connection = this.engine.connection;
    connection.onLost(() => this.#outage());
    connection.onReady(() => this.#readEverything());
    this.replica.onMove(() => this.#moved());
    this.replica.watch(() => this.#takeChanged());
    this.#beatTimer = setInterval(() => this.#beat(), BEAT_MS);
    this.#beatTimer.unref();
    this.#clockTimer = setInterval(() => void this.#readClock(), CLOCK_CHECK_MS);
    this.#clockTimer.unref();
    this.#subscription.start();
    await connection.open(this.engine.settings.connectTimeoutMs);
    if (connection.up) this.#readEverything();
  }

  /** Stop relaying; the bases are written now (unless another relay took the place). Redis is closed in the background. */
  stop(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#stopped = true;
    this.#handBackTaken();
    clearInterval(this.#beatTimer);
    clearInterval(this.#clockTimer);
    clearTimeout(this.#stateTimer);
    clearTimeout(this.#retryTimer);
    this.#stateTimer = undefined;
    this.replica.stopWatching();
    this.#subscription.close();
    if (!this.#deposed && this.replica.ownsTerm(this.settings.term)) this.#writeState();
    return this.engine.connection.close().catch(() => undefined);
  }

  /**
   * Resolve true once every change made on the host before this call is in Redis: each key of the file (found
   * now, created just before or not) is in step with Redis. False after `timeoutMs`, or if the relay stops.
   */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let keys: string[] = [];
    for (let collected = false; !collected; ) {
      keys = [];
      this.replica.follow();
      const epoch = this.replica.epoch;
      const count = this.replica.recordCount();
      for (let record = 0; record < count && epoch === this.replica.epoch; record++) {
        const { key } = this.replica.recordAt(record);
        if (key !== undefined) keys.push(key);
        // A slice at a time: the relay's own work goes on meanwhile.
        if ((record + 1) % (SLICE * 10) === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      collected = epoch === this.replica.epoch; // moved meanwhile: the records are the new file's, collect again
      if (Date.now() >= deadline) return false;
    }
    // A key found settled has every change made before this call in Redis: only the rest are looked at again.
    let next = 0;
    for (;;) {
      if (this.#stopped) return false;
      if (this.connected) {
        while (next < keys.length && this.#settled(this.#keys.get(keys[next] as string))) next++;
        if (next === keys.length) return true;
      }
      if (Date.now() >= deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  #settled(state: KeyState | undefined): boolean {
    return state !== undefined && !state.busy && !state.queued && !state.delayed && this.#inStepNow(state);
  }

  /** Whether the local value is what the base says, with nothing pending. */
  #inStepNow(state: KeyState): boolean {
    return state.base !== undefined && this.#local(state).generation === state.base;
  }

  /** The host's value of the key, and whether the relay waits to hear of its next change (its RELAYED flag). */
  #local(state: KeyState): Local & { readonly armed: boolean; readonly highest: number } {
    try {
      return state.binding.snapshot();
    } catch {
      return { generation: null, untouched: false, armed: false, highest: 0 };
    }
  }

  // Finding keys.

  /** The state of `key`, made (armed, with its saved base) the first time the relay meets it. */
  #state(key: string): KeyState {
    let state = this.#keys.get(key);
    if (state === undefined) {
      const binding = this.replica.bind(key);
      const digest = this.engine.keys.digestOf(key);
      state = { key, binding, digest, base: this.#bases.get(key), busy: false, queued: false, again: false, reread: false, failures: 0, delayed: false, inPass: false, poisoned: false };
      this.#keys.set(key, state);
      this.#byDigest.set(digest, state);
    }
    return state;
  }

  /** The state of record `record` of the file in use, or undefined for a key the relay cannot relay. */
  #stateOfRecord(record: number): KeyState | undefined {
    if (this.#recordsEpoch !== this.replica.epoch) {
      this.#byRecord = [];
      this.#recordsEpoch = this.replica.epoch;
    }
    let state = this.#byRecord[record];
    if (state === undefined) {
      const { key } = this.replica.recordAt(record);
      if (key === undefined) return undefined; // a key longer than the file keeps whole: refused by RelayStore.bind
      state = this.#state(key);
      this.#byRecord[record] = state;
    }
    return state;
  }

  /** The host's processes changed keys: take the records marked dirty, a slice at a time. */
  #takeChanged(): void {
    if (this.#stopped) return;
    try {
      this.replica.follow();
      for (const record of this.replica.changed()) this.#changed.push(record); // (a spread of 100,000 arguments would not do)
    } catch {
      return; // the file is unusable just now: the move that follows reads everything again
    }
    this.#takeChangedSlice();
  }

  #takeChangedSlice(): void {
    this.#changedScheduled = false;
    if (this.#stopped) return;
    const slice = this.#changed.splice(0, SLICE);
    for (const record of slice) {
      const state = this.#stateOfRecord(record);
      if (state !== undefined) this.#enqueue(state, false);
    }
    if (this.#changed.length > 0 && !this.#changedScheduled) {
      this.#changedScheduled = true;
      setImmediate(() => this.#takeChangedSlice());
    }
  }

  /**
   * Read every key of the host again, and Redis' value of each: when the relay starts, when Redis or the
   * subscription comes back, when the store moves to another file. The relay is in step once it is done.
   */
  #readEverything(): void {
    if (this.#stopped || !this.engine.connection.up) return;
    this.#inStep = false;
    void this.#readClock();
    for (const state of this.#keys.values()) state.inPass = false;
    try {
      this.replica.follow();
    } catch {
      return; // no usable file just now: the move that follows starts this again
    }
    this.#pass = { next: 0, epoch: this.replica.epoch, remaining: 0 };
    this.#schedulePassSlice();
  }

  #schedulePassSlice(): void {
    if (this.#passScheduled) return;
    this.#passScheduled = true;
    setImmediate(() => {
      this.#passScheduled = false;
      this.#passSlice();
    });
  }

  #passSlice(): void {
    const pass = this.#pass;
    if (pass === undefined || this.#stopped) return;
    if (pass.epoch !== this.replica.epoch) {
      pass.next = 0; // moved meanwhile: start over on the new file
      pass.epoch = this.replica.epoch;
    }
    let count: number;
    try {
      count = this.replica.recordCount();
    } catch {
      this.#pass = undefined;
      return;
    }
    const end = Math.min(count, pass.next + SLICE);
    for (let record = pass.next; record < end; record++) {
      const state = this.#stateOfRecord(record);
      if (state === undefined || state.inPass) continue;
      state.inPass = true;
      pass.remaining++;
      this.#enqueue(state, true);
    }
    pass.next = end;
    if (end < count) this.#schedulePassSlice();
    else this.#passEnded();
  }

  /** A key of the pass was synced (or could not be, and is retried): the pass ends when none is left. */
  #passed(state: KeyState): void {
    if (!state.inPass) return;
    state.inPass = false;
    const pass = this.#pass;
    if (pass === undefined) return;
    pass.remaining--;
    this.#passEnded();
  }

  #passEnded(): void {
    const pass = this.#pass;
    if (pass === undefined || pass.remaining > 0) return;
    try {
      if (pass.next < this.replica.recordCount() || pass.epoch !== this.replica.epoch) {
        // Keys were created (or the store moved) since the last slice: read them too before the pass ends.
        this.#schedulePassSlice();
        return;
      }
    } catch {
      return;
    }
    this.#pass = undefined;
    this.#inStep = this.engine.connection.up;
  }

  // Syncing.

  #enqueue(state: KeyState, reread: boolean): void {
    if (reread) state.reread = true;
    if (state.busy) {
      state.again = true;
      return;
    }
    if (state.delayed) return;
    if (!state.queued) {
      state.queued = true;
      this.#queue.push(state);
    }
    this.#schedulePump(); // also for a key queued during an outage: the queue waits for the connection
  }

  #schedulePump(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /** Start syncs while fewer than MAX_IN_FLIGHT are on their way, at most a slice per turn of the event loop. */
  #pump(): void {
    let started = 0;
    while (this.#inFlight < MAX_IN_FLIGHT && this.#queue.length > 0 && !this.#stopped && this.engine.connection.up) {
      if (started++ >= SLICE) {
        setImmediate(() => this.#pump());
        return;
      }
      const state = this.#queue.shift() as KeyState;
      state.queued = false;
      this.#sync(state);
    }
  }

  /** Bring one key in step, one script at a time; changes meanwhile run it again. Never rejects. */
  #sync(state: KeyState): void {
    state.busy = true;
    this.#inFlight++;
    void (async () => {
      let failed = false;
      try {
        do {
          state.again = false;
          if (this.#stopped || !this.engine.connection.up) break; // the reconnect reads everything
          await this.#syncOnce(state);
        } while (state.again && !this.#stopped);
        state.failures = 0;
      } catch (error) {
        failed = true;
        this.#failed(state, error);
      } finally {
        state.busy = false;
        this.#inFlight--;
        if (!failed) this.#armAndCheck(state);
        // A key that failed is retried until it lands (and was logged): it does not hold the pass up.
        this.#passed(state);
        this.#schedulePump();
      }
    })();
  }

  /** Ask to hear of the key's next change, then look once more: a change made before the flag was set is not missed. */
  #armAndCheck(state: KeyState): void {
    if (this.#stopped) {
      this.#handBack(state); // not armed again by this relay: the one in its place takes the key
      return;
    }
    try {
      this.replica.arm(state.binding);
    } catch {
      return; // the file is being replaced: the move reads everything again
    }
    if (!this.#inStepNow(state) && this.engine.connection.up) this.#enqueue(state, false);
  }

  async #syncOnce(state: KeyState): Promise<void> {
    const epoch = this.#epoch;
    // Only while this relay holds its place: a relay that was frozen and replaced, resuming, must not forward
    // again what the relay in its place has forwarded (one header word; see Replica.ownsTerm).
    if (!this.#holdsTerm()) return;
    const sent = this.#local(state);
    if (sent.generation !== null || !sent.armed) state.poisoned = false;
    // Absent with the RELAYED flag still set, made so by this relay's outage, or with a base that is a value or
    // not known: a relay's outage mark (this one's, or a relay's that died since: a process clearing the key
    // takes the flag). Nothing on the host changed the key since: it is synced as holding the value it had,
    // and that is put back (SharedMemoryBinding.restore). With no base known (a key created just before the
    // outage, whose relay died in it without forwarding it), that is a change forwarded: taken for a key absent
    // in Redis too, it would stay absent for good, its creation and bumps lost. (A key cleared here and armed
    // by a relay that died before writing its base is made again: one change more, never one less.) Only a
    // base of null, Redis known to hold no live value, leaves an absent key to the plain read below.
    if (sent.generation === null && sent.armed && (state.poisoned || state.base !== null)) {
      await this.#syncMarked(state, sent.highest, epoch);
      return;
    }
    const step = decide(state.base, sent, state.reread);
    state.reread = false;
    if (step.kind === 'none') return;
    const redisKey = this.engine.keys.redisKey(state.key);
    this.counters.forwarded++;
    if (step.kind === 'clear') {
      await this.engine.connection.script(SCRIPTS.clear, redisKey, [this.engine.keys.channel]);
      if (this.#outdated(state, epoch)) return;
      state.base = null;
      this.#stateChanged();
      if (this.#local(state).generation !== null) state.again = true;
      return;
    }
    const reply = await this.engine.connection.script(RELAY_SCRIPT, redisKey, [
      step.mode,
      String(step.delta),
      String(sent.generation ?? 0),
      String(this.settings.expirationSecs),
      this.engine.keys.channel,
    ]);
    if (this.#outdated(state, epoch)) return;
    this.#apply(state, sent.generation, reply === null || reply === false ? null : checkReply(reply, redisKey));
  }

  /**
   * A key an outage made absent, untouched here since, that held `held`: forward what was pending when the
   * outage began (held above the base), read Redis' value, and put that back.
   */
  async #syncMarked(state: KeyState, held: number, epoch: number): Promise<void> {
    state.reread = false;
    const step = decide(state.base, { generation: held, untouched: false }, true);
    if (step.kind !== 'script') return; // (never: a present value with a reread always takes a script)
    const redisKey = this.engine.keys.redisKey(state.key);
    this.counters.forwarded++;
    const reply = await this.engine.connection.script(RELAY_SCRIPT, redisKey, [
      step.mode,
      String(step.delta),
      String(held),
      String(this.settings.expirationSecs),
      this.engine.keys.channel,
    ]);
    if (this.#outdated(state, epoch)) return;
    const result = reply === null || reply === false ? null : checkReply(reply, redisKey);
    if (result === null) {
      // Redis has no live value (cleared, expired or flushed meanwhile): the key stays absent here too.
      state.poisoned = false;
      state.base = null;
    } else if (this.#restored(state, result)) {
      state.poisoned = false;
      state.base = result;
      this.counters.takenIn++;
    } else {
      // The host changed the key meanwhile, or a process that died mid-bump raised what it may be made again
      // above: look again.
      state.again = true;
    }
    this.#stateChanged();
  }

  /** Whether this relay's term is still the file's; if not, it stops (see #lostPlace). */
  #holdsTerm(): boolean {
    try {
      if (this.replica.ownsTerm(this.settings.term)) return true;
    } catch {
      return true; // the file is being replaced: the write that follows is refused if need be
    }
    this.#lostPlace();
    return false;
  }

  /** SharedMemoryBinding.restore, only while this relay's term is the file's. */
  #restored(state: KeyState, value: number): boolean {
    try {
      if (!this.replica.ownsTerm(this.settings.term)) {
        this.#lostPlace();
        return false;
      }
      return state.binding.restore(value);
    } catch {
      return false;
    }
  }

  /** An answer sent before an outage is not taken in after it: the key is read again instead. */
  #outdated(state: KeyState, epoch: number): boolean {
    if (this.#stopped) return true;
    if (epoch === this.#epoch) return false;
    state.reread = true;
    state.again = true;
    return true;
  }

  /** Take in Redis' answer to a step sent when the local value was `sent`. */
  #apply(state: KeyState, sent: number | null, result: number | null): void {
    for (let attempt = 0; attempt < APPLY_ATTEMPTS; attempt++) {
      const now = this.#local(state).generation;
      const outcome = settle(sent, result, now);
      if (outcome.write === undefined) {
        state.base = outcome.base;
        if (outcome.again) state.again = true;
        break;
      }
      if (this.#write(state, now, outcome.write)) {
        state.base = outcome.base;
        if (outcome.again) state.again = true;
        if (outcome.write !== null) this.counters.takenIn++;
        break;
      }
      if (outcome.refused !== undefined && this.#local(state).generation === now) {
        state.base = outcome.refused.base;
        if (outcome.refused.again) state.again = true;
        break;
      }
    }
    if (!this.#inStepNow(state)) state.again = true;
    this.#stateChanged();
  }

  /**
   * Write into the local file (see SharedMemoryBinding.replace), only while this relay's term is the file's;
   * false, changing nothing, when the file refuses just now (replaced under us, full, its lock stuck): the
   * key is synced again later. Called from listeners and timers, so nothing may be thrown into the host.
   */
  #write(state: KeyState, expected: number | null, next: number | null): boolean {
    try {
      if (!this.replica.ownsTerm(this.settings.term)) {
        this.#lostPlace();
        return false;
      }
      return state.binding.replace(expected, next);
    } catch {
      return false;
    }
  }

  /**
   * Another relay took over (a higher term in the file): stop writing at once, hand what this one took from
   * the host and did not finish back to it, and let the owner stop this one.
   */
  #lostPlace(): void {
    if (this.#deposed) return;
    this.#deposed = true;
    this.#stopped = true;
    this.#logOnce('deposed', 'warn', 'another process took over as the relay of this host; this one stops');
    this.#handBackTaken();
    queueMicrotask(() => this.settings.onDeposed());
  }

  /**
   * This relay stops (deposed, or its process closes the store or lost the election): changes it took from
   * the dirty map and did not forward (and keys a script is on its way for, which it will not arm again)
   * are marked changed again, for the relay in its place. The processes that made them told this one only.
   */
  #handBackTaken(): void {
    const taken = new Set<KeyState>([...this.#queue, ...this.#delayed]);
    for (const state of this.#keys.values()) if (state.busy) taken.add(state);
    for (const record of this.#changed) {
      const state = this.#byRecord[record];
      if (state !== undefined) taken.add(state);
      else this.#handBackRecord(record);
    }
    this.#changed = [];
    for (const state of taken) this.#handBack(state);
  }

  /** Mark a key changed for the relay in this one's place (see #lostPlace). */
  #handBack(state: KeyState): void {
    try {
      this.replica.handBack(state.binding);
    } catch {
      // the file is being replaced: the new relay reads everything on the new one
    }
  }

  #handBackRecord(record: number): void {
    try {
      const { key } = this.replica.recordAt(record);
      if (key !== undefined) this.replica.handBack(this.replica.bind(key));
    } catch {
      // as above
    }
  }

  /** A script failed. An outage is the connection's to report (and the reconnect reads everything); anything else is retried after a backoff. */
  #failed(state: KeyState, error: unknown): void {
    if (this.#stopped) return;
    if (!this.engine.connection.up) return;
    this.counters.failed++;
    const message = error instanceof Error ? error.message : String(error);
    const kind = error instanceof StoreFormatError ? `refused:${error.code}` : failureKind(error);
    this.#logOnce(
      kind,
      'error',
      `Redis refused or failed a change of "${state.key}" (${message}); it is tried again until it lands (each kind of failure is logged once; see relayStatus().counters)`,
    );
    state.failures++;
    state.delayed = true;
    state.reread = true;
    this.#delayed.add(state);
    const wait = Math.min(RETRY_FIRST_MS * 2 ** Math.min(state.failures - 1, 16), RETRY_MAX_MS) * (0.5 + Math.random() / 2);
    if (this.#retryTimer === undefined) {
      this.#retryTimer = setTimeout(() => this.#retryDelayed(), wait);
      this.#retryTimer.unref();
    }
  }

  #retryDelayed(): void {
    this.#retryTimer = undefined;
    const due = [...this.#delayed];
    this.#delayed.clear();
    for (const state of due) {
      state.delayed = false;
      this.#enqueue(state, true);
    }
  }

  // Changes from Redis.

  /** A change message: "<digest of the Redis key> <stored value>". */
  #heard(message: string): void {
    if (this.#stopped) return;
    const space = message.indexOf(' ');
    if (space < 0) return;
    const state = this.#byDigest.get(message.slice(0, space));
    if (state === undefined) return; // a key this host does not hold
    const stored = Number(message.slice(space + 1));
    if (!Number.isSafeInteger(stored)) return;
    if (state.busy || state.queued || state.delayed) {
      // A script is on its way, or will be: its answer may or may not include this change; read Redis then.
      this.#enqueue(state, true);
      return;
    }
    const base = state.base;
    if (stored < 0) {
      // A clear: rare; read it (a message alone is not proof that Redis has no value).
      if (base !== null) this.#enqueue(state, true);
      return;
    }
    if (typeof base === 'number' && stored <= base) return; // our own, or older
    const serverNow = this.#serverNowUs();
    if (serverNow === undefined) {
      this.#enqueue(state, true); // nothing to judge the value by yet: read the key
      return;
    }
    if (stored > serverNow + PLAUSIBLE_AHEAD_US) {
      this.counters.implausible++;
      this.#logOnce('implausible', 'warn', `ignored a change message for "${state.key}" carrying ${stored}, beyond any value Redis can have written now; someone else publishes on the channel`);
      return;
    }
    const now = this.#local(state).generation;
    if (typeof base === 'number' && now !== null && now >= base && this.#write(state, now, stored + (now - base))) {
      state.base = stored;
      this.counters.takenIn++;
      this.#stateChanged();
      // Ahead of the server's clock: a value a script may have written, or one someone published. Read it
      // again (raising Redis to it if need be, so that every host agrees).
      if (stored > serverNow) this.#enqueue(state, true);
      return;
    }
    this.#enqueue(state, true);
  }

  /** The server's clock now, in microseconds, as last read; undefined before the first reading. */
  #serverNowUs(): number | undefined {
    return this.#clockOffsetUs === undefined ? undefined : Date.now() * 1000 + this.#clockOffsetUs;
  }

  async #readClock(): Promise<void> {
    try {
      const before = Date.now();
      const [seconds, micros] = (await this.engine.connection.command(['TIME'])) as [string, string];
      const localUs = ((before + Date.now()) / 2) * 1000;
      this.#clockOffsetUs = Number(seconds) * 1_000_000 + Number(micros) - localUs;
    } catch {
      // an outage: read again when the connection is back
    }
  }

  // Outages and liveness.

  /**
   * Redis is unreachable: what other hosts change is unknown, so every key here reads as expired, once. The
   * bases stay: when Redis is back, a key nobody here touched meanwhile takes Redis' value again (holders of
   * the value from before are then in step, with nothing to reload), and what the host changed meanwhile is
   * forwarded as any change.
   */
  #outage(): void {
    if (this.#stopped) return;
    this.#epoch++;
    this.#inStep = false;
    this.#pass = undefined;
    this.counters.outages++;
    const states = [...this.#keys.values()];
    for (const state of states) state.inPass = false;
    const poison = (from: number): void => {
      if (this.#stopped || this.engine.connection.up) return; // back already: the pass reads everything
      if (!this.replica.ownsTerm(this.settings.term)) {
        this.#lostPlace();
        return;
      }
      for (const state of states.slice(from, from + SLICE)) {
        try {
          if (state.binding.poison() !== null) state.poisoned = true;
        } catch {
          // the file is being replaced: the move reads everything again
        }
      }
      if (from + SLICE < states.length) setImmediate(() => poison(from + SLICE));
      else this.#stateChanged();
    };
    poison(0);
  }

  /**
   * The store moved to another file: a key an outage made absent is carried over as absent, and whether the
   * host changed it since can no longer be told. Its base is forgotten (it is read, or forwarded as changed
   * once: one more change for the other hosts, never one less), and every key is read again.
   */
  #moved(): void {
    for (const state of this.#keys.values()) {
      if (!state.poisoned) continue;
      state.poisoned = false;
      state.base = undefined;
    }
    this.#readEverything();
  }

  #beat(): void {
    if (this.#stopped) return;
    try {
      if (!this.replica.ownsTerm(this.settings.term)) {
        this.#lostPlace();
        return;
      }
      this.replica.beat();
    } catch {
      // the file is being replaced: the next beat is on the new one
    }
  }

  #logOnce(kind: string, level: 'warn' | 'error', message: string): void {
    if (this.#logged.has(kind)) return;
    this.#logged.add(kind);
    this.settings.logger[level](`generation-sync: relay for ${this.replica.path}: ${message}.`);
  }

  // The bases, on disk.

  #stateChanged(): void {
    this.#stateDirty = true;
    if (this.#stateTimer !== undefined || this.#stopped) return;
    this.#stateDirty = false;
    this.#stateTimer = setTimeout(
      () => void this.#writeStateInSlices(),
      Math.max(STATE_WRITE_MS, Math.ceil(this.#keys.size / 10)),
    );
    this.#stateTimer.unref();
  }

  /** The bases the last relay wrote, if they are for this Redis namespace. */
  #readState(): Map<string, Base> {
    const bases = new Map<string, Base>();
    let text: string;
    try {
      text = readFileSync(this.settings.statePath, 'utf8');
    } catch {
      return bases; // none yet: every key's base is unknown
    }
    try {
      const parsed = JSON.parse(text) as { version?: unknown; namespace?: unknown; bases?: unknown };
      if (parsed.version !== STATE_VERSION || parsed.namespace !== this.engine.keys.namespace) return bases;
      if (typeof parsed.bases !== 'object' || parsed.bases === null) return bases;
      for (const [key, base] of Object.entries(parsed.bases as Record<string, unknown>)) {
        if (base === null || (typeof base === 'number' && Number.isSafeInteger(base) && base >= 0)) bases.set(key, base);
      }
    } catch {
      this.#logOnce('state', 'warn', `${this.settings.statePath} is not a relay state file; every key is forwarded as changed once`);
    }
    return bases;
  }

  /**
   * The periodic write: the text is made a slice of keys per turn of the event loop (100,000 keys would hold
   * it for a tenth of a second at once), then written. A base read earlier than another is only older, which
   * a relay taking over forwards again (see the module's text). #stateTimer stays set meanwhile, so that one
   * write is under way at a time.
   */
  async #writeStateInSlices(): Promise<void> {
    const parts: string[] = [];
    let count = 0;
    for (const [key, state] of this.#keys) {
      if (this.#stopped) break;
      if (state.base !== undefined) parts.push(`${JSON.stringify(key)}:${state.base}`);
      if (++count % (SLICE * 10) === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    this.#stateTimer = undefined;
    // stop() writes the whole state itself, and a deposed relay writes nothing more.
    if (this.#stopped) return;
    this.#writeText(this.#stateText(parts));
    // Bases that changed while this write was made: another write.
    if (this.#stateDirty) this.#stateChanged();
  }

  #stateText(parts: string[]): string {
    return `{"version":${STATE_VERSION},"namespace":${JSON.stringify(this.engine.keys.namespace)},"bases":{${parts.join(',')}}}`;
  }

  #writeState(): void {
    const parts: string[] = [];
    // A key an outage made absent keeps its base: the next relay tells the outage's mark from a clear by the
    // key's RELAYED flag (see #syncOnce).
    for (const [key, state] of this.#keys) if (state.base !== undefined) parts.push(`${JSON.stringify(key)}:${state.base}`);
    this.#writeText(this.#stateText(parts));
  }

  #writeText(text: string): void {
    const temporary = `${this.settings.statePath}.${process.pid}.tmp`;
    try {
      writeFileSync(temporary, text, { mode: this.settings.mode });
      renameSync(temporary, this.settings.statePath);
    } catch (error) {
      this.#logOnce('state-write', 'warn', `cannot write ${this.settings.statePath} (${(error as Error).message}); a relay taking over forwards every key as changed once`);
    }
  }
}

/**
 * What kind of failure a script met, for logging each kind once: Redis late
 * to answer, Redis refusing it (by the error reply's prefix: OOM, NOPERM, …),
 * or anything else. A late answer logged first must not hide a refusal.
 */
function failureKind(error: unknown): string {
  const cause = error instanceof Error && error.cause !== undefined ? error.cause : error;
  if (cause instanceof CommandTimeout) return 'failed:late';
  const reply = redisErrorReply(cause);
  return reply === undefined ? 'failed:other' : `failed:${reply}`;
}

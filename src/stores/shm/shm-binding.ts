/**
 * The shared-memory store's handle on one key, and every operation on a
 * key: the hot paths (`isStale()` is one `Atomics.load`, `increment()` one
 * `Atomics.add`) and the slow paths they fall back to (finding the key's
 * record, re-creating a cleared key, following the store to a new file).
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { StoreUnavailableError } from '../../store/errors';
import { unixSecond, type KeyBinding } from '../../store/store';
import { findOrCreate } from './key-creation';
import type { LiveFile } from './live-file';
import type { KeyIdentity, MappedFile } from './mapped-file';
import { carryOver, MAX_CAS_ATTEMPTS, type CapturedKey } from './retirement';
import { ABSENT, R_FIRST_VALUE, RELAYED, VALUE_MASK, WATCHED } from './shm-format';

/** How many times one operation follows the store to a new file before it reports the store unavailable. */
const MOVES_PER_OPERATION = 3;

/** Generation words at or above this are flagged (absent, watched) or corrupt; below it they are exact as numbers. */
const SAFE_WORD_LIMIT = BigInt(Number.MAX_SAFE_INTEGER);
/** The flags that ask a changer to tell someone (watchers, the relay): not part of what a holder compares. */
const NOTIFYING = WATCHED | RELAYED;
const NOT_NOTIFYING = ~NOTIFYING;
const NOT_RELAYED = ~RELAYED;
/** First values at or above this are not recorded (R_FIRST_VALUE is 32 bits). */
const FIRST_VALUE_LIMIT = 1n << 32n;

/** What a binding needs from its store: the file in use, and a way to wake the key's watchers. */
export interface BindingContext {
  readonly live: LiveFile;
  /** Tell every watcher of every process that the key of `binding` changed in `file`. */
  notify(file: MappedFile, binding: SharedMemoryBinding): void;
}

/** A private word that reads as an absent key: the view of a binding with no record. Writes to it reach nobody. */
function unboundView(): BigInt64Array {
  return new BigInt64Array([ABSENT]);
}

/** The store's handle on one key. `view` and `index` point at the key's generation word in `file`. */
export class SharedMemoryBinding implements KeyBinding {
  #view: BigInt64Array = unboundView();
  #index = 0;
  /** The file holding the key's record; undefined until the key is found or created, and after every move. */
  #file: MappedFile | undefined;
  /** Record number in `file`, or -1. */
  #record = -1;
  /** The synced generation as a word, for the hot path's comparison; -1 (never stored) until there is one. */
  #expectedWord = -1n;
  /**
   * The word an increment returned, not yet folded into `#expectedWord`.
   * increment() only records it: adding one and converting to a number
   * there would make the hot path of markUpdated() markedly slower. The
   * next isStale() or `synced` folds it in.
   */
  #incrementedFrom: bigint | null = null;
  /** The file the synced generation was taken in (see #settle and fetchOrCreate), to tell a file gone back. */
  #syncedIn: MappedFile | undefined;
  /**
   * The word the last increment in the bound file found, or one below the
   * value fetchOrCreate took there (0 when unknown). Words only rise in a
   * file, so an increment that finds one at or below it found a file written
   * over in place with an older copy (see #incrementOutOfRange).
   */
  #lastPrevious = 0n;
  /** How many times this binding woke the key's watchers (see Watching.notify). */
  notifications = 0;

  constructor(
    readonly key: string,
    readonly identity: KeyIdentity,
    private readonly context: BindingContext,
  ) {}

  get synced(): number | null {
    this.#settle();
    return this.#expectedWord < 0n ? null : Number(this.#expectedWord);
  }

  /** The file this binding is attached to, if any. */
  get file(): MappedFile | undefined {
    return this.#file;
  }

  /** The key's record number in {@link file}, or -1. */
  get record(): number {
    return this.#record;
  }

  isStale(): boolean {
    const word = Atomics.load(this.#view, this.#index);
    return word !== this.#expectedWord && this.#staleAfterSettling(word);
  }

  increment(): boolean {
    const previous = Atomics.add(this.#view, this.#index, 1n);
    // Zero is never a generation: a word of 0 is a record that lost its contents; a word at or below the last
    // one found here, a file that went back (see #incrementOutOfRange).
    if (previous < SAFE_WORD_LIMIT && previous > this.#lastPrevious) {
      this.#incrementedFrom = previous;
      this.#lastPrevious = previous;
      return true;
    }
    return this.#incrementOutOfRange(previous);
  }

  read(): number | null {
    for (let move = 0; move < MOVES_PER_OPERATION; move++) {
      const file = this.context.live.current();
      if (!this.attachIfPublished(file)) return null;
      const word = Atomics.load(file.gens, this.#index);
      if (word !== 0n) return generationOf(file, word);
      this.context.live.retireLost(file); // and read again in the file every process moves to
    }
    throw this.#movedTooOften();
  }

  fetchOrCreate(now: number): number {
    const seed = Math.max(1, unixSecond(now)); // zero is never a generation (a record that lost its contents reads 0)
    for (let move = 0; move < MOVES_PER_OPERATION; move++) {
      const file = this.context.live.current();
      if (this.#file !== file) {
        const record = findOrCreate(file, this.identity, seed);
        // Retired while this process waited for the creation lock: do it again in the live file.
        if (record < 0) continue;
        this.attach(file, record);
      }
      if (file.retired) continue;
      const value = this.#reviveIfAbsent(file, seed);
      if (value === null) continue; // the record lost its contents: the file was retired
      if (file.retired) {
        // Retired while reviving: the retiring process may have captured the key as absent before the revival.
        this.#handOver(file);
        continue;
      }
      // Truncated while reviving: the word may have been a page that reads as absent, private to this process.
      if (this.context.live.faultedSinceCurrent()) continue;
      this.#settle();
      if (this.#syncedIn === file && BigInt(value) < this.#expectedWord) {
        // Below what this binding synced in this very file: an older copy was written over it in place. Nothing
        // in a live file ever goes down: retire it, and take the value from the file everybody moves to.
        this.context.live.retireLost(file);
        continue;
      }
      this.#syncedIn = file;
      this.#expectedWord = BigInt(value);
      this.#lastPrevious = this.#expectedWord - 1n;
      this.#incrementedFrom = null;
      return value;
    }
    throw this.#movedTooOften();
  }

  #movedTooOften(): StoreUnavailableError {
    return new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `The store file at ${this.context.live.path} was replaced ${MOVES_PER_OPERATION} times during one operation. ` +
        'Something keeps replacing it: stop it, or use another path.',
      { path: this.context.live.path },
    );
  }

  delete(): void {
    const file = this.context.live.current();
    if (!this.attachIfPublished(file)) return;
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const previous = Atomics.or(file.gens, this.#index, ABSENT);
      if ((previous & ABSENT) === 0n) {
        file.stamp(this.#record);
        this.#told(file, previous);
        return;
      }
      if ((previous & RELAYED) === 0n) break;
      // Absent already, and the host's relay asked to hear of the key's next change: the relay made it absent
      // in an outage (see poison()) and may make it present again. Tell it of this clear, taking the flag in
      // one step, so that either its restore() comes first (and this clears the key restored) or it sees this.
      if (Atomics.compareExchange(file.gens, this.#index, previous, previous & NOT_RELAYED) === previous) {
        file.relayChanged(this.#record);
        break;
      }
    }
    file.stamp(this.#record);
  }

  /**
   * A change just made to the key in `file`, from a word that had `previous`: wake the key's watchers if it is
   * watched, and tell the host's relay if it waits for this key (its flag is used once: cleared here).
   */
  #told(file: MappedFile, previous: bigint): void {
    if ((previous & RELAYED) !== 0n) {
      Atomics.and(file.gens, this.#index, NOT_RELAYED);
      file.relayChanged(this.#record);
    }
    if ((previous & WATCHED) !== 0n) this.context.notify(file, this);
  }

  /**
   * For the relay: the key's generation (null when absent), the highest
   * value it has had here (0 when it never existed), and whether it still
   * holds the value it was first created with here (never bumped, cleared or
   * raised since; false when not known).
   */
  snapshot(): { generation: number | null; highest: number; untouched: boolean; armed: boolean } {
    const file = this.context.live.current();
    if (!this.attachIfPublished(file)) return { generation: null, highest: 0, untouched: false, armed: false };
    const word = Atomics.load(file.gens, this.#index);
    if (word === 0n) {
      this.context.live.retireLost(file); // the relay follows the move and reads every key again
      return { generation: null, highest: 0, untouched: false, armed: false };
    }
    const bare = word & NOT_NOTIFYING;
    const highest = checkedGeneration(file, bare & VALUE_MASK);
    const generation = (bare & ABSENT) !== 0n ? null : highest;
    // Read after the word: a creation writes the word first, so a first value not written yet reads as "not known".
    const first = file.recordWord(this.#record, R_FIRST_VALUE);
    return { generation, highest, untouched: generation !== null && first !== 0 && generation === first, armed: (word & RELAYED) !== 0n };
  }

  /**
   * For the relay, when Redis is lost: make the key absent (every holder
   * reloads: what other hosts change is unknown) and ask to hear of the
   * host's next change of it, in one step. Returns the value it held, or
   * null when it was absent already. See {@link restore}.
   */
  poison(): number | null {
    const file = this.context.live.current();
    if (!this.attachIfPublished(file)) return null;
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(file.gens, this.#index);
      if ((word & ABSENT) !== 0n) return null;
      const value = checkedGeneration(file, word & VALUE_MASK);
      if (Atomics.compareExchange(file.gens, this.#index, word, word | ABSENT | RELAYED) !== word) continue;
      if ((word & WATCHED) !== 0n) this.context.notify(file, this);
      if (file.retired) this.#handOver(file);
      return value;
    }
    return null;
  }

  /**
   * For the relay, when Redis is back: make the key present at `value`
   * (Redis' value; at or above what it held) if it is still as
   * {@link poison} left it, nothing on the host having changed or cleared it
   * since (which takes the RELAYED flag). Holders of `value` from before the
   * outage are then in step again. False, changing nothing, otherwise.
   */
  restore(value: number): boolean {
    const file = this.context.live.current();
    if (this.#file !== file) return false; // moved since: the relay reads everything again
    const wanted = BigInt(value);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(file.gens, this.#index);
      if ((word & ABSENT) === 0n || (word & RELAYED) === 0n || wanted < (word & VALUE_MASK)) return false;
      if (Atomics.compareExchange(file.gens, this.#index, word, wanted | (word & NOTIFYING)) !== word) continue;
      if ((word & WATCHED) !== 0n) this.context.notify(file, this);
      if (file.retired) this.#handOver(file);
      return true;
    }
    return false;
  }

  /**
   * For the relay: make the key hold `next` (a generation, or null for
   * absent) if it holds `expected` now (null: absent), and return whether it
   * changed. Never lowers: a generation below the highest the key has had is
   * refused (false), and an absent key keeps its highest value as the floor
   * of its next creation. Wakes the key's watchers. Creates the key's record
   * (absent) if there is none.
   */
  replace(expected: number | null, next: number | null): boolean {
    const file = this.context.live.current();
    if (this.#file !== file) {
      const record = findOrCreate(file, this.identity, null);
      if (record < 0) return false; // retired while waiting for the lock: the caller reads again
      this.attach(file, record);
    }
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(file.gens, this.#index);
      const flags = word & NOTIFYING;
      const bare = word & NOT_NOTIFYING;
      const highest = bare & VALUE_MASK;
      const current = (bare & ABSENT) !== 0n ? null : checkedGeneration(file, highest);
      if (current !== expected) return false;
      let wanted: bigint;
      if (next === null) {
        wanted = ABSENT | highest;
      } else {
        wanted = BigInt(next);
        if (wanted < highest || (current === null && wanted === highest)) return false;
      }
      if (wanted === bare) return false;
      // The relay's own write: its flag stays as it is (it is the one waiting).
      if (Atomics.compareExchange(file.gens, this.#index, word, wanted | flags) !== word) continue;
      file.stamp(this.#record);
      if ((flags & WATCHED) !== 0n) this.context.notify(file, this);
      if (file.retired) this.#handOver(file);
      return true;
    }
    return false;
  }

  /** Bind to the key's record in `file`, if the key is published there; false when it is not. */
  attachIfPublished(file: MappedFile): boolean {
    if (this.#file === file) return true;
    const record = file.find(this.identity);
    if (record < 0) return false;
    this.attach(file, record);
    return true;
  }

  attach(file: MappedFile, record: number): void {
    this.#settle();
    this.#lastPrevious = 0n;
    this.#file = file;
    this.#record = record;
    this.#view = file.gens;
    this.#index = file.wordIndex(record);
  }

  /** Let go of the file: the key reads as absent (expired) until it is attached again. */
  detach(): void {
    this.#settle();
    this.#lastPrevious = 0n;
    this.#view = unboundView();
    this.#index = 0;
    this.#file = undefined;
    this.#record = -1;
  }

  /**
   * For the background check: whether the key's word in `file` is below
   * what this binding synced or bumped there (or reads 0). Words only rise
   * in a file: one that went down was written over in place with an older
   * copy, perhaps one taken after every process's last check (which the
   * file's liveness counter cannot tell).
   */
  wentBackIn(file: MappedFile): boolean {
    if (this.#file !== file) return false;
    this.#settle();
    if (this.#syncedIn !== file || this.#expectedWord < 0n) return false;
    const word = Atomics.load(file.gens, this.#index);
    return word === 0n || (word >= 0n && (word & VALUE_MASK) < this.#expectedWord);
  }

  /** What this binding knows of its key, as a floor for a file that replaces one which lost its contents. */
  floor(): CapturedKey | undefined {
    this.#settle();
    return this.#expectedWord >= 0n ? { identity: this.identity, word: ABSENT | this.#expectedWord } : undefined;
  }

  /** A differing word: stale unless a pending increment or a notifying flag explains the difference. */
  #staleAfterSettling(word: bigint): boolean {
    this.#settle();
    return word !== this.#expectedWord && (word & NOT_NOTIFYING) !== this.#expectedWord;
  }

  /** Fold a pending increment into the synced value. */
  #settle(): void {
    if (this.#incrementedFrom !== null) {
      this.#expectedWord = this.#incrementedFrom + 1n;
      this.#incrementedFrom = null;
      this.#syncedIn = this.#file; // settled before every attach and detach: the file the increment was made in
    }
  }

  /**
   * The slow path of an increment whose previous word was flagged, unbound
   * or out of range. Returns false, changing nothing visible, when the key
   * is absent.
   */
  #incrementOutOfRange(previous: bigint): boolean {
    // A present key of this binding's file that someone asked to hear of: the add was the increment. Tell them
    // (a relay that sleeps, watchers), with nothing else in the way: on a relayed host, this is the first bump
    // of a key after the relay last forwarded it.
    const mine = this.#file;
    if (mine !== undefined && previous >= 0n && (previous & ABSENT) === 0n && (previous & NOTIFYING) !== 0n) {
      this.#incrementedFrom = BigInt(checkedGeneration(mine, previous & VALUE_MASK));
      this.#lastPrevious = this.#incrementedFrom;
      this.#told(mine, previous);
      return true;
    }
    // A word of 0: the record lost its contents (the file was cut short and extended in place). A present word
    // at or below the last one an increment found here: an older copy was written over the file in place. The
    // add went into a record nobody can trust: retire the file, and make the increment in the one every
    // process moves to.
    const wentBack = previous === 0n || (previous > 0n && (previous & (ABSENT | NOTIFYING)) === 0n && previous <= this.#lastPrevious);
    if (wentBack && mine !== undefined) this.context.live.retireLost(mine);
    const file = this.context.live.current(); // moves to the live file first if the binding's was retired or shrunk
    if (this.#file !== file) {
      // Unbound, or bound to a file this process has left: the add reached nobody. Make the increment here.
      return this.attachIfPublished(file) && this.increment();
    }
    if (wentBack) return false; // still in that file (no other to move to): nothing was recorded
    if (previous < 0n) throw file.corrupt(`key "${this.key}" holds generation word ${previous}`);
    // Absent: the add only raised the highest value the tombstone remembers, which nobody sees.
    if ((previous & ABSENT) !== 0n) return false;
    this.#incrementedFrom = BigInt(checkedGeneration(file, previous & VALUE_MASK));
    this.#lastPrevious = this.#incrementedFrom;
    this.#told(file, previous);
    return true;
  }

  /**
   * Re-create a cleared key above every value it had; return the present
   * generation, or null when the record lost its contents (the file is then
   * retired).
   */
  #reviveIfAbsent(file: MappedFile, seed: number): number | null {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const word = Atomics.load(file.gens, this.#index);
      if (word === 0n) {
        this.context.live.retireLost(file);
        return null;
      }
      if ((word & ABSENT) === 0n) return checkedGeneration(file, word & VALUE_MASK);
      const highest = word & VALUE_MASK;
      const value = BigInt(seed) > highest ? BigInt(seed) : highest + 1n;
      if (Atomics.compareExchange(file.gens, this.#index, word, value | (word & WATCHED)) === word) {
        file.stamp(this.#record);
        // First made present here (a record created absent, for a watch): remember the value it started at.
        if (highest === 0n && value < FIRST_VALUE_LIMIT) file.setRecordWord(this.#record, R_FIRST_VALUE, Number(value));
        this.#told(file, word);
        return checkedGeneration(file, value);
      }
    }
    throw new StoreUnavailableError(
      'ERR_GENSYNC_STORE_UNAVAILABLE',
      `Key "${this.key}" in ${file.path} changed ${MAX_CAS_ATTEMPTS} times while it was being re-created.`,
      { path: file.path },
    );
  }

  /**
   * A key revived in `file` after it was retired: poison it again (the
   * atomic OR also captures anything added since) and carry that over to
   * the live file, so that whatever the retiring process captured, the
   * live file ends above it.
   */
  #handOver(file: MappedFile): void {
    const word = Atomics.or(file.gens, this.#index, ABSENT);
    const next = this.context.live.current();
    if (next !== file && carryOver(next, this.identity, word)) next.wakeWatchers();
  }
}

/**
 * Every binding a store instance made and has not seen collected, attached
 * to the file in use or not: what must follow the store to a new file.
 */
export class Bindings {
  readonly #refs = new Set<WeakRef<SharedMemoryBinding>>();
  readonly #finalizer = new FinalizationRegistry<WeakRef<SharedMemoryBinding>>((ref) => this.#refs.delete(ref));

  add(binding: SharedMemoryBinding): void {
    const ref = new WeakRef(binding);
    this.#refs.add(ref);
    this.#finalizer.register(binding, ref);
  }

  /** Detach every binding: its key reads as expired until it is used again. */
  detachAll(): void {
    for (const ref of this.#refs) ref.deref()?.detach();
  }

  /** Whether some binding finds its key in `file` below what it synced or bumped there (see wentBackIn). */
  wentBack(file: MappedFile): boolean {
    for (const ref of this.#refs) if (ref.deref()?.wentBackIn(file) === true) return true;
    return false;
  }

  /** What the bindings know of their keys, as floors for a new file when the old one lost its contents. */
  floors(): CapturedKey[] {
    const floors: CapturedKey[] = [];
    for (const ref of this.#refs) {
      const floor = ref.deref()?.floor();
      if (floor !== undefined) floors.push(floor);
    }
    return floors;
  }

  clear(): void {
    this.#refs.clear();
  }
}

/** A generation word's value, or null when absent; flags removed and range checked. */
export function generationOf(file: MappedFile, word: bigint): number | null {
  if (word < 0n) throw file.corrupt(`a generation word holds ${word}`);
  return (word & ABSENT) !== 0n ? null : checkedGeneration(file, word & VALUE_MASK);
}

/** A generation value (no flags), checked to be exact as a number. */
function checkedGeneration(file: MappedFile, value: bigint): number {
  if (value < 0n || value > SAFE_WORD_LIMIT) throw file.corrupt(`a generation word holds ${value}, outside the range a generation can take`);
  return Number(value);
}

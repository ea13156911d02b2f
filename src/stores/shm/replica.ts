/**
 * The shared-memory store as a host's relay sees it (src/stores/relay): a
 * replica of Redis that it keeps in step. Everything the relay does to the
 * file goes through this port:
 *
 * - which keys changed, without looking at the others: a changed key that
 *   the relay armed (the RELAYED flag of its word) sets its record's bit in
 *   the dirty map and wakes the relay if it sleeps (`changed()`, `watch()`);
 * - reading a key and writing what Redis says into it, never lowering it
 *   (the key's binding: `snapshot()`, `replace()`);
 * - the relay's term and heartbeat in the file's header, so that a relay
 *   that lost its place stops writing and a frozen one is noticed;
 * - the file moving (replaced, removed, restored): record numbers change,
 *   and the relay reads every key again.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { withCreationLock } from './key-creation';
import type { LiveFile } from './live-file';
import type { MappedFile } from './mapped-file';
import type { NativeAddon, NativeWatcher } from './native';
import type { SharedMemoryBinding } from './shm-binding';
import { DIRTY_BITS_PER_WORD, H_RELAY_BEAT, H_RELAY_SEQ, H_RELAY_SLEEPERS, H_RELAY_TERM, INLINE_KEY_BYTES, R_KEY, R_KEY_LENGTH, RELAYED } from './shm-format';

/** How often the relay looks for changes where futexes are missing (no wake-ups): macOS, BSD. */
export const RELAY_POLL_MS = 25;

/** A key of the file in use, as the relay finds it. */
export interface ReplicaRecord {
  readonly record: number;
  /** The key; undefined when the file keeps only its first bytes (longer than INLINE_KEY_BYTES), which the relay cannot relay. */
  readonly key: string | undefined;
}

export class Replica {
  #file: MappedFile;
  /** Added to each time the store moves to another file: record numbers of an earlier epoch mean nothing now. */
  #epoch = 0;
  #watcher: NativeWatcher | undefined;
  #onChange: (() => void) | undefined;
  #onMove: (() => void) | undefined;

  constructor(
    private readonly live: LiveFile,
    private readonly addon: NativeAddon,
    private readonly bindKey: (key: string) => SharedMemoryBinding,
  ) {
    this.#file = live.current();
  }

  get path(): string {
    return this.live.path;
  }

  /** Which file the record numbers are of; changes when the store moves. */
  get epoch(): number {
    return this.#epoch;
  }

  /** The store moved to `file` (called by the store). */
  arrived(file: MappedFile): void {
    this.#file = file;
    this.#epoch++;
    if (this.#onChange !== undefined) this.#listen(this.#onChange);
    const onMove = this.#onMove;
    if (onMove !== undefined) queueMicrotask(onMove);
  }

  /** Call `onMove` (soon, never inside the move itself) each time the store moves to another file. */
  onMove(onMove: () => void): void {
    this.#onMove = onMove;
  }

  /** Let the store follow its file now (a replaced or damaged file is left here): then read epoch and records. */
  follow(): void {
    this.live.current();
  }

  /** A binding of `key`, as a synchronizer's: it follows the store from file to file. */
  bind(key: string): SharedMemoryBinding {
    return this.bindKey(key);
  }

  /** How many records the file in use has. */
  recordCount(): number {
    return this.#file.recordCount();
  }

  /** Record `record` of the file in use. */
  recordAt(record: number): ReplicaRecord {
    const file = this.#file;
    const length = file.recordWord(record, R_KEY_LENGTH);
    if (length > INLINE_KEY_BYTES) return { record, key: undefined };
    return { record, key: file.recordBytes(record, R_KEY, length).toString('utf8') };
  }

  /** Take the records whose keys changed since the relay armed them, from the dirty map (each once). */
  changed(): number[] {
    const file = this.#file;
    const records: number[] = [];
    const words = file.dirtyWords;
    for (let index = 0; index < words; index++) {
      let bits = file.takeDirty(index);
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits);
        bits &= ~(1 << bit);
        records.push(index * DIRTY_BITS_PER_WORD + bit);
      }
    }
    return records;
  }

  /**
   * Ask to hear of the next change of `binding`'s key (its word's RELAYED flag): the next process to change it
   * marks it dirty and wakes the relay. False when the key has no record in the file in use.
   */
  arm(binding: SharedMemoryBinding): boolean {
    const file = this.#file;
    if (!binding.attachIfPublished(file)) return false;
    Atomics.or(file.gens, file.wordIndex(binding.record), RELAYED);
    return true;
  }

  /**
   * Mark `binding`'s key changed, as a process changing it would: for a relay that lost its place, to hand
   * over a change it took and did not forward (and a key it did not arm again) to the relay in its place.
   */
  handBack(binding: SharedMemoryBinding): void {
    const file = this.#file;
    if (binding.attachIfPublished(file)) file.relayChanged(binding.record);
  }

  /** Call `onChange` soon after a changed key marks itself dirty (a futex wake-up, or a poll where there is none). */
  watch(onChange: () => void): void {
    this.#onChange = onChange;
    this.#listen(onChange);
  }

  stopWatching(): void {
    this.#onChange = undefined;
    this.#watcher?.stop();
    this.#watcher = undefined;
  }

  #listen(onChange: () => void): void {
    this.#watcher?.stop();
    if (this.addon.capabilities.futex) {
      this.#watcher = new this.addon.Watcher(this.#file.fd, H_RELAY_SEQ, onChange, H_RELAY_SLEEPERS);
    } else {
      const timer = setInterval(onChange, RELAY_POLL_MS);
      timer.unref();
      this.#watcher = { stop: () => clearInterval(timer) };
    }
  }

  /**
   * Take the relay's place in the file in use, under its creation lock: a term above every earlier one, which
   * this relay keeps (see {@link ownsTerm}) until another takes over.
   */
  claimTerm(): number {
    const file = this.#file;
    return withCreationLock(file, () => {
      const term = (file.headerWord(H_RELAY_TERM) + 1) >>> 0 || 1;
      file.setHeaderWord(H_RELAY_TERM, term);
      // Whoever slept on the relay's futex before (a relay that died asleep) no longer does.
      file.setHeaderWord(H_RELAY_SLEEPERS, 0);
      return term;
    });
  }

  /**
   * Whether `term` is still the relay's term of the file in use. A file the store moved to carries the highest
   * term any relay brings to it: a relay that finds a higher one there has lost its place.
   */
  ownsTerm(term: number): boolean {
    const file = this.#file;
    for (;;) {
      const found = file.headerWord(H_RELAY_TERM);
      if (found === term) return true;
      if (found > term) return false;
      if (file.swapHeaderWord(H_RELAY_TERM, found, term) === found) return true;
    }
  }

  /** The relay is alive and making progress. */
  beat(): void {
    this.#file.addHeaderWord(H_RELAY_BEAT);
  }

  /** The heartbeat of whoever relays this file (for a process that is not the relay: is it frozen?). */
  heartbeat(): number {
    return this.#file.headerWord(H_RELAY_BEAT);
  }

  /** Run `action` holding the creation lock of the file in use (short: a takeover's check and step). */
  exclusively<T>(action: () => T): T {
    return withCreationLock(this.#file, action);
  }
}

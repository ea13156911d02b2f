/**
 * Which file a store instance uses: the one owner of that answer. Every
 * operation asks {@link LiveFile.current}, which moves to the file now at
 * the path when the one in use was retired or shrank; a background check
 * notices a replaced, removed or damaged file within the check interval.
 * Moving retires the old file and carries its keys over (`retirement.ts`),
 * then hands the new file to the store's tenants (bindings and watchers).
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { statSync, type Stats } from 'node:fs';

import { StoreClosedError, StoreError, StoreUnavailableError } from '../../store/errors';
import { ioError } from '../../system/filesystem';
import { withLockDeadline } from '../../system/lock-wait';
import { createMissingLocked, withCreationLock } from './key-creation';
import type { MappedFile } from './mapped-file';
import type { NativeAddon } from './native';
import type { OpenSettings } from './open-file';
import { carryOver, openLive, retire, type CapturedKey } from './retirement';
import { ABSENT, VALUE_MASK } from './shm-format';
import { trace } from '../../store/trace';

/** What lives in the file in use and must follow the store from one file to the next. */
export interface Tenants {
  /** What this process knows of its keys, as floors for a file that replaces one which lost its contents. */
  knownFloors(): CapturedKey[];
  /** The file in use is going away: let go of everything in it. */
  leave(): void;
  /** `file` is now in use. */
  arrive(file: MappedFile): void;
  /** The background check found `file` still in use: retry what could not be done in it before. */
  recheck(file: MappedFile): void;
}

export class LiveFile {
  /** The file in use; undefined while the file at the path cannot be used (see #unusable). */
  #file: MappedFile | undefined;
  /** Why there is no usable file, thrown by every operation until one is. */
  #unusable: StoreError | undefined;
  /** The addon's count of absorbed SIGBUS faults when this store last looked: a change means some file shrank. */
  #faultsSeen: number;
  /**
   * What this process knew of its keys when it had to give up a file that
   * lost its contents (truncated) and found no usable file, and what it
   * captured from a file it retired but could not yet carry over (the new
   * file's creation lock was held): carried over, as floors, into the next
   * file it uses, so no generation repeats. One entry per key.
   */
  readonly #floors = new Floors();
  /** Background failures already reported, by message, so that each is reported once. */
  readonly #reported = new Set<string>();
  readonly #timer: NodeJS.Timeout;
  #closed = false;

  constructor(
    readonly path: string,
    file: MappedFile,
    private readonly settings: OpenSettings,
    private readonly addon: NativeAddon,
    private readonly tenants: Tenants,
    checkIntervalMs: number,
  ) {
    this.#file = file;
    this.#faultsSeen = addon.faults();
    this.#timer = setInterval(() => this.#checkInBackground(), checkIntervalMs);
    this.#timer.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The file in use right now, without checking it; undefined while there is none or after close(). */
  get inUse(): MappedFile | undefined {
    return this.#file;
  }

  /**
   * The file to work on, after moving to the live file if the one in use
   * was retired or shrank. Throws StoreClosedError, or the reason there is
   * no usable file.
   */
  current(): MappedFile {
    if (this.#closed) throw this.closedError();
    const faults = this.addon.faults();
    if (faults !== this.#faultsSeen || this.#file === undefined || this.#file.retired) {
      // The caller's own call: whatever moving takes waits for locks up to the lock timeout once in all.
      const failure = withLockDeadline(performance.now() + this.settings.lockTimeoutMs, () => this.#followInForeground(faults));
      if (failure !== undefined && (this.#file === undefined || this.#file.retired)) throw failure;
    }
    if (this.#file === undefined) throw this.#unusable ?? new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `No usable store file at ${this.path}.`, { path: this.path });
    return this.#file;
  }

  /** The slow part of {@link current}; returns why a move could not be made now, if it could not. */
  #followInForeground(faults: number): StoreError | undefined {
    if (faults !== this.#faultsSeen) {
      // Some mapped store file shrank under this process (perhaps this one): check now, not at the next tick.
      this.#faultsSeen = faults;
      const failure = this.#check();
      if (failure !== undefined) return failure;
    }
    return this.#file === undefined || this.#file.retired ? this.#move() : undefined;
  }

  /** Whether some mapped store file shrank under this process since the last {@link current} looked. */
  faultedSinceCurrent(): boolean {
    return this.addon.faults() !== this.#faultsSeen;
  }

  closedError(): StoreClosedError {
    return new StoreClosedError(`The store at ${this.path} was closed; open it again to keep using it.`, { path: this.path });
  }

  /** Stop checking, let the tenants go and unmap the file. The tenants are told nothing more. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.tenants.leave();
    this.#file?.close();
    this.#file = undefined;
  }

  /**
   * The timer's entry point. Nothing a background check meets may throw
   * into the host: store failures become the store's state (keys read as
   * expired, operations report the reason); anything else is reported once
   * as a process warning.
   */
  #checkInBackground(): void {
    try {
      // Nobody waits for this: a lock another process holds is tried once, and again at the next check, so
      // that a process stopped inside a key creation never holds up this event loop (issue 27 item 4).
      withLockDeadline(performance.now(), () => {
        this.#check();
        if (!this.#closed && this.#file !== undefined) this.tenants.recheck(this.#file);
      });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (this.#reported.has(message)) return;
      this.#reported.add(message);
      process.emitWarning(`The background check of the store at ${this.path} failed: ${message}`, { code: 'GENSYNC_BACKGROUND_CHECK' });
    }
  }

  /**
   * Does the path still name the file we mapped, is the file still whole,
   * has another process retired it? Two system calls, never on the hot path.
   */
  #check(): StoreError | undefined {
    if (this.#closed) return undefined;
    const file = this.#file;
    if (file === undefined) return this.#move();
    let pathStats: Stats | undefined;
    try {
      pathStats = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return undefined; // try again at the next check
    }
    const pulled = pathStats === undefined || pathStats.ino !== file.ino || pathStats.dev !== file.dev;
    return pulled || file.retired || !file.intact ? this.#move() : undefined;
  }

  /**
   * Leave the file in use for the file now at the path. The new file is
   * opened and checked first: if that fails, nothing changes (the next
   * check tries again) unless the old file cannot be used either. Then,
   * unless the old file shrank (its lost pages read as absent), mark it
   * retired and poison every key in it, and carry each key over above the
   * value it had, so that every holder of either file reads it as expired
   * and no update is lost; from a shrunk file, carry over what this
   * process knows. Then hand the new file to the tenants.
   */
  #move(): StoreError | undefined {
    const old = this.#file;
    let next: MappedFile;
    try {
      next = openLive(this.path, this.settings, this.addon);
    } catch (error) {
      const reason = error instanceof StoreError ? error : ioError(error, 'reopen the store', this.path);
      // A lock another process holds (replacing a retired file needs its creation lock): try again later.
      if (old !== undefined && ((!old.retired && old.intact) || reason.code === 'ERR_GENSYNC_LOCK_TIMEOUT')) return reason;
      if (old !== undefined) this.#floors.add(this.tenants.knownFloors());
      this.#abandon(reason);
      return reason;
    }
    if (old !== undefined && next.ino === old.ino && next.dev === old.dev) {
      next.close(); // the same file after all
      return undefined;
    }
    // Under the new file's creation lock: retire the old file, capturing what it held (unless it lost its
    // contents), and make a record for every key to carry over. The lock may be held by a process stopped
    // inside a creation: then nothing changed (the old file was not retired), and the next check tries again.
    let carried: CapturedKey[];
    try {
      carried = withCreationLock(next, () => {
        if (old !== undefined && old.intact) this.#floors.add(retire(old));
        const keys = [...this.#floors.values(), ...this.tenants.knownFloors()];
        createMissingLocked(next, keys.map((key) => key.identity));
        return keys;
      });
    } catch (error) {
      next.close();
      if (error instanceof StoreError) return error;
      throw error;
    }
    this.#floors.clear();
    let watched = false;
    for (const { identity, word } of carried) watched = carryOver(next, identity, word) || watched;
    if (watched) next.wakeWatchers();
    // Retired by another process while this one carried keys over: some may not have made it; keep them all.
    if (next.retired) this.#floors.add(carried);
    if (trace.enabled) {
      trace('store file %s was replaced, removed or damaged: now using the file at the path (inode %d), %d keys carried over', this.path, next.ino, carried.length);
    }
    this.#abandon(undefined);
    this.#file = next;
    this.tenants.arrive(next);
    return undefined;
  }

  /** Stop using the current file: the tenants let go of it (keys read as expired), then it is unmapped and closed. */
  #abandon(reason: StoreError | undefined): void {
    this.tenants.leave();
    this.#file?.close();
    this.#file = undefined;
    this.#unusable = reason;
  }
}

/**
 * Keys to carry over as floors, one entry per key: the highest value seen,
 * present if any capture of it was present (carried over, a present word
 * raises the key above it; an absent one only sets a floor).
 */
class Floors {
  readonly #byKey = new Map<string, CapturedKey>();

  add(keys: Iterable<CapturedKey>): void {
    for (const key of keys) {
      const name = `${key.identity.length}:${key.identity.digest.toString('hex')}`;
      const known = this.#byKey.get(name);
      if (known === undefined) {
        this.#byKey.set(name, key);
        continue;
      }
      const value = (key.word & VALUE_MASK) > (known.word & VALUE_MASK) ? key.word & VALUE_MASK : known.word & VALUE_MASK;
      const present = (key.word & ABSENT) === 0n || (known.word & ABSENT) === 0n;
      this.#byKey.set(name, { identity: known.identity, word: present ? value : value | ABSENT });
    }
  }

  values(): IterableIterator<CapturedKey> {
    return this.#byKey.values();
  }

  clear(): void {
    this.#byKey.clear();
  }
}

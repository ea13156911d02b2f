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

/**
 * Every live file not closed yet in this process (or thread): when it exits
 * (returning from its work, `process.exit()`, a signal it handles by
 * exiting), each hands its keys over if its file was pulled (see
 * {@link LiveFile.handOverIfPulled}). One `exit` listener for them all,
 * there only while there are any.
 */
const leaving = new (class LeavingFiles {
  readonly #files = new Set<LiveFile>();
  readonly #onExit = (): void => {
    for (const file of this.#files) file.handOverIfPulled();
  };

  add(file: LiveFile): void {
    if (this.#files.size === 0) process.on('exit', this.#onExit);
    this.#files.add(file);
  }

  delete(file: LiveFile): void {
    if (!this.#files.delete(file) || this.#files.size > 0) return;
    process.removeListener('exit', this.#onExit);
  }
})();

/** What lives in the file in use and must follow the store from one file to the next. */
export interface Tenants {
  /** What this process knows of its keys, as floors for a file that replaces one which lost its contents. */
  knownFloors(): CapturedKey[];
  /** Whether some key in `file` holds less than this process synced or bumped there: the file went back. */
  wentBack(file: MappedFile): boolean;
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
    leaving.add(this);
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
    if (this.addon.faults() !== this.#faultsSeen || this.#file === undefined || this.#file.retired) {
      // The caller's own call: whatever moving takes waits for locks up to the lock timeout once in all.
      const failure = withLockDeadline(performance.now() + this.settings.lockTimeoutMs, () => this.#followInForeground());
      if (failure !== undefined && (this.#file === undefined || this.#file.retired)) throw failure;
    }
    if (this.#file === undefined) throw this.#unusable ?? new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `No usable store file at ${this.path}.`, { path: this.path });
    return this.#file;
  }

  /** The slow part of {@link current}; returns why a move could not be made now, if it could not. */
  #followInForeground(): StoreError | undefined {
    const failure = this.#check(false);
    if (failure !== undefined) return failure;
    return this.#file === undefined || this.#file.retired ? this.#move() : undefined;
  }

  /**
   * A binding found a generation word of 0 in `file`, which no record ever
   * holds, or a generation below one it synced there: the file lost its
   * records, or went back, in place. Retire it, so that this and every
   * other process moves to a fresh file (see {@link current}).
   */
  retireLost(file: MappedFile): void {
    if (file.retired) return;
    if (trace.enabled) trace('store file %s: a record lost its contents in place: retiring the file', this.path);
    file.markRetired();
    file.wakeWatchers();
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
    this.handOverIfPulled();
    leaving.delete(this);
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
        this.#check(true);
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
   * has another process retired it? Two system calls, never on the hot
   * path. Then, is it still the file it was: not cut short and extended
   * (its last record lost), not written over in place with another file
   * (its nonce) or, at a background check, with an older copy of itself
   * (its liveness counter went back, or a key holds less than this process
   * synced or bumped there: one load per key it uses)? Such a file is retired here, so that
   * every process moves to a fresh one carrying what it knows (issue 27
   * item 1). And if some mapped file shrank under this process, its mapping
   * may hold pages the fault handler substituted: map the file again.
   */
  #check(background: boolean): StoreError | undefined {
    if (this.#closed) return undefined;
    const faults = this.addon.faults();
    const substituted = faults !== this.#faultsSeen;
    this.#faultsSeen = faults;
    const file = this.#file;
    if (file === undefined) return this.#move();
    let pathStats: Stats | undefined;
    try {
      pathStats = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return undefined; // try again at the next check
    }
    const pulled = pathStats === undefined || pathStats.ino !== file.ino || pathStats.dev !== file.dev;
    if (!pulled && !file.retired && file.intact && (file.overwritten || (background && (file.wentBack() || this.tenants.wentBack(file))) || file.lostRecords())) {
      if (trace.enabled) trace('store file %s lost its contents in place (cut short and extended, or written over): retiring it', this.path);
      file.markRetired();
      file.wakeWatchers();
    }
    if (pulled || file.retired || !file.intact) return this.#move();
    return substituted ? this.#remap(file) : undefined;
  }

  /**
   * Map the file at the path again, in place of `file`'s mapping, which may
   * hold a page the fault handler substituted (private to this process:
   * what is written there reaches nobody). A file that is not the same any
   * more is a move.
   */
  #remap(file: MappedFile): StoreError | undefined {
    let next: MappedFile;
    try {
      next = openLive(this.path, this.settings, this.addon);
    } catch (error) {
      return error instanceof StoreError ? error : ioError(error, 'reopen the store', this.path);
    }
    if (next.ino !== file.ino || next.dev !== file.dev) {
      // Replaced (perhaps just now, as a file that lost its records): move, capturing nothing through this
      // mapping, which may read substituted pages; whoever replaced the file captured it through a sound one.
      next.close();
      return this.#move(false);
    }
    if (trace.enabled) trace('store file %s: mapped again (a file shrank under this process)', this.path);
    this.#abandon(undefined);
    this.#file = next;
    this.tenants.arrive(next);
    return undefined;
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
  #move(captureOld = true): StoreError | undefined {
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
    const failure = this.#carryOver(captureOld ? old : undefined, next);
    if (failure !== undefined) {
      next.close();
      return failure;
    }
    if (trace.enabled) {
      trace('store file %s was replaced, removed or damaged: now using the file at the path (inode %d)', this.path, next.ino);
    }
    this.#abandon(undefined);
    this.#file = next;
    this.tenants.arrive(next);
    return undefined;
  }

  /**
   * Carry `old`'s keys (unless it lost its contents) and what this process
   * knows over to `next`. Under the new file's creation lock: retire the
   * old file, capturing what it held, and make a record for every key to
   * carry over. The lock may be held by a process stopped inside a
   * creation: then nothing changed (the old file was not retired), and the
   * reason is returned for the caller to try again later.
   */
  #carryOver(old: MappedFile | undefined, next: MappedFile): StoreError | undefined {
    let carried: CapturedKey[];
    try {
      carried = withCreationLock(next, () => {
        if (old !== undefined && old.intact) this.#floors.add(retire(old));
        const keys = [...this.#floors.values(), ...this.tenants.knownFloors()];
        createMissingLocked(next, keys.map((key) => key.identity));
        return keys;
      });
    } catch (error) {
      if (error instanceof StoreError) return error;
      throw error;
    }
    this.#floors.clear();
    let watched = false;
    for (const { identity, word } of carried) watched = carryOver(next, identity, word) || watched;
    if (watched) next.wakeWatchers();
    // Retired by another process while this one carried keys over: some may not have made it; keep them all.
    if (next.retired) this.#floors.add(carried);
    if (trace.enabled) trace('%d keys of %s carried over to the file at the path (inode %d)', carried.length, this.path, next.ino);
    return undefined;
  }

  /**
   * Before letting go of the file in use (close, process exit): if the path
   * names another file now, carry this file's keys over to it, so that a
   * bump made here since the last check is not lost with this process
   * (issue 27 item 2). Waits for the creation lock up to the lock timeout;
   * never throws (the process is leaving, and nobody could act on it).
   */
  handOverIfPulled(): void {
    const file = this.#file;
    if (this.#closed || file === undefined) return;
    try {
      const stats = statSync(this.path, { throwIfNoEntry: false });
      // No file at the path: nobody is there to tell. The same file: nothing to do.
      if (stats === undefined || (stats.ino === file.ino && stats.dev === file.dev)) return;
      withLockDeadline(performance.now() + this.settings.lockTimeoutMs, () => {
        const next = openLive(this.path, this.settings, this.addon);
        try {
          if (next.ino !== file.ino || next.dev !== file.dev) this.#carryOver(file, next);
        } finally {
          next.close();
        }
      });
    } catch {
      // Leaving anyway: the file at the path could not be used, and whoever uses it next starts above the clock.
    }
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

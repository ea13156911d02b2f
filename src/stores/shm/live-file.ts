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
import type { MappedFile } from './mapped-file';
import type { NativeAddon } from './native';
import type { OpenSettings } from './open-file';
import { carryOver, openLive, retire, type CapturedKey } from './retirement';
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
   * lost its contents (truncated) and found no usable file: carried over,
   * as floors, into the next file it uses, so no generation repeats.
   */
  #floors: CapturedKey[] = [];
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
    if (faults !== this.#faultsSeen) {
      // Some mapped store file shrank under this process (perhaps this one): check now, not at the next tick.
      this.#faultsSeen = faults;
      this.#check();
    }
    if (this.#file === undefined || this.#file.retired) this.#move();
    if (this.#file === undefined) throw this.#unusable ?? new StoreUnavailableError('ERR_GENSYNC_STORE_UNAVAILABLE', `No usable store file at ${this.path}.`, { path: this.path });
    return this.#file;
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
      this.#check();
      if (!this.#closed && this.#file !== undefined) this.tenants.recheck(this.#file);
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
  #check(): void {
    if (this.#closed) return;
    const file = this.#file;
    if (file === undefined) {
      this.#move();
      return;
    }
    let pathStats: Stats | undefined;
    try {
      pathStats = statSync(this.path, { throwIfNoEntry: false });
    } catch {
      return; // try again at the next check
    }
    const pulled = pathStats === undefined || pathStats.ino !== file.ino || pathStats.dev !== file.dev;
    if (pulled || file.retired || !file.intact) this.#move();
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
  #move(): void {
    const old = this.#file;
    let next: MappedFile;
    try {
      next = openLive(this.path, this.settings, this.addon);
    } catch (error) {
      const reason = error instanceof StoreError ? error : ioError(error, 'reopen the store', this.path);
      if (old !== undefined && !old.retired && old.intact) return;
      if (old !== undefined) this.#floors.push(...this.tenants.knownFloors());
      this.#abandon(reason);
      return;
    }
    if (old !== undefined && next.ino === old.ino && next.dev === old.dev) {
      next.close(); // the same file after all
      return;
    }
    // What the old file held (unless it lost its contents), and in any case what this process knows.
    const captured = old !== undefined && old.intact ? retire(old) : [];
    let watched = false;
    for (const { identity, word } of [...this.#floors.splice(0), ...captured, ...this.tenants.knownFloors()]) {
      watched = carryOver(next, identity, word) || watched;
    }
    if (watched) next.wakeWatchers();
    if (trace.enabled) {
      trace('store file %s was replaced, removed or damaged: now using the file at the path (inode %d), %d keys carried over', this.path, next.ino, captured.length);
    }
    this.#abandon(undefined);
    this.#file = next;
    this.tenants.arrive(next);
  }

  /** Stop using the current file: the tenants let go of it (keys read as expired), then it is unmapped and closed. */
  #abandon(reason: StoreError | undefined): void {
    this.tenants.leave();
    this.#file?.close();
    this.#file = undefined;
    this.#unusable = reason;
  }
}

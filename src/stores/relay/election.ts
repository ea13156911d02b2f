/**
 * Which process of a host is its relay: the one holding an exclusive
 * kernel lock on a small file beside the store (an OFD lock on Linux,
 * `flock` elsewhere). The kernel releases it when the holder dies, however
 * it dies, and another process's next attempt takes it.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { closeSync, constants, fstatSync, openSync, statSync } from 'node:fs';

import type { NativeAddon } from '../shm/native';

const OPEN_LOCK_FILE = constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW;

export interface ElectionEvents {
  /** This process now holds the lock. */
  elected(): void;
  /** This process held the lock and no longer counts: the lock file was removed or replaced. */
  deposed(): void;
}

export class Election {
  #fd: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #leading = false;
  #closed = false;

  constructor(
    readonly path: string,
    private readonly addon: NativeAddon,
    private readonly mode: number,
    private readonly intervalMs: number,
    private readonly events: ElectionEvents,
  ) {}

  get leading(): boolean {
    return this.#leading;
  }

  /** Try now, then every `intervalMs` in the background (the timer never keeps the process alive). */
  start(): void {
    this.#attempt();
    this.#timer = setInterval(() => this.#attempt(), this.intervalMs);
    this.#timer.unref();
  }

  /** Stop trying, and let go of the lock if held. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#release();
  }

  #attempt(): void {
    if (this.#closed) return;
    try {
      if (this.#leading) {
        if (!this.#stillOurs()) {
          this.#release();
          this.events.deposed();
        }
        return;
      }
      const fd = openSync(this.path, OPEN_LOCK_FILE, this.mode);
      let won = false;
      try {
        won = this.addon.tryLock(fd, 0, true);
      } finally {
        if (!won) closeSync(fd);
      }
      if (!won) return;
      this.#fd = fd;
      this.#leading = true;
      this.events.elected();
    } catch {
      // A directory that went away or a full file table: try again next time. Nothing here may throw into the host.
    }
  }

  /** Whether the path still names the file whose lock this process holds. */
  #stillOurs(): boolean {
    if (this.#fd === undefined) return false;
    try {
      const held = fstatSync(this.#fd);
      const named = statSync(this.path);
      return held.ino === named.ino && held.dev === named.dev;
    } catch {
      return false;
    }
  }

  #release(): void {
    this.#leading = false;
    if (this.#fd === undefined) return;
    try {
      closeSync(this.#fd); // closing the only descriptor of the open file description releases its lock
    } catch {
      // already closed
    }
    this.#fd = undefined;
  }
}

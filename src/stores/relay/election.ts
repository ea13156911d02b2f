/**
 * Which process of a host is its relay: the one holding an exclusive
 * kernel lock on a small file beside the store (an OFD lock on Linux,
 * `flock` elsewhere). The kernel releases it when the holder dies, however
 * it dies, and another process's next attempt takes it.
 *
 * A relay that is alive but stopped (SIGSTOP, a debugger, a frozen VM, a
 * long pause) keeps its lock. So every process that fails to take the lock
 * also watches the relay's heartbeat (a counter in the host's store file,
 * see Relay): one that has not moved for {@link FROZEN_AFTER_MS} means the
 * relay is frozen, and the process takes its place: under the store file's
 * creation lock (so that one process does it), it checks the heartbeat once
 * more, removes the frozen relay's lock file and takes a new one. The frozen
 * relay, when it resumes, finds a higher term in the store file and its lock
 * file gone, and stops before it writes anything.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { closeSync, constants, fstatSync, openSync, statSync, unlinkSync } from 'node:fs';

import type { NativeAddon } from '../shm/native';

const OPEN_LOCK_FILE = constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW;

/** A relay whose heartbeat has not moved for this long is frozen, and is replaced. */
export const FROZEN_AFTER_MS = 1000;

export interface ElectionEvents {
  /** This process now holds the lock. */
  elected(): void;
  /** This process held the lock and no longer counts: the lock file was removed or replaced. */
  deposed(): void;
}

/** The relay's heartbeat, as the host's store file shows it. */
export interface Heartbeat {
  /** Its current count. */
  read(): number;
  /** Count one beat: a relay taking over is alive before it has started. */
  beat(): void;
  /** Run `action` while no other process can take over (the store file's creation lock). */
  exclusively(action: () => void): void;
}

export class Election {
  #fd: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #leading = false;
  #closed = false;
  /** The relay's heartbeat when this process last saw it move, and when (performance.now()). */
  #beat: number | undefined;
  #beatSeenAt = 0;

  constructor(
    readonly path: string,
    private readonly addon: NativeAddon,
    private readonly mode: number,
    private readonly intervalMs: number,
    private readonly heartbeat: Heartbeat,
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

  /** Let go of the lock (another relay took over), and go on trying as any other process does. */
  resign(): void {
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
      if (this.#tryLock() || this.#frozenReplaced()) {
        this.#beat = undefined;
        this.#leading = true;
        this.events.elected();
      }
    } catch {
      // A directory that went away or a full file table: try again next time. Nothing here may throw into the host.
    }
  }

  /** Open the lock file at the path and take its lock; true when taken (the descriptor is kept). */
  #tryLock(): boolean {
    const fd = openSync(this.path, OPEN_LOCK_FILE, this.mode);
    let won = false;
    try {
      won = this.addon.tryLock(fd, 0, true);
    } finally {
      if (!won) closeSync(fd);
    }
    if (won) this.#fd = fd;
    return won;
  }

  /**
   * Another process holds the lock: if its heartbeat has not moved for FROZEN_AFTER_MS, remove its lock file
   * (once, under the store file's creation lock) and take a new one. True when taken.
   */
  #frozenReplaced(): boolean {
    const beat = this.heartbeat.read();
    const now = performance.now();
    if (beat !== this.#beat) {
      this.#beat = beat;
      this.#beatSeenAt = now;
      return false;
    }
    if (now - this.#beatSeenAt < FROZEN_AFTER_MS) return false;
    let taken = false;
    this.heartbeat.exclusively(() => {
      if (this.heartbeat.read() !== beat) return; // it moved, or another process took over just now
      try {
        unlinkSync(this.path);
      } catch {
        // gone already
      }
      taken = this.#tryLock();
      // A process that checks next sees the heartbeat move: it does not remove the lock file just taken.
      if (taken) this.heartbeat.beat();
    });
    this.#beat = undefined;
    return taken;
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

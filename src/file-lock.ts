/**
 * The FileStore's writer lock: a proper-lockfile lock, hardened against its
 * known traps.
 *
 * - `lockSync` never retries: {@link acquireFileLock} retries with backoff
 *   up to a deadline and then throws `ERR_GENSYNC_LOCK_TIMEOUT`.
 * - `realpath: true` needs the file to exist: we pass absolute paths with
 *   `realpath: false`.
 * - A compromised lock throws from a timer unless `onCompromised` is given:
 *   we give one that marks the lock lost, and a lost lock never writes.
 * - Taking over a stale lock is `rmdir` then `mkdir`, so two processes can
 *   both "win". Each winner must also create an `owner` file inside the
 *   lock directory with O_EXCL: only one can. A lock directory holding an
 *   owner file cannot be removed by another process's stale check (rmdir
 *   fails on a non-empty directory), so the owner file decides who holds
 *   the lock, and {@link HeldFileLock.verify} checks it before every write.
 * - A process writing in a loop would starve the others; see
 *   {@link announceWaiting}.
 * - A holder that died leaves its lock behind. Its owner file names its pid,
 *   PID namespace and boot: a waiter in the same namespace and boot that
 *   finds the pid gone (or any waiter that finds the owner file older than
 *   the stale time) removes the dead lock at once instead of waiting for it
 *   to go stale. A pid from another namespace proves nothing.
 *
 * @internal
 * @module
 */

import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, openSync, readFileSync, readlinkSync, renameSync, rmdirSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

import type * as ProperLockfile from 'proper-lockfile';

import { StoreUnavailableError } from './errors';
import { errnoCode, ioError, processIsAlive } from './filesystem';
import { checkpoint } from './test-hooks';
import { pause } from './pause';

/**
 * proper-lockfile, loaded on the first lock: loading it installs exit and
 * signal hooks (SIGINT, SIGTERM, SIGHUP, … through signal-exit, to remove
 * its locks when the process ends), which a process that never uses a
 * file store should not get.
 */
let properLockfile: typeof ProperLockfile | undefined;
function lockfile(): typeof ProperLockfile {
  properLockfile ??= require('proper-lockfile') as typeof ProperLockfile;
  return properLockfile;
}

const OWNER_FILE = 'owner';
const FIRST_BACKOFF_MS = 0.05;
/** Waiters retry at least this often, so they notice a release during a releaser's courtesy pause. */
const MAX_BACKOFF_MS = 1;
/** A releaser that saw a waiter within this many ms pauses before it can take the lock again. */
const WAITER_RECENT_MS = 20;
const COURTESY_PAUSE_MS = 2;
/** A lock directory that has had no owner file for this long belongs to a process that died taking it. */
const OWNERLESS_GRACE_MS = 500;

/** What a lock's owner file says. */
interface OwnerRecord {
  readonly pid: number;
  readonly host: string;
  /**
   * Where `pid` means something: the PID namespace (`/proc/self/ns/pid`) and
   * the boot (`/proc/sys/kernel/random/boot_id`). Containers of one pod share
   * a host name and a volume but not their pids, and a pid from before a
   * reboot names nothing. Absent where the system does not say (not Linux).
   */
  readonly pidNamespace?: string | undefined;
  readonly boot?: string | undefined;
  readonly createdAt: number;
  readonly nonce: string;
}

let identity: { readonly pidNamespace: string | undefined; readonly boot: string | undefined } | undefined;

/** This process's PID namespace and boot, as owner records carry them. */
function processScope(): { readonly pidNamespace: string | undefined; readonly boot: string | undefined } {
  const read = (what: () => string): string | undefined => {
    try {
      return what().trim();
    } catch {
      return undefined;
    }
  };
  identity ??= {
    pidNamespace: read(() => readlinkSync('/proc/self/ns/pid')),
    boot: read(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')),
  };
  return identity;
}

/** A writer lock this process holds. */
export interface HeldFileLock {
  /** Whether taking it meant removing a lock left by a process that died: its leftovers may need tidying. */
  readonly recovered: boolean;
  /**
   * Throws unless this process still holds the lock and held it briefly
   * enough that nobody can have judged it stale. Call it right before
   * publishing a write.
   */
  verify(): void;
  /** Give the lock up. Never throws. */
  release(): void;
}

export interface FileLockOptions {
  readonly timeoutMs: number;
  readonly staleMs: number;
}

/** Take the writer lock of `file` (an absolute path), waiting up to `timeoutMs`. */
export function acquireFileLock(file: string, options: FileLockOptions): HeldFileLock {
  const lockDir = `${file}.lock`;
  const ownerPath = join(lockDir, OWNER_FILE);
  const deadline = performance.now() + options.timeoutMs;
  let backoff = FIRST_BACKOFF_MS;

  let recovered = false;
  for (;;) {
    const held = tryAcquire(file, lockDir, ownerPath, options.staleMs, recovered);
    if (held !== undefined) return held;
    if (removeDeadLock(lockDir, ownerPath, options.staleMs)) recovered = true;
    announceWaiting(file);
    if (performance.now() >= deadline) {
      throw new StoreUnavailableError(
        'ERR_GENSYNC_LOCK_TIMEOUT',
        `Another process held the writer lock ${lockDir} for more than ${options.timeoutMs} ms. ` +
          'A process may be stopped (SIGSTOP) or hung while writing: resume or kill it. ' +
          `A lock whose holder died is removed automatically (at once on this host, else after ${options.staleMs} ms).`,
        { path: file },
      );
    }
    pause(backoff * (0.5 + Math.random()));
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
}

/** One attempt. Returns the held lock, or undefined when another process holds it. */
function tryAcquire(file: string, lockDir: string, ownerPath: string, staleMs: number, recovered: boolean): HeldFileLock | undefined {
  let compromised = false;
  let releaseProperLock: () => void;
  try {
    releaseProperLock = lockfile().lockSync(file, {
      realpath: false,
      stale: staleMs,
      onCompromised: () => {
        compromised = true;
      },
    });
  } catch (error) {
    const code = errnoCode(error);
    // ENOTEMPTY: proper-lockfile judged a lock stale but could not remove it, because its owner file is there.
    if (code === 'ELOCKED' || code === 'ENOTEMPTY') return undefined;
    throw ioError(error, 'take the writer lock', lockDir);
  }
  checkpoint('file-write', 'lock-made');

  const owner: OwnerRecord = { pid: process.pid, host: hostname(), ...processScope(), createdAt: Date.now(), nonce: randomBytes(8).toString('hex') };
  const token = JSON.stringify(owner);
  // Written in full beside the store, then linked in: link() refuses an existing name, like O_EXCL,
  // and nobody ever reads a half-written owner file.
  const staged = `${file}.owner.${process.pid}.${owner.nonce}`;
  try {
    // proper-lockfile proves its ownership by the directory's mtime, which adding the owner file
    // changes: put it back, or its refresh timer would call a long-held lock compromised.
    const { mtime } = statSync(lockDir);
    writeFileSync(staged, token, { flag: 'wx', mode: 0o600 });
    checkpoint('file-write', 'owner-staged');
    linkSync(staged, ownerPath);
    checkpoint('file-write', 'owner-linked');
    utimesSync(lockDir, mtime, mtime);
  } catch (error) {
    quietly(releaseProperLock);
    const code = errnoCode(error);
    // Another process won this lock directory in a stale-lock race, or removed it.
    if (code === 'EEXIST' || code === 'ENOENT') return undefined;
    throw ioError(error, 'take the writer lock', lockDir);
  } finally {
    quietly(() => unlinkSync(staged));
  }

  const acquiredAt = performance.now();
  const lost = (why: string): StoreUnavailableError =>
    new StoreUnavailableError(
      'ERR_GENSYNC_LOCK_TIMEOUT',
      `Lost the writer lock ${lockDir} before writing (${why}); nothing was written.`,
      { path: file },
    );
  return {
    recovered,
    verify(): void {
      if (compromised) throw lost('proper-lockfile reported it compromised');
      if (performance.now() - acquiredAt > staleMs / 2) throw lost(`held for more than ${staleMs / 2} ms`);
      if (readOwner(ownerPath) !== token) throw lost('another process owns it now');
    },
    release(): void {
      if (readOwner(ownerPath) === token) quietly(() => unlinkSync(ownerPath));
      checkpoint('file-write', 'owner-removed');
      quietly(releaseProperLock);
      yieldToWaiters(file);
    },
  };
}

function readOwner(ownerPath: string): string | undefined {
  try {
    return readFileSync(ownerPath, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * If the lock's owner is dead (or its owner file is stale), remove the lock
 * so the next attempt can take it. Returns whether it removed one.
 */
function removeDeadLock(lockDir: string, ownerPath: string, staleMs: number): boolean {
  const content = readOwner(ownerPath);
  if (content === undefined) return removeOwnerlessLock(lockDir);
  if (!ownerIsGone(content, staleMs)) return false;

  // Claim this exact owner file atomically, so only one waiter cleans up.
  const claimed = join(lockDir, `${OWNER_FILE}.dead-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    renameSync(ownerPath, claimed);
  } catch {
    return false;
  }
  if (readOwner(claimed) !== content) {
    // A live owner replaced the dead one in between: give its file back.
    quietly(() => linkSync(claimed, ownerPath));
    quietly(() => unlinkSync(claimed));
    return false;
  }
  quietly(() => unlinkSync(claimed));
  quietly(() => rmdirSync(lockDir));
  return true;
}

/**
 * A lock directory with no owner file: its holder is between mkdir and
 * linking its owner file, which takes microseconds — or died there. After
 * OWNERLESS_GRACE_MS it is dead: remove the (empty) directory. A holder
 * that was merely stopped that long finds its directory gone when it links
 * its owner file, and tries again.
 */
function removeOwnerlessLock(lockDir: string): boolean {
  let stats;
  try {
    stats = statSync(lockDir);
  } catch {
    return false;
  }
  if (Date.now() - stats.mtimeMs < OWNERLESS_GRACE_MS) return false;
  try {
    rmdirSync(lockDir);
    return true;
  } catch {
    return false; // not empty after all (an owner appeared), or already gone
  }
}

function ownerIsGone(content: string, staleMs: number): boolean {
  let owner: Partial<OwnerRecord>;
  try {
    owner = JSON.parse(content) as Partial<OwnerRecord>;
  } catch {
    return true; // an owner file we cannot read was not written by a live holder of this code
  }
  if (typeof owner.createdAt !== 'number' || Date.now() - owner.createdAt > staleMs) return true;
  if (owner.host !== hostname() || typeof owner.pid !== 'number') return false;
  // A pid is only evidence in the PID namespace and boot it came from: elsewhere the holder may be alive and
  // invisible (another container of the pod), and only the age above may declare it gone.
  const scope = processScope();
  if (owner.pidNamespace !== scope.pidNamespace || owner.boot !== scope.boot) return false;
  return !processIsAlive(owner.pid);
}

/**
 * Fairness. A process that writes in a loop releases the lock and takes it
 * again within microseconds, while waiters sleep between attempts, so
 * without help they starve. Waiters touch a "wanted" file; a releaser that
 * sees it touched lately pauses briefly, long enough for a waiter's next
 * attempt. Uncontended writes never pause.
 */
function announceWaiting(file: string): void {
  const wanted = `${file}.lock-wanted`;
  const now = new Date();
  try {
    utimesSync(wanted, now, now);
  } catch {
    quietly(() => closeSync(openSync(wanted, 'a', 0o600)));
  }
}

function yieldToWaiters(file: string): void {
  let stats;
  try {
    stats = statSync(`${file}.lock-wanted`, { throwIfNoEntry: false });
  } catch {
    return;
  }
  if (stats !== undefined && Date.now() - stats.mtimeMs < WAITER_RECENT_MS) pause(COURTESY_PAUSE_MS);
}

function quietly(action: () => void): void {
  try {
    action();
  } catch {
    // Best effort: the lock protocol stays safe without it.
  }
}

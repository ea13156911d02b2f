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
 *   both "win". Each winner must also create an `owner` record inside the
 *   lock directory (a symlink, which like O_EXCL refuses an existing name):
 *   only one can. A lock directory holding it cannot be removed by another
 *   process's stale check (rmdir fails on a non-empty directory), so the
 *   owner record decides who holds the lock.
 * - A process writing in a loop would starve the others; see
 *   {@link announceWaiting}.
 * - A holder that is gone leaves its lock behind. Its owner record names it
 *   (holder.ts: pid, PID namespace, boot, thread and thread start time): a
 *   waiter that can see it is gone removes the lock at once. A holder
 *   nobody can see (another host, another container) or that hangs is
 *   taken over once its record is older than the stale time.
 * - Taking over a lock from a holder that is only slow must not let that
 *   holder publish what it read before. That safety never rests on time:
 *   each holder builds the file it publishes in its own staging directory,
 *   named in its owner record, and whoever takes the lock over removes that
 *   directory before the lock can be taken again. The slow holder's rename
 *   into place then fails (a removed directory holds nothing and accepts
 *   nothing, even for a process that looked it up before), so every
 *   publication is made under a lock nobody else has held since its read.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  constants,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  statSync,
  unlinkSync,
  lutimesSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

import type * as ProperLockfile from 'proper-lockfile';

import { StoreUnavailableError } from '../../store/errors';
import { errnoCode, ioError, removeStagingDirectory, stagingDirectoryName } from '../../system/filesystem';
import { holderIsGone, thisHolder, type Holder } from '../../system/holder';
import { checkpoint } from '../../system/checkpoints';
import { retryUntil } from '../../system/lock-wait';
import { pause } from '../../system/pause';

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
/** Owner files a cleaner has claimed (renamed) before removing a dead lock: `owner.dead-…`. */
const CLAIMED_PREFIX = `${OWNER_FILE}.dead-`;
/** A releaser that saw a waiter within this many ms pauses before it can take the lock again. */
const WAITER_RECENT_MS = 20;
/** Longer than the longest pause between a waiter's tries (1 ms, lock-wait.ts), so a waiter gets its turn. */
const COURTESY_PAUSE_MS = 2;
/** A lock directory that has had no owner file for this long belongs to a process that died taking it. */
const OWNERLESS_GRACE_MS = 500;

/** What a lock's owner file says: who holds it (see holder.ts), since when, and where it stages its writes. */
interface OwnerRecord extends Holder {
  readonly createdAt: number;
  readonly nonce: string;
  /** The name (beside the store) of the directory where this holder builds the files it publishes. */
  readonly staging?: string | undefined;
}

/** Each thread's staging directory per store file (this module is loaded once per thread). */
const stagingDirectories = new Map<string, string>();

/**
 * This thread's staging directory for `file`, made when there is none.
 * Once a cleaner removed it (because it took over a lock of ours), it is
 * never made again under that name: a new one gets a new random name.
 */
function stagingDirectoryOf(file: string): string {
  const known = stagingDirectories.get(file);
  if (known !== undefined && lstatSync(known, { throwIfNoEntry: false })?.isDirectory() === true) return known;
  const made = stagingDirectoryName(file);
  mkdirSync(made, { mode: 0o700 });
  chmodSync(made, 0o700); // exactly, whatever the umask
  stagingDirectories.set(file, made);
  return made;
}

/** Remove this thread's staging directory for `file`, if it has one (its last store on that file closed). */
export function removeOwnStagingDirectory(file: string): void {
  const dir = stagingDirectories.get(file);
  if (dir === undefined) return;
  stagingDirectories.delete(file);
  removeStagingDirectory(dir);
}

/** The staging directory an owner record names, if the name is one this code makes for `file`. */
function stagingDirectoryNamed(file: string, record: Partial<OwnerRecord>): string | undefined {
  const name = record.staging;
  const ours = `${basename(file)}.w.`;
  if (typeof name !== 'string' || !name.startsWith(ours) || name.includes('/') || name.includes('\0')) return undefined;
  return join(dirname(file), name);
}

/** A writer lock this process holds. */
export interface HeldFileLock {
  /** Whether taking it meant removing a lock left by a process that died: its leftovers may need tidying. */
  readonly recovered: boolean;
  /**
   * Where to build a file to publish under this lock. Whoever takes the
   * lock over removes this directory first, so a file built here can be
   * renamed into place only while nobody else can have written since this
   * lock was taken: a rename from it that fails with ENOENT means the lock
   * was lost (see {@link lostLockError}).
   */
  readonly staging: string;
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
  let recovered = false;
  const held = retryUntil(
    options.timeoutMs,
    () => tryAcquire(file, lockDir, ownerPath, options.staleMs, recovered),
    () => {
      if (removeDeadLock(file, lockDir, ownerPath, options.staleMs)) recovered = true;
      announceWaiting(file);
    },
  );
  if (held !== undefined) return held;
  throw new StoreUnavailableError(
    'ERR_GENSYNC_LOCK_TIMEOUT',
    `Another process held the writer lock ${lockDir} for more than ${options.timeoutMs} ms. ` +
      'A process may be stopped (SIGSTOP) or hung while writing: resume or kill it. ' +
      `A lock whose holder died is removed automatically (at once on this host, else after ${options.staleMs} ms).`,
    { path: file },
  );
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

  let staging: string;
  try {
    staging = stagingDirectoryOf(file);
  } catch (error) {
    quietly(releaseProperLock);
    throw ioError(error, 'make a writer staging directory beside', file);
  }
  const owner: OwnerRecord = {
    ...thisHolder(),
    createdAt: Date.now(),
    nonce: randomBytes(8).toString('hex'),
    staging: basename(staging),
  };
  const token = JSON.stringify(owner);
  try {
    checkpoint('file-write', 'owner-staged');
    // The owner record is a symbolic link whose target is the record: made whole in one step, refused
    // if the name exists (like O_EXCL), and read in one readlink, so nobody sees a half-written record.
    // (Adding it changes the directory's mtime, by which proper-lockfile's refresh timer judges its lock:
    // a hold longer than half the stale time is then reported compromised, and such a hold never writes.)
    if (OWNER_AS_SYMLINK) symlinkSync(token, ownerPath);
    else linkOwnerFile(lockDir, ownerPath, token);
    checkpoint('file-write', 'owner-linked');
  } catch (error) {
    quietly(releaseProperLock);
    const code = errnoCode(error);
    // Another process won this lock directory in a stale-lock race, or removed it.
    if (code === 'EEXIST' || code === 'ENOENT') return undefined;
    throw ioError(error, 'take the writer lock', lockDir);
  }

  const acquiredAt = performance.now();
  const lost = (why: string): StoreUnavailableError => lostLockError(file, why);
  return {
    recovered,
    staging,
    verify(): void {
      if (performance.now() - acquiredAt > staleMs / 2) throw lost(`held for more than ${staleMs / 2} ms`);
      if (compromised) throw lost('proper-lockfile reported it compromised');
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

/** The error for a write that found its lock lost (`why`) and so published nothing. */
export function lostLockError(file: string, why: string): StoreUnavailableError {
  return new StoreUnavailableError(
    'ERR_GENSYNC_LOCK_LOST',
    `Lost the writer lock ${file}.lock before writing (${why}); nothing was written.`,
    { path: file },
  );
}

/**
 * Whether owner records are symlinks. Windows lets only privileged users make
 * symlinks, and a record is not a path it would accept: there a record is a
 * file, written whole under another name and hard-linked into place (which,
 * like the symlink, refuses an existing name and is never seen half-written).
 */
const OWNER_AS_SYMLINK = process.platform !== 'win32';

function linkOwnerFile(lockDir: string, ownerPath: string, token: string): void {
  const staged = join(lockDir, `${CLAIMED_PREFIX}new-${process.pid}-${randomBytes(4).toString('hex')}`);
  writeFileSync(staged, token, { flag: 'wx' });
  try {
    linkSync(staged, ownerPath);
  } finally {
    quietly(() => unlinkSync(staged));
  }
}

/** An owner record: the target of the owner symlink, or a file's content (Windows, and versions before 0.2). */
function readOwner(ownerPath: string): string | undefined {
  try {
    return readlinkSync(ownerPath);
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
  }
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
function removeDeadLock(file: string, lockDir: string, ownerPath: string, staleMs: number): boolean {
  const content = readOwner(ownerPath);
  if (content === undefined) return removeOwnerlessLock(file, lockDir);
  if (!ownerIsGone(content, staleMs)) return false;

  // Claim this exact owner file atomically, so only one waiter cleans up.
  const claimed = join(lockDir, `${CLAIMED_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
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
  return finishRemoval(file, lockDir, claimed, content);
}

/**
 * The fence. Before the lock can be taken again, the staging directory of
 * the holder being removed is emptied and removed, so that a holder that is
 * only slow (stopped, swapping, a clock jump made it look stale) can no
 * longer publish what it read before: its rename out of that directory now
 * fails. Only then do the claimed owner file and the lock directory go. If
 * the directory cannot be removed, the claimed file stays and keeps the
 * lock closed; a later waiter finishes the job (see removeOwnerlessLock).
 */
function finishRemoval(file: string, lockDir: string, claimed: string, content: string): boolean {
  let record: Partial<OwnerRecord> = {};
  try {
    record = JSON.parse(content) as Partial<OwnerRecord>;
  } catch {
    // not written by this code: it names no staging directory
  }
  const staging = stagingDirectoryNamed(file, record);
  if (staging !== undefined && !removeStagingDirectory(staging)) return false;
  quietly(() => unlinkSync(claimed));
  quietly(() => rmdirSync(lockDir));
  return true;
}

/**
 * A lock directory with no owner file: its holder is between mkdir and
 * linking its owner file, which takes microseconds — or died there; or a
 * cleaner that claimed a dead owner's file died before finishing. After
 * OWNERLESS_GRACE_MS it is dead: finish any claimed removal and remove the
 * directory. A holder that was merely stopped that long finds its
 * directory gone when it links its owner file, and tries again.
 */
function removeOwnerlessLock(file: string, lockDir: string): boolean {
  let stats;
  let names: string[];
  try {
    stats = statSync(lockDir);
    names = readdirSync(lockDir);
  } catch {
    return false;
  }
  const now = Date.now();
  for (const name of names) {
    if (!name.startsWith(CLAIMED_PREFIX)) continue;
    const claimed = join(lockDir, name);
    const content = readOwner(claimed);
    const claimedAt = statSync(claimed, { throwIfNoEntry: false })?.ctimeMs;
    if (content === undefined || claimedAt === undefined || now - claimedAt < OWNERLESS_GRACE_MS) return false;
    if (!finishRemoval(file, lockDir, claimed, content)) return false;
  }
  if (now - stats.mtimeMs < OWNERLESS_GRACE_MS) return false;
  try {
    rmdirSync(lockDir);
    return true;
  } catch {
    return false; // not empty after all (an owner appeared), or already gone
  }
}

/**
 * Whether the lock's owner is gone: provably (see holder.ts), or judged so
 * by the age of its owner file. The age is only a liveness fallback for
 * holders this process cannot see or that hang: taking over from a holder
 * that is merely slow is safe, because of the fence in finishRemoval.
 */
function ownerIsGone(content: string, staleMs: number): boolean {
  let owner: Partial<OwnerRecord>;
  try {
    owner = JSON.parse(content) as Partial<OwnerRecord>;
  } catch {
    return true; // an owner file we cannot read was not written by a live holder of this code
  }
  if (typeof owner.createdAt !== 'number' || Date.now() - owner.createdAt > staleMs) return true;
  return holderIsGone(owner);
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
    lutimesSync(wanted, now, now); // never through a symbolic link
  } catch {
    quietly(() => closeSync(openSync(wanted, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600)));
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

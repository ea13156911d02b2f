/**
 * File checks shared by the file-backed stores: where the default store
 * lives, and what makes a path safe to share state through.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { randomBytes } from 'node:crypto';
import { chmodSync, constants, linkSync, lstatSync, mkdirSync, readdirSync, readlinkSync, rmdirSync, statfsSync, unlinkSync, type Stats } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';

import { InvalidArgumentError, OutOfRangeError, StoreError, UnsafeStoreError } from '../store/errors';
import { holderIsGone, scopeTag, thisHolder } from './holder';
import { describe, optionalInteger } from '../store/validate';

/** Environment variable naming the directory of the default store. */
export const DIRECTORY_ENV = 'GENERATION_SYNC_DIR';

/** Mode of store files unless the caller asks for another. */
export const DEFAULT_FILE_MODE = 0o600;

/** Mode of the default store directory. */
export const DIRECTORY_MODE = 0o700;

/** The file names of the two local stores in a directory (the default directory, or one an application picks). */
export const STORE_FILE_NAMES = { shm: 'generations.shm', file: 'generations.json' } as const;

const mixedStoresReported = new Set<string>();

/**
 * Processes that share a directory but end up on different kinds of local
 * store (the addon loads in some and not in others: a bundle and the CLI,
 * Alpine and Debian containers, hosts without a compiler) never see each
 * other's changes. If the other kind's file is beside `path`, say so once
 * per process and path (`GENSYNC_MIXED_STORES`, unless `warn` is false), and
 * return its path.
 */
export function otherStoreBeside(path: string, kind: keyof typeof STORE_FILE_NAMES, warn = true): string | undefined {
  const otherKind = kind === 'shm' ? 'file' : 'shm';
  const other = join(dirname(path), STORE_FILE_NAMES[otherKind]);
  let stats: Stats;
  try {
    stats = lstatSync(other);
  } catch {
    return undefined;
  }
  if (!stats.isFile() || other === path) return undefined;
  if (warn && !mixedStoresReported.has(path)) {
    mixedStoresReported.add(path);
    const name = (which: 'shm' | 'file'): string => (which === 'shm' ? 'shared-memory' : 'file');
    process.emitWarning(
      `generation-sync: ${path} is a ${name(kind)} store, and ${other} beside it is a ${name(otherKind)} store: ` +
        'processes on one do not see changes made on the other. Make every process use the same kind (install the ' +
        'native addon everywhere, see "generation-sync doctor", or set GENERATION_SYNC_STORE=file in all of them), ' +
        'then remove the file nobody uses.',
      { type: 'GenerationSyncWarning', code: 'GENSYNC_MIXED_STORES' },
    );
  }
  return other;
}

/** Permission bits that would let other users write the store. */
const OTHERS_WRITE = 0o002;

/**
 * Whether the file system's mode bits and owners mean what POSIX says. On
 * Windows, Node reports every writable file as mode 0666 and every owner as
 * 0: access is governed by ACLs, which it does not show. There the mode and
 * owner checks are skipped (the store relies on the directory's ACL: the
 * default directory is in the user's own temp directory), and the rest
 * (regular files only, one link, no reparse tricks through symlinks) stays.
 */
const POSIX_PERMISSIONS = process.platform !== 'win32';

/**
 * `statfs` magic numbers of filesystems on which a shared mapping or a
 * rename is not coherent between processes on different hosts.
 */
const NETWORK_FILESYSTEMS: ReadonlyMap<number, string> = new Map([
  [0x6969, 'NFS'],
  [0x517b, 'SMB'],
  [0xff534d42, 'CIFS'],
  [0xfe534d42, 'SMB2'],
  [0x65735546, 'FUSE'],
  [0x00c36400, 'Ceph'],
  [0x5346414f, 'AFS'],
  [0x73757245, 'Coda'],
  [0x01021997, '9P'],
  [0x01161970, 'GFS2'],
  [0x7461636f, 'OCFS2'],
  [0x0bd00bd0, 'Lustre'],
  [0x564c, 'NCP'],
]);

/** The name of a network filesystem type, or undefined for a local one. */
export function networkFilesystemName(type: number): string | undefined {
  return NETWORK_FILESYSTEMS.get(type);
}

/** The current user's id, or undefined where the platform has none (Windows). */
export function currentUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

/** The directory of the default store: `$GENERATION_SYNC_DIR`, else a private directory under the OS temp dir. */
export function defaultDirectory(): string {
  const configured = process.env[DIRECTORY_ENV];
  if (configured !== undefined && configured !== '') return configured;
  return join(tmpdir(), `generation-sync-${currentUid() ?? 'user'}`);
}

/** Wrap a system error from `action` on `path` into a {@link StoreError} that keeps it as `cause`. */
export function ioError(cause: unknown, action: string, path: string): StoreError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new StoreError('ERR_GENSYNC_STORE_IO', `Could not ${action} ${path}: ${reason}`, { cause, path });
}

export function errnoCode(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string'
    ? error.code
    : undefined;
}

/**
 * Make sure `dir` exists, is a real directory owned by this user, and that
 * no other user can write into it. A missing directory is created with
 * mode 0700. The default directory is also tightened back to 0700 if its
 * mode was loosened; a directory the user configured keeps its mode as long
 * as other users cannot write to it.
 */
export function ensurePrivateDirectory(dir: string, isDefault: boolean): void {
  try {
    const created = mkdirSync(dir, { mode: DIRECTORY_MODE, recursive: true });
    // mkdir's mode is filtered by the umask; set it exactly.
    if (created !== undefined) chmodSync(dir, DIRECTORY_MODE);
  } catch (error) {
    throw ioError(error, 'create the store directory', dir);
  }
  let stats: Stats;
  try {
    stats = lstatSync(dir);
  } catch (error) {
    throw ioError(error, 'inspect the store directory', dir);
  }
  const advice = `Set ${DIRECTORY_ENV} to a directory that this application's user owns and others cannot write.`;
  if (stats.isSymbolicLink() || !stats.isDirectory()) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `The store directory ${dir} is a ${fileKind(stats)}, not a directory. ${advice}`,
      { path: dir },
    );
  }
  const uid = currentUid();
  if (uid !== undefined && stats.uid !== uid) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `The store directory ${dir} belongs to user ${stats.uid}, not to this process's user ${uid}, ` +
        `so another user could tamper with the store. ${advice}`,
      { path: dir },
    );
  }
  if (!POSIX_PERMISSIONS) return;
  if (isDefault && (stats.mode & 0o077) !== 0) {
    try {
      chmodSync(dir, DIRECTORY_MODE);
    } catch (error) {
      throw ioError(error, 'restrict the permissions of', dir);
    }
  } else if (!isDefault && (stats.mode & OTHERS_WRITE) !== 0) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `The store directory ${dir} is writable by every user (mode ${(stats.mode & 0o7777).toString(8)}). ${advice}`,
      { path: dir },
    );
  }
}

/** How many symbolic links a store directory's path may pass through (as the kernel's own limit). */
const MAX_LINKS_FOLLOWED = 40;
const STICKY = 0o1000;
const GROUP_WRITE = 0o020;

/**
 * Check every directory on the way to `dir` (and every symbolic link met on
 * the way): each must belong to root or to this user, and none may be
 * writable by other users, unless it is sticky (like /tmp, where others
 * cannot rename or remove what is ours) or writable only by this process's
 * own group. Then nobody else can swap a directory on the path, so the path
 * names the same place each time it is resolved again. Run at every open
 * and re-open of a store file. Does nothing where the system has no uids.
 */
export function checkDirectoryChain(dir: string): void {
  const uid = currentUid();
  if (uid === undefined) return;
  const gid = process.getgid?.();
  const refuse = (path: string, why: string): UnsafeStoreError =>
    new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `The store directory ${dir} is reached through ${path}, which ${why}, so another user could swap it for a ` +
        `directory of their choosing. Keep the store under directories that only root and this user can change.`,
      { path: dir },
    );
  const check = (path: string, stats: Stats): void => {
    if (stats.uid !== 0 && stats.uid !== uid) throw refuse(path, `belongs to user ${stats.uid}`);
    if (stats.isSymbolicLink() || (stats.mode & STICKY) !== 0) return;
    if ((stats.mode & OTHERS_WRITE) !== 0) throw refuse(path, `is writable by every user (mode ${(stats.mode & 0o7777).toString(8)})`);
    if ((stats.mode & GROUP_WRITE) !== 0 && stats.gid !== gid) throw refuse(path, `is writable by group ${stats.gid}`);
  };
  let pending = resolve(dir).split('/').filter((part) => part !== '');
  let current = '/';
  let followed = 0;
  try {
    check('/', lstatSync('/'));
    while (pending.length > 0) {
      const name = pending.shift() as string;
      if (name === '.') continue;
      if (name === '..') {
        current = dirname(current);
        continue;
      }
      const next = join(current, name);
      const stats = lstatSync(next);
      check(next, stats);
      if (stats.isSymbolicLink()) {
        if (++followed > MAX_LINKS_FOLLOWED) throw refuse(next, 'leads through too many symbolic links');
        const target = readlinkSync(next);
        if (target.startsWith('/')) current = '/';
        pending = [...target.split('/').filter((part) => part !== ''), ...pending];
        continue;
      }
      if (!stats.isDirectory()) throw refuse(next, `is a ${fileKind(stats)}, not a directory`);
      current = next;
    }
  } catch (error) {
    if (error instanceof UnsafeStoreError) throw error;
    throw ioError(error, 'inspect the directories leading to', dir);
  }
}

/** The default store directory, created and checked. */
export function preparedDefaultDirectory(): string {
  const configured = process.env[DIRECTORY_ENV];
  const dir = defaultDirectory();
  ensurePrivateDirectory(dir, configured === undefined || configured === '');
  return dir;
}

/**
 * Check an open store file: a regular file with one link, owned by this
 * user, not writable by others, on a local filesystem.
 */
export function checkStoreFile(stats: Stats, path: string): void {
  if (!stats.isFile()) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `${path} is a ${fileKind(stats)}, not a regular file, so it cannot be a store. Use another path.`,
      { path },
    );
  }
  if (stats.nlink !== 1) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `${path} has ${stats.nlink} hard links; a store file must have exactly one, ` +
        'so that no other name can change it unseen. Use a fresh path.',
      { path },
    );
  }
  const uid = currentUid();
  if (uid !== undefined && stats.uid !== uid) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `${path} belongs to user ${stats.uid}, not to this process's user ${uid}. ` +
        'Every process sharing a store must run as the user who owns its file.',
      { path },
    );
  }
  if (POSIX_PERMISSIONS && (stats.mode & OTHERS_WRITE) !== 0) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_UNSAFE_FILE',
      `${path} is writable by every user (mode ${(stats.mode & 0o777).toString(8)}), so any local user could corrupt it. ` +
        'Remove the file or chmod o-w it.',
      { path },
    );
  }
}

/** Refuse a path on a network filesystem, where shared memory and renames are not coherent between hosts. */
export function checkLocalFilesystem(path: string): void {
  let type: number;
  try {
    type = statfsSync(path).type;
  } catch (error) {
    throw ioError(error, 'find the filesystem of', path);
  }
  const name = networkFilesystemName(type);
  if (name !== undefined) {
    throw new UnsafeStoreError(
      'ERR_GENSYNC_NETWORK_FILESYSTEM',
      `${path} is on a ${name} filesystem, where shared mappings and file renames are not coherent ` +
        `between processes. Put the store on a local disk the application owns (set ${DIRECTORY_ENV}, for example to /var/lib/myapp/generation-sync).`,
      { path },
    );
  }
}

/** How long a store waits for another process's lock, unless told otherwise. */
export const DEFAULT_LOCK_TIMEOUT_MS = 5000;

/** The `mode` option of the file-backed stores, checked (default 0o600). */
export function fileModeOption(value: unknown): number {
  return checkFileMode(optionalInteger(value, 'mode', DEFAULT_FILE_MODE, { min: 0, max: 0o777 }));
}

/** The `lockTimeoutMs` option of the file-backed stores, checked (default 5000). */
export function lockTimeoutOption(value: unknown): number {
  return optionalInteger(value, 'lockTimeoutMs', DEFAULT_LOCK_TIMEOUT_MS, { min: 0, max: 2 ** 31 - 1 });
}

/** Checks a file `mode` option: owner read-write, never writable by others. */
export function checkFileMode(mode: number): number {
  if ((mode & 0o600) !== 0o600 || (mode & OTHERS_WRITE) !== 0 || (mode & ~0o777) !== 0) {
    throw new OutOfRangeError(
      `Option "mode" must give the owner read and write and must not let other users write ` +
        `(for example 0o600 or 0o660), not 0o${mode.toString(8)}.`,
    );
  }
  return mode;
}

function fileKind(stats: Stats): string {
  if (stats.isSymbolicLink()) return 'symbolic link';
  if (stats.isDirectory()) return 'directory';
  if (stats.isFIFO()) return 'FIFO';
  if (stats.isSocket()) return 'socket';
  if (stats.isCharacterDevice() || stats.isBlockDevice()) return 'device';
  return 'regular file';
}

/** Flags for reading a store file: never through a symlink, never blocking on a FIFO. */
export const OPEN_READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Flags for opening an existing store file: read-write, never through a symlink, never blocking on a FIFO. */
export const OPEN_EXISTING = constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Flags for creating a store file that must not exist yet. */
export const OPEN_NEW = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/**
 * Publish a complete file, built under `temporary`, as `file` only if no
 * file is there yet. Losing that race is not an error: the caller opens the
 * winner's file. Uses `renameNoReplace` where given and supported, otherwise
 * a hard link (which also refuses to replace); the caller removes
 * `temporary` afterwards in either case.
 */
export function publishWithoutReplacing(
  temporary: string,
  file: string,
  renameNoReplace?: (from: string, to: string) => void,
): void {
  if (renameNoReplace !== undefined) {
    try {
      renameNoReplace(temporary, file);
      return;
    } catch (error) {
      const code = errnoCode(error);
      if (code === 'EEXIST') return;
      if (code !== 'ENOSYS' && code !== 'EINVAL' && code !== 'ENOTSUP') throw error;
    }
  }
  try {
    linkSync(temporary, file);
  } catch (error) {
    if (errnoCode(error) !== 'EEXIST') throw error;
  }
}

/** Checks a store path argument and makes it absolute. */
export function storePathArgument(path: unknown): string {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
    throw new InvalidArgumentError(`The store path must be a non-empty string without NUL bytes, not ${describe(path)}.`);
  }
  return resolve(path);
}

/** The typed error for a failed open of a store file. */
export function openFailure(error: unknown, file: string): StoreError {
  switch (errnoCode(error)) {
    case 'ELOOP':
    case 'EMLINK':
      return new UnsafeStoreError(
        'ERR_GENSYNC_UNSAFE_FILE',
        `${file} is a symbolic link; a store is never opened through one, so that nobody can redirect it. ` +
          'Point the store at the real file.',
        { path: file },
      );
    case 'EISDIR':
      return new UnsafeStoreError('ERR_GENSYNC_UNSAFE_FILE', `${file} is a directory, not a store file. Use another path.`, {
        path: file,
      });
    default:
      return ioError(error, 'open the store', file);
  }
}

/** `<file>.<pid>-<scope>-<thread>.`: how the names of a thread's leftovers beside `file` begin after their kind. */
function leftoverStem(): string {
  const { pid, thread } = thisHolder();
  return `${pid}-${scopeTag()}-${thread ?? 0}.${randomBytes(6).toString('hex')}`;
}

/** A unique name beside `file` for a temporary file that this thread builds and then publishes. */
export function temporaryName(file: string): string {
  return `${file}.${leftoverStem()}.tmp`;
}

/** A unique name beside `file` for this thread's writer staging directory (see file-lock.ts). */
export function stagingDirectoryName(file: string): string {
  return `${file}.w.${leftoverStem()}`;
}

/**
 * The pattern of the names above (after `<file>.`): kind, pid, scope tag, thread. Older versions wrote
 * `<pid>.` alone, and staged lock owner files as `owner.<pid>.<nonce>`.
 */
const LEFTOVER = /^(owner\.|w\.)?(\d+)(?:-([0-9a-f]{8})-(\d+))?\.[0-9a-f]+(\.tmp)?$/;

/**
 * Remove what a thread that is gone left beside a store file: temporaries,
 * staged lock owner files, and writer staging directories (with what is in
 * them). Only leftovers whose maker is provably gone are touched: same PID
 * namespace and boot (the scope tag in the name), and the thread or process
 * no longer there.
 */
export function removeAbandonedFiles(file: string): void {
  const dir = dirname(file);
  const prefix = `${basename(file)}.`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const match = LEFTOVER.exec(name.slice(prefix.length));
    if (match === null) continue;
    const [, kind, pid, tag, thread, tmp] = match;
    if (kind === undefined ? tmp === undefined : tmp !== undefined) continue; // temporaries end in .tmp, nothing else does
    if (tag !== undefined && tag !== scopeTag()) continue;
    if (!leftoverMakerIsGone(Number(pid), thread === undefined ? 0 : Number(thread))) continue;
    if (kind === 'w.') removeStagingDirectory(join(dir, name));
    else quietly(() => unlinkSync(join(dir, name)));
  }
}

function leftoverMakerIsGone(pid: number, thread: number): boolean {
  // The caller checked the scope tag (or the name is from a version that wrote none): judge it as a holder here.
  return holderIsGone({ ...thisHolder(), pid, thread: thread > 0 ? thread : undefined, threadStart: undefined });
}

/**
 * Empty and remove a writer staging directory, so that whatever its writer
 * still tries there fails: a file cannot be created in, or renamed out of,
 * a directory that was removed, even by a writer that looked it up before.
 * Returns whether it is gone. A writer creates at most one file there per
 * write, so a few rounds always suffice.
 */
export function removeStagingDirectory(dir: string): boolean {
  for (let round = 0; round < 20; round++) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return true;
      return false;
    }
    for (const name of names) quietly(() => unlinkSync(join(dir, name)));
    try {
      rmdirSync(dir);
      return true;
    } catch (error) {
      const code = errnoCode(error);
      if (code === 'ENOENT') return true;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') return false;
    }
  }
  return false;
}

function quietly(action: () => void): void {
  try {
    action();
  } catch {
    // already gone, or not ours to remove
  }
}

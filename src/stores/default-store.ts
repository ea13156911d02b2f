/**
 * The process-wide default store, and how it is chosen.
 *
 * @module
 */

import { join } from 'node:path';

import { OutOfRangeError, UnsafeStoreError } from '../store/errors';
import { FILE_STORE_NAME, FileStore } from './file/file-store';
import { defaultDirectory, DIRECTORY_ENV } from '../system/filesystem';
import { ADDON_ENV, addonStatus } from './shm/native';
import { SHM_FILE_NAME, SharedMemoryStore } from './shm/shm-store';
import type { Store } from '../store/store';
import { UnreachableStore } from './unreachable-store';
import { trace } from '../store/trace';

/** Environment variable that forces the default store's kind: `shm` or `file`. */
export const STORE_ENV = 'GENERATION_SYNC_STORE';

/** Which store {@link defaultStore} opens, and why. */
export interface DefaultStoreChoice {
  readonly kind: 'shm' | 'file';
  /** Where its file is, or would be. */
  readonly path: string;
  /** Why this kind: forced by the environment, or chosen by whether the addon loads. */
  readonly reason: string;
}

let current: Store | undefined;
let warned = false;
let warnedUnsafe = false;

/**
 * Which store {@link defaultStore} opens: the shared-memory store when the
 * native addon loads, the file store otherwise; `GENERATION_SYNC_STORE=shm`
 * or `=file` forces one. Does not open anything.
 */
export function defaultStoreChoice(): DefaultStoreChoice {
  const forced = process.env[STORE_ENV];
  const dir = defaultDirectory();
  const shm = (reason: string): DefaultStoreChoice => ({ kind: 'shm', path: join(dir, SHM_FILE_NAME), reason });
  const file = (reason: string): DefaultStoreChoice => ({ kind: 'file', path: join(dir, FILE_STORE_NAME), reason });
  if (forced === 'shm') return shm(`${STORE_ENV}=shm`);
  if (forced === 'file') return file(`${STORE_ENV}=file`);
  if (forced !== undefined && forced !== '') {
    throw new OutOfRangeError(`${STORE_ENV} must be "shm", "file" or unset, not ${JSON.stringify(forced)}.`);
  }
  const status = addonStatus();
  if (!('error' in status)) return shm(`the native addon loads from ${status.path}`);
  // An addon named on purpose that does not load is a mistake to report (opening throws the load error), not a
  // reason to use another kind of store than the other processes, which may load it.
  const named = process.env[ADDON_ENV];
  return named !== undefined && named !== '' ? shm(`${ADDON_ENV}=${named}`) : file(status.error.message);
}

/**
 * The store every synchronizer uses unless given another: one per process,
 * opened on first use, in `$GENERATION_SYNC_DIR` or else
 * `<os.tmpdir()>/generation-sync-<uid>/`.
 *
 * It is the shared-memory store (`generations.shm`) when the native addon
 * loads. Otherwise it is the file store (`generations.json`), and the
 * process gets one warning that says why and how to get the native store.
 * `GENERATION_SYNC_STORE=file` forces the file store;
 * `GENERATION_SYNC_STORE=shm` forces the shared-memory store and throws
 * {@link AddonUnavailableError} where it cannot load, rather than fall
 * back silently; so does `GENERATION_SYNC_ADDON` naming an addon file that
 * does not exist or does not load. Every process sharing state must use the same kind.
 *
 * If the store was closed, the next call opens it again. In production,
 * set `GENERATION_SYNC_DIR` to a directory on local disk that the
 * application owns: temp cleaners and `systemd`'s `PrivateTmp=` can hide or
 * remove files in the temp directory.
 */
export function defaultStore(): Store {
  if (current !== undefined && !current.closed) return current;
  const choice = defaultStoreChoice();
  if (trace.enabled) trace('default store: %s at %s (%s)', choice.kind, choice.path, choice.reason);
  const open = (): Store => (choice.kind === 'shm' ? SharedMemoryStore.open() : FileStore.open());
  if (choice.kind === 'file' && process.env[STORE_ENV] !== 'file' && !warned) {
    warned = true;
    process.emitWarning(
      `generation-sync is using the slower JSON file store at ${choice.path}. ${choice.reason}`,
      { type: 'GenerationSyncWarning', code: 'GENSYNC_FILE_STORE_FALLBACK' },
    );
  }
  try {
    current = open();
  } catch (error) {
    // Another local user can create the default directory in the shared temp directory first. That must not
    // stop the application: it is an outage (keys read as expired, logged by each synchronizer) that ends once
    // the directory is fixed. A directory the application configured is its own to fix: that still throws.
    const configured = process.env[DIRECTORY_ENV];
    if (!(error instanceof UnsafeStoreError) || (configured !== undefined && configured !== '')) throw error;
    if (!warnedUnsafe) {
      warnedUnsafe = true;
      process.emitWarning(`generation-sync cannot use its default store yet: ${error.message}`, {
        type: 'GenerationSyncWarning',
        code: 'GENSYNC_DEFAULT_DIRECTORY_UNSAFE',
      });
    }
    current = new UnreachableStore(choice.kind, choice.path, error, open);
  }
  return current;
}

/** Where the default store's file is, or would be. */
export function defaultStorePath(): string {
  return defaultStoreChoice().path;
}

/**
 * The process-wide default store.
 *
 * @module
 */

import { join } from 'node:path';

import { defaultDirectory } from './filesystem';
import { SHM_FILE_NAME, SharedMemoryStore } from './shm-store';
import type { Store } from './store';

let current: Store | undefined;

/**
 * The store every synchronizer uses unless given another: one per process,
 * opened on first use at `generations.shm` in `$GENERATION_SYNC_DIR`, or in
 * `<os.tmpdir()>/generation-sync-<uid>/` when that is not set. If it was
 * closed, the next call opens it again.
 *
 * In production, set `GENERATION_SYNC_DIR` to a directory on local disk
 * that the application owns: temp cleaners and `systemd`'s `PrivateTmp=`
 * can hide or remove files in the temp directory.
 */
export function defaultStore(): Store {
  if (current === undefined || current.closed) current = SharedMemoryStore.open();
  return current;
}

/** Where the default store's file is, or would be. */
export function defaultStorePath(): string {
  return join(defaultDirectory(), SHM_FILE_NAME);
}

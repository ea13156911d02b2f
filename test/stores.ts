import { join } from 'node:path';

import { FileStore, SharedMemoryStore, type Store } from 'generation-sync';

/** A kind of store the conformance tests run against, and how worker processes open it. */
export interface StoreKind {
  readonly name: string;
  /** Open (creating) the store of this kind that lives in `dir`. */
  open(dir: string): Store;
  /** Arguments for test/fixtures/store.mjs to open the same store in another process. */
  workerArgs(dir: string): string[];
}

export const STORE_KINDS: readonly StoreKind[] = [
  {
    name: 'shm',
    open: (dir) => SharedMemoryStore.open(join(dir, 'generations.shm')),
    workerArgs: (dir) => ['shm', join(dir, 'generations.shm')],
  },
  {
    name: 'file',
    open: (dir) => FileStore.open(join(dir, 'generations.json')),
    workerArgs: (dir) => ['file', join(dir, 'generations.json')],
  },
];

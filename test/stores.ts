import { basename, join } from 'node:path';

import {
  AsyncGenerationSynchronizer,
  FileStore,
  GenerationSynchronizer,
  RedisStore,
  SharedMemoryStore,
  type AsyncGenerationSynchronizerOptions,
  type AsyncStore,
  type GenerationChange,
  type GenerationSynchronizerOptions,
  type Store,
  type ChangeIterator,
  type ChangesOptions,
  type Unwatch,
  type WaitForChangeOptions,
  type WatchOptions,
} from 'generation-sync';

import { sharedRedisUrl } from './redis-server';

/** A kind of store the conformance tests run against, and how worker processes open it. */
export interface StoreKind {
  readonly name: 'shm' | 'file' | 'redis' | 'ioredis';
  /** Whether the store is asynchronous (usable only through AsyncGenerationSynchronizer). */
  readonly asynchronous: boolean;
  /** Open (creating) the store of this kind that belongs to `dir`, a fresh directory per test. */
  open(dir: string): Promise<Store | AsyncStore>;
  /** Arguments for test/fixtures/store.mjs to open the same store in another process. */
  workerArgs(dir: string): Promise<string[]>;
  /**
   * The generation a key created at `ms` (the synchronizer's clock, in milliseconds since the epoch)
   * starts at; undefined for Redis, which seeds from its own clock (microseconds) whatever the client's says.
   */
  seedFor(ms: number): number | undefined;
  /** For the Redis kinds: the same store on another server (one a test started itself, say with its clock held still). */
  readonly on?: {
    open(url: string, dir: string): Promise<AsyncStore>;
    workerArgs(url: string, dir: string): string[];
  };
}

const ALL_KINDS: readonly StoreKind[] = [
  {
    name: 'shm',
    asynchronous: false,
    open: async (dir) => SharedMemoryStore.open(join(dir, 'generations.shm')),
    workerArgs: async (dir) => ['shm', join(dir, 'generations.shm')],
    seedFor: (ms) => Math.floor(ms / 1000),
  },
  {
    name: 'file',
    asynchronous: false,
    open: async (dir) => FileStore.open(join(dir, 'generations.json')),
    workerArgs: async (dir) => ['file', join(dir, 'generations.json')],
    seedFor: (ms) => Math.floor(ms / 1000),
  },
  {
    name: 'redis',
    asynchronous: true,
    // One server for the whole run; each test gets its own namespace, named after its directory.
    open: async (dir) => RedisStore.connect({ url: sharedRedisUrl(), namespace: `${basename(dir)}:` }),
    workerArgs: async (dir) => ['redis', sharedRedisUrl(), `${basename(dir)}:`],
    seedFor: () => undefined,
    on: {
      open: (url, dir) => RedisStore.connect({ url, namespace: `${basename(dir)}:` }),
      workerArgs: (url, dir) => ['redis', url, `${basename(dir)}:`],
    },
  },
  {
    // The same Redis store through clients of the ioredis package (issue 16).
    name: 'ioredis',
    asynchronous: true,
    open: async (dir) => RedisStore.connect({ url: sharedRedisUrl(), namespace: `${basename(dir)}:`, driver: 'ioredis' }),
    workerArgs: async (dir) => ['ioredis', sharedRedisUrl(), `${basename(dir)}:`],
    seedFor: () => undefined,
    on: {
      open: (url, dir) => RedisStore.connect({ url, namespace: `${basename(dir)}:`, driver: 'ioredis' }),
      workerArgs: (url, dir) => ['ioredis', url, `${basename(dir)}:`],
    },
  },
];

/**
 * The kinds this run tests: all of them, unless GENSYNC_STORE_KINDS names some (.ci/run's emulated arm64 run
 * leaves out ioredis, pure JavaScript that every x64 run covers, to save its time). A name that is not a kind is
 * an error, so a typo cannot silently skip a store.
 */
export const STORE_KINDS: readonly StoreKind[] = (() => {
  const wanted = process.env.GENSYNC_STORE_KINDS;
  if (wanted === undefined || wanted === '') return ALL_KINDS;
  const names = wanted.split(',');
  const unknown = names.filter((name) => !ALL_KINDS.some((kind) => kind.name === name));
  if (unknown.length > 0) throw new Error(`GENSYNC_STORE_KINDS names no store kind: ${unknown.join(', ')} (kinds: ${ALL_KINDS.map((kind) => kind.name).join(', ')})`);
  return ALL_KINDS.filter((kind) => names.includes(kind.name));
})();

/** A synchronizer seen through promises, so one suite runs against both classes. */
export interface Synchronizer {
  readonly cacheKey: string;
  readonly syncGen: number | null;
  isExpired(): Promise<boolean>;
  refresh(): Promise<boolean>;
  clear(): Promise<boolean>;
  markUpdated(): Promise<boolean>;
  watch(listener: (change: GenerationChange) => void, options?: WatchOptions): Unwatch;
  waitForChange(options?: WaitForChangeOptions): Promise<GenerationChange | null>;
  changes(options?: ChangesOptions): ChangeIterator;
  [Symbol.dispose](): void;
}

/** One synchronizer class over one store kind. */
export interface Subject {
  readonly name: string;
  readonly kind: StoreKind;
  create(key: string | readonly string[], options: AsyncGenerationSynchronizerOptions): Promise<Synchronizer>;
}

function promised(sync: GenerationSynchronizer): Synchronizer {
  return {
    get cacheKey() {
      return sync.cacheKey;
    },
    get syncGen() {
      return sync.syncGen;
    },
    isExpired: async () => sync.isExpired(),
    refresh: async () => sync.refresh(),
    clear: async () => sync.clear(),
    markUpdated: async () => sync.markUpdated(),
    watch: (listener, options) => sync.watch(listener, options),
    waitForChange: (options) => sync.waitForChange(options),
    changes: (options) => sync.changes(options),
    [Symbol.dispose]: () => sync[Symbol.dispose](),
  };
}

/** Every synchronizer class over every store it works with. */
export const SUBJECTS: readonly Subject[] = STORE_KINDS.flatMap((kind) => {
  const viaAsync: Subject = {
    name: `AsyncGenerationSynchronizer on ${kind.name}`,
    kind,
    create: (key, options) => AsyncGenerationSynchronizer.create(key, options),
  };
  if (kind.asynchronous) return [viaAsync];
  const viaSync: Subject = {
    name: `GenerationSynchronizer on ${kind.name}`,
    kind,
    create: async (key, options) => promised(new GenerationSynchronizer(key, options as GenerationSynchronizerOptions)),
  };
  return [viaSync, viaAsync];
});

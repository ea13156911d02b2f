/**
 * generation-sync: tell every process that some state changed.
 *
 * @packageDocumentation
 */

export {
  AsyncGenerationSynchronizer,
  type AsyncGenerationSynchronizerOptions,
} from './async-synchronizer';
export { makeCacheKey, MAX_KEY_LENGTH, type MakeCacheKeyOptions } from './cache-key';
export { defaultStore, defaultStoreChoice, defaultStorePath, STORE_ENV, type DefaultStoreChoice } from './default-store';
export {
  AddonUnavailableError,
  DependencyMissingError,
  GenerationSyncError,
  InvalidArgumentError,
  OutOfRangeError,
  StoreClosedError,
  StoreError,
  StoreFormatError,
  StoreFullError,
  StoreUnavailableError,
  UnsafeStoreError,
  type ErrorCode,
} from './errors';
export { FileStore, type FileStoreOptions } from './file-store';
export { RedisStore, type RedisClientLike, type RedisStoreOptions } from './redis-store';
export { SharedMemoryStore, type SharedMemoryStoreOptions } from './shm-store';
export type { AsyncKeyBinding, AsyncStore, BindOptions, GenerationListener, KeyBinding, Store, StoreEntry } from './store';
export { AsyncSynchronizedValue, SynchronizedValue } from './synchronized-value';
export {
  DEFAULT_CACHE_EXPIRATION_SECS,
  GenerationSynchronizer,
  type GenerationSynchronizerOptions,
  type Logger,
} from './synchronizer';
export type { GenerationChange, Unwatch, WaitForChangeOptions } from './watch';

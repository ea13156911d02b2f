/**
 * generation-sync: tell every process that some state changed.
 *
 * @module generation-sync
 */

export {
  AsyncGenerationSynchronizer,
  type AsyncGenerationSynchronizerOptions,
} from './synchronizers/async-synchronizer';
export { makeCacheKey, MAX_KEY_LENGTH, type MakeCacheKeyOptions } from './synchronizers/cache-key';
export { defaultStore, defaultStoreChoice, defaultStorePath, STORE_ENV, type DefaultStoreChoice } from './stores/default-store';
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
} from './store/errors';
export { FileStore, type FileStoreOptions } from './stores/file/file-store';
export { RedisStore, type RedisClientLike, type RedisStoreOptions } from './stores/redis/redis-store';
export { RelayStore, type RelayStatus, type RelayStoreOptions } from './stores/relay/relay-store';
export type { RelayBacklog, RelayCounters } from './stores/relay/relay';
export { SharedMemoryStore, type SharedMemoryStoreOptions } from './stores/shm/shm-store';
export type { AsyncKeyBinding, AsyncStore, BindOptions, GenerationListener, KeyBinding, Store, StoreEntry } from './store/store';
export { AsyncSynchronizedValue, SynchronizedValue } from './synchronizers/synchronized-value';
export {
  DEFAULT_CACHE_EXPIRATION_SECS,
  GenerationSynchronizer,
  type GenerationSynchronizerOptions,
  type Logger,
} from './synchronizers/synchronizer';
export type { ChangeIterator, ChangesOptions, GenerationChange, Unwatch, WaitForChangeOptions, WatchOptions } from './store/watch';

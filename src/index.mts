// The ES module entry point re-exports the CommonJS build, so that `import`
// and `require` in one process share one module instance: one default store,
// one set of error classes for `instanceof`. The list is explicit so that
// CommonJS interop names such as `__esModule` do not leak into it; a test
// checks that it matches the CommonJS exports.
export {
  AddonUnavailableError,
  AsyncGenerationSynchronizer,
  AsyncSynchronizedValue,
  DEFAULT_CACHE_EXPIRATION_SECS,
  DependencyMissingError,
  FileStore,
  GenerationSyncError,
  GenerationSynchronizer,
  InvalidArgumentError,
  MAX_KEY_LENGTH,
  OutOfRangeError,
  RedisStore,
  RelayStore,
  SharedMemoryStore,
  STORE_ENV,
  SynchronizedValue,
  StoreClosedError,
  StoreError,
  StoreFormatError,
  StoreFullError,
  StoreUnavailableError,
  UnsafeStoreError,
  defaultStore,
  defaultStoreChoice,
  defaultStorePath,
  makeCacheKey,
} from './index.js';
export type * from './index.js';

/**
 * Typed errors. Every error this library throws on purpose carries a stable
 * string `code` (`ERR_GENSYNC_*`); match on the code, not on the message.
 *
 * Bad arguments throw {@link InvalidArgumentError} (a `TypeError`) or
 * {@link OutOfRangeError} (a `RangeError`). Everything about a store is a
 * {@link StoreError}. The synchronizers never throw a failing store at
 * their callers: they log it once and report the key as expired. They do
 * throw bad arguments, a full store when a new key cannot be added, and a
 * store that was closed, because those are bugs or misconfiguration.
 *
 * @module
 */

/** The codes of a {@link StoreFormatError}. */
export type StoreFormatCode =
  | 'ERR_GENSYNC_FOREIGN_FILE'
  | 'ERR_GENSYNC_CORRUPT_FILE'
  | 'ERR_GENSYNC_CORRUPT_VALUE'
  | 'ERR_GENSYNC_UNSUPPORTED_VERSION';
/** The codes of an {@link UnsafeStoreError}. */
export type UnsafeStoreCode = 'ERR_GENSYNC_UNSAFE_FILE' | 'ERR_GENSYNC_NETWORK_FILESYSTEM';
/** The codes of a {@link StoreUnavailableError}. */
export type StoreUnavailableCode =
  | 'ERR_GENSYNC_STORE_UNAVAILABLE'
  | 'ERR_GENSYNC_LOCK_TIMEOUT'
  | 'ERR_GENSYNC_LOCK_LOST'
  | 'ERR_GENSYNC_NOT_PUBLISHED';
/** The codes a plain {@link StoreError} carries. */
export type PlainStoreCode = 'ERR_GENSYNC_STORE_IO' | 'ERR_GENSYNC_UNSUPPORTED_SERVER';

/** Every `code` this library puts on its errors. */
export type ErrorCode =
  | 'ERR_GENSYNC_INVALID_ARGUMENT'
  | 'ERR_GENSYNC_OUT_OF_RANGE'
  | StoreFormatCode
  | UnsafeStoreCode
  | StoreUnavailableCode
  | PlainStoreCode
  | 'ERR_GENSYNC_STORE_FULL'
  | 'ERR_GENSYNC_STORE_CLOSED'
  | 'ERR_GENSYNC_ADDON_UNAVAILABLE'
  | 'ERR_GENSYNC_DEPENDENCY_MISSING';

interface ErrorDetails {
  /** The store file the error is about, when there is one. */
  readonly path?: string | undefined;
  /** The lower-level error that caused this one. */
  readonly cause?: unknown;
}

/** A wrong argument type, or an option of the wrong type. */
export class InvalidArgumentError extends TypeError {
  readonly code = 'ERR_GENSYNC_INVALID_ARGUMENT' as const;
  override readonly name = 'InvalidArgumentError';
}

/** An argument of the right type but outside the values allowed. */
export class OutOfRangeError extends RangeError {
  readonly code = 'ERR_GENSYNC_OUT_OF_RANGE' as const;
  override readonly name = 'OutOfRangeError';
}

/** Base class of every error about a store, its file, or the addon. */
export class GenerationSyncError extends Error {
  readonly code: ErrorCode;
  /** The store file concerned, when there is one. */
  readonly path: string | undefined;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    // Each code belongs to exactly one class: the constructors' types say which, and this makes sure.
    const owner = CLASS_OF_CODE[code];
    if (owner !== undefined && owner !== new.target) {
      throw new TypeError(`generation-sync internal error: ${code} is a code of ${owner.name}, not of ${new.target.name}.`);
    }
    this.code = code;
    this.path = details.path;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/**
 * Any problem with a store. Used directly, with `ERR_GENSYNC_STORE_IO`, when
 * the operating system refused an operation on the store's file or
 * directory (`cause` holds the system error), and with
 * `ERR_GENSYNC_UNSUPPORTED_SERVER` for a Redis deployment the Redis store
 * does not support (Redis Cluster).
 */
export class StoreError extends GenerationSyncError {
  constructor(code: PlainStoreCode | StoreCodeOfSubclass, message: string, details: ErrorDetails = {}) {
    super(code, message, details);
  }
}

/** Codes that StoreError's subclasses pass up to it. */
type StoreCodeOfSubclass = StoreFormatCode | UnsafeStoreCode | StoreUnavailableCode | 'ERR_GENSYNC_STORE_FULL' | 'ERR_GENSYNC_STORE_CLOSED';

/**
 * The file is not a store of this kind (`ERR_GENSYNC_FOREIGN_FILE`), is
 * damaged (`ERR_GENSYNC_CORRUPT_FILE`), or was written by a newer version of
 * this library (`ERR_GENSYNC_UNSUPPORTED_VERSION`); or Redis holds a value at a
 * generation key that is not one (`ERR_GENSYNC_CORRUPT_VALUE`). The file or
 * value is left as it is.
 */
export class StoreFormatError extends StoreError {
  constructor(code: StoreFormatCode, message: string, details: ErrorDetails = {}) {
    super(code, message, details);
  }
}

/**
 * The path is not safe to share memory through: a symlink, not a regular
 * file, hard-linked, owned by another user, or too permissive
 * (`ERR_GENSYNC_UNSAFE_FILE`); or it is on a network filesystem, where shared
 * mappings are not coherent between hosts (`ERR_GENSYNC_NETWORK_FILESYSTEM`).
 */
export class UnsafeStoreError extends StoreError {
  constructor(code: UnsafeStoreCode, message: string, details: ErrorDetails = {}) {
    super(code, message, details);
  }
}

/** The store has no room for another key (`ERR_GENSYNC_STORE_FULL`). Keys it already holds keep working. */
export class StoreFullError extends StoreError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('ERR_GENSYNC_STORE_FULL', message, details);
  }
}

/** The store was closed by this process (`ERR_GENSYNC_STORE_CLOSED`). */
export class StoreClosedError extends StoreError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('ERR_GENSYNC_STORE_CLOSED', message, details);
  }
}

/**
 * The store could not be reached just now (`ERR_GENSYNC_STORE_UNAVAILABLE`),
 * its lock was held by another process for longer than the lock timeout
 * (`ERR_GENSYNC_LOCK_TIMEOUT`), or a writer found that another process took
 * its lock over, so it wrote nothing (`ERR_GENSYNC_LOCK_LOST`): an outage,
 * expected to pass. A synchronized value's `invalidate()` throws it with
 * `ERR_GENSYNC_NOT_PUBLISHED` when the change could not be recorded, so other
 * processes were not told.
 */
export class StoreUnavailableError extends StoreError {
  constructor(code: StoreUnavailableCode, message: string, details: ErrorDetails = {}) {
    super(code, message, details);
  }
}

/**
 * The native addon could not be loaded, so the shared-memory store is not
 * available here (`ERR_GENSYNC_ADDON_UNAVAILABLE`). The message says why and
 * how to build it.
 */
export class AddonUnavailableError extends GenerationSyncError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('ERR_GENSYNC_ADDON_UNAVAILABLE', message, details);
  }
}

/**
 * Whether a synchronizer should log `error` and carry on (reporting the key
 * as expired) rather than throw it: any failure of the store itself — an
 * outage, an I/O error, a damaged file — but not a store this process
 * closed, which is a bug in the caller.
 */
export function isFailSafeStoreError(error: unknown): error is StoreError {
  return error instanceof StoreError && !(error instanceof StoreClosedError);
}

/**
 * An optional dependency a feature needs is not installed
 * (`ERR_GENSYNC_DEPENDENCY_MISSING`), such as the `redis` package for
 * {@link RedisStore}. The message names the package to install.
 */
export class DependencyMissingError extends GenerationSyncError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('ERR_GENSYNC_DEPENDENCY_MISSING', message, details);
  }
}

/** @internal A file that is not a store of the kind expected; it is left as it is. */
export function foreignFileError(path: string, what: string): StoreFormatError {
  return new StoreFormatError(
    'ERR_GENSYNC_FOREIGN_FILE',
    `${path} is ${what}. It was left untouched; point the store at another path, or remove the file if it is yours.`,
    { path },
  );
}

/** @internal A damaged store file (`kind`: "store" or "file store"); it is left as it is. */
export function corruptFileError(path: string, kind: string, why: string): StoreFormatError {
  return new StoreFormatError(
    'ERR_GENSYNC_CORRUPT_FILE',
    `${path} is a damaged generation-sync ${kind} (${why}). It was left untouched for inspection; ` +
      'stop every process using it and remove it, and a fresh store will be created.',
    { path },
  );
}

/** @internal A value at a Redis generation key that is not a generation (`what` says which, as a sentence); it is left as it is. */
export function corruptValueError(what: string): StoreFormatError {
  return new StoreFormatError(
    'ERR_GENSYNC_CORRUPT_VALUE',
    `${what} Another program may be writing under this namespace: give this store its own "namespace".`,
  );
}

/** The class each code belongs to (the two argument errors are built-in subclasses and are not listed). */
const CLASS_OF_CODE: Partial<Record<ErrorCode, abstract new (...args: never[]) => GenerationSyncError>> = {
  ERR_GENSYNC_FOREIGN_FILE: StoreFormatError,
  ERR_GENSYNC_CORRUPT_FILE: StoreFormatError,
  ERR_GENSYNC_CORRUPT_VALUE: StoreFormatError,
  ERR_GENSYNC_UNSUPPORTED_VERSION: StoreFormatError,
  ERR_GENSYNC_UNSAFE_FILE: UnsafeStoreError,
  ERR_GENSYNC_NETWORK_FILESYSTEM: UnsafeStoreError,
  ERR_GENSYNC_STORE_UNAVAILABLE: StoreUnavailableError,
  ERR_GENSYNC_LOCK_TIMEOUT: StoreUnavailableError,
  ERR_GENSYNC_LOCK_LOST: StoreUnavailableError,
  ERR_GENSYNC_NOT_PUBLISHED: StoreUnavailableError,
  ERR_GENSYNC_STORE_IO: StoreError,
  ERR_GENSYNC_UNSUPPORTED_SERVER: StoreError,
  ERR_GENSYNC_STORE_FULL: StoreFullError,
  ERR_GENSYNC_STORE_CLOSED: StoreClosedError,
  ERR_GENSYNC_ADDON_UNAVAILABLE: AddonUnavailableError,
  ERR_GENSYNC_DEPENDENCY_MISSING: DependencyMissingError,
};

/**
 * The policy both synchronizers share, written once: their options, the
 * clock, and what a store failure does (logged once when it starts and
 * once when it ends; the call answers false or "expired"; anything that is
 * not a store failure is thrown, as a bug or misconfiguration).
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import type { Logger } from '../store/logger';
import { InvalidArgumentError, isFailSafeStoreError, OutOfRangeError, StoreFullError } from '../store/errors';
import { describe, optionalBoolean, optionalFunction, optionalInteger, wellFormedString } from '../store/validate';
import { makeCacheKey } from './cache-key';
import type { GenerationSynchronizerOptions } from './synchronizer';
import { trace } from '../store/trace';

/** One year, djblets' default lifetime of a synchronization key. */
export const DEFAULT_CACHE_EXPIRATION_SECS = 60 * 60 * 24 * 365;

/** Options after checking, shared with the async synchronizer. */
export interface CheckedOptions {
  readonly cacheKey: string;
  readonly expirationSecs: number;
  readonly logger: Logger;
  readonly clock: () => number;
}

/** Check the options both synchronizer classes take, except the store. */
export function checkSynchronizerOptions(
  cacheKey: string | readonly string[],
  options: Omit<GenerationSynchronizerOptions, 'store'>,
): CheckedOptions {
  const normalize = optionalBoolean(options.normalizeCacheKey, 'normalizeCacheKey', true);
  const key = normalize
    ? makeCacheKey(cacheKey, { prefix: options.keyPrefix })
    : wellFormedString(cacheKey, 'cacheKey (with normalizeCacheKey: false)');
  const expirationSecs = optionalInteger(options.cacheExpirationSecs, 'cacheExpirationSecs', DEFAULT_CACHE_EXPIRATION_SECS, {
    min: 1,
    max: Number.MAX_SAFE_INTEGER,
  });
  const logger = options.logger ?? console;
  if (typeof logger !== 'object' || logger === null || typeof logger.error !== 'function' || typeof logger.warn !== 'function') {
    throw new InvalidArgumentError(`Option "logger" must have error() and warn() methods, not ${describe(logger)}.`);
  }
  const clock = optionalFunction(options.clock, 'clock', Date.now);
  return { cacheKey: key, expirationSecs, logger, clock };
}

/** Read the clock, checking that it gives milliseconds since the epoch; stores derive seeds from it. */
export function readClock(clock: () => number): number {
  const now = clock();
  if (typeof now !== 'number' || !Number.isFinite(now) || now < 0 || now > Number.MAX_SAFE_INTEGER / 1000) {
    throw new OutOfRangeError(`The clock returned ${describe(now)}; it must return milliseconds since the epoch, like Date.now().`);
  }
  return now;
}

export interface AttemptOptions {
  /** Throw a full store instead of reporting it as an outage (at construction: it will not go away by itself). */
  readonly throwIfFull?: boolean;
}

/**
 * Logs a store failure once, when it starts, and its end once.
 * Errors that are not store failures are rethrown: they are bugs or
 * misconfiguration.
 */
export class OutageReporter {
  /** Whether the last store call failed. A plain field: markUpdated() reads it on its hot path. */
  failing = false;

  constructor(
    private readonly logger: Logger,
    private readonly cacheKey: string,
  ) {}

  failed(error: unknown, action: string): void {
    if (!isFailSafeStoreError(error)) throw error;
    if (this.failing) return;
    this.failing = true;
    if (trace.enabled) trace('outage: %s %j failed (%s)', action, this.cacheKey, error.message);
    this.logger.error(
      `generation-sync: unexpected error ${action} synchronization state key "${shortKey(this.cacheKey)}". ` +
        `Is the store available? Until it is, the key reads as expired. Error = ${error.message}`,
      error,
    );
  }

  /**
   * Run a store call: true when it reached the store (ending an outage),
   * false when the store failed (starting one). A full store at
   * construction is the caller's to fix, so `throwIfFull` throws it rather
   * than expire forever.
   */
  attempt(action: string, operation: () => unknown, options?: AttemptOptions): boolean {
    try {
      operation();
    } catch (error) {
      return this.#failedCall(error, action, options);
    }
    this.recovered();
    return true;
  }

  /** {@link attempt} for a call that answers with a promise. */
  async attemptAsync(action: string, operation: () => Promise<unknown>, options?: AttemptOptions): Promise<boolean> {
    try {
      await operation();
    } catch (error) {
      return this.#failedCall(error, action, options);
    }
    this.recovered();
    return true;
  }

  #failedCall(error: unknown, action: string, options: AttemptOptions | undefined): false {
    if (options?.throwIfFull === true && error instanceof StoreFullError) throw error;
    this.failed(error, action);
    return false;
  }

  recovered(): void {
    if (!this.failing) return;
    this.failing = false;
    if (trace.enabled) trace('outage over: %j reaches its store again', this.cacheKey);
    (this.logger.info ?? this.logger.warn).call(
      this.logger,
      `generation-sync: synchronization state key "${shortKey(this.cacheKey)}" reaches its store again.`,
    );
  }
}

function shortKey(key: string): string {
  return key.length > 120 ? `${key.slice(0, 117)}...` : key;
}


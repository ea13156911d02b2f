/**
 * The one way this library waits for a lock another process holds, for the
 * shared-memory store's kernel locks and the file store's lock directory
 * alike: try, and between tries pause with a jittered, doubling backoff
 * (so that waiters do not retry in lockstep), until a deadline.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { pause } from './pause';

/** The first pause between tries, in milliseconds; it doubles up to {@link MAX_BACKOFF_MS}. */
const FIRST_BACKOFF_MS = 0.02;
/** Waiters try at least this often, so they notice a release soon. */
const MAX_BACKOFF_MS = 1;

/**
 * Call `attempt` until it returns something other than undefined, or until
 * `timeoutMs` has passed (then return undefined); `between` runs after each
 * failed try (to clear a dead holder's lock, to say that someone waits).
 * Blocks the thread: for the rare contended path of synchronous APIs.
 */
export function retryUntil<T>(timeoutMs: number, attempt: () => T | undefined, between?: () => void): T | undefined {
  const deadline = performance.now() + timeoutMs;
  let backoff = FIRST_BACKOFF_MS;
  for (;;) {
    const result = attempt();
    if (result !== undefined) return result;
    between?.();
    if (performance.now() >= deadline) return undefined;
    pause(backoff * (0.5 + Math.random()));
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
}

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

/** The deadline of the innermost {@link withLockDeadline} under way, on `performance.now()`'s clock. */
let scopeDeadline: number | undefined;

/**
 * Run `action` with every lock wait inside it (of {@link retryUntil})
 * ending by `deadline` (`performance.now()`'s clock) at the latest, however
 * many locks it waits for: a deadline already passed makes each wait one
 * try. This is how work that no caller asked for (a background check) never
 * waits for a lock, and how a caller's own call waits for the lock timeout
 * once in all, not once per key. Nested scopes keep the earlier deadline.
 */
export function withLockDeadline<T>(deadline: number, action: () => T): T {
  const outer = scopeDeadline;
  scopeDeadline = outer !== undefined && outer < deadline ? outer : deadline;
  try {
    return action();
  } finally {
    scopeDeadline = outer;
  }
}

/**
 * Call `attempt` until it returns something other than undefined, or until
 * `timeoutMs` has passed (then return undefined); `between` runs after each
 * failed try (to clear a dead holder's lock, to say that someone waits).
 * Blocks the thread: for the rare contended path of synchronous APIs.
 */
export function retryUntil<T>(timeoutMs: number, attempt: () => T | undefined, between?: () => void): T | undefined {
  const own = performance.now() + timeoutMs;
  const deadline = scopeDeadline !== undefined && scopeDeadline < own ? scopeDeadline : own;
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

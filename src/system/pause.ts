/**
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Block this thread for `ms` milliseconds (fractions allowed). Only for rare retry paths of synchronous APIs. */
export function pause(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

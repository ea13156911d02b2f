/**
 * `NODE_DEBUG=generation-sync` tracing, through `util.debuglog`: which store
 * was chosen and why, keys created, outages starting and ending, store files
 * replaced and their keys carried over, Redis connections lost and regained.
 * Off (one property read at each call site) unless the variable names the
 * section. Never on a hot path (`isExpired()`, `markUpdated()`).
 *
 * @module
 */

import { debuglog } from 'node:util';

/** Writes `GENERATION-SYNC <pid>: …` to stderr when `NODE_DEBUG` includes `generation-sync`. */
export const trace = debuglog('generation-sync');

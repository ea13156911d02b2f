/**
 * How the relay brings one key in step: its one script, what to send given
 * what it knows (`decide`), and what to write into the host's file given
 * Redis' answer (`settle`). Both are pure functions of four things:
 *
 * - the key's *base*: the Redis value the host's value last took in (null:
 *   Redis had no live value; undefined: not known, as after a crash of the
 *   relay before it wrote its bases);
 * - the host's value when the script was sent (`sent`), and now (`now`):
 *   the base plus the changes made on this host and not forwarded yet;
 * - whether Redis must be read even if nothing is pending here (`reread`:
 *   after a reconnect or a takeover, or a change heard from Redis while a
 *   script was on its way);
 * - Redis' answer: the key's live generation after the script, or null.
 *
 * The test table for both is in test/48.relay-sync.test.ts.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { storeScript } from '../redis/redis-scripts';

// ARGV: mode, delta, floor, lifetime in seconds, channel. Modes:
//   add     the host holds a value `delta` above the one it last had from Redis: move a live key to
//           max(value + delta, clock) (0 only reads). A cleared key stays so, and false is answered (the
//           host goes absent: the clear made every holder reload). A key Redis lost (FLUSHALL, an expiry,
//           a restart) is created again at the clock when delta > 0: the change reaches the other hosts,
//           which still hold the old value; with delta 0, false is answered;
//   create  the host holds the key and cannot tell what changed since it last knew Redis' value: create
//           it at the clock (above its tombstone), or count one change on a live key;
//   adopt   the host holds the key at the value it was first created with there, unchanged: create it,
//           or take a live key's value as it is (nothing changed on the host);
//   read    only read: the live generation, or false.
// A result never falls below `floor` (the host's value): Redis restarted from an old snapshot must not
// answer below what hosts already hold. Every write announces itself on the channel, as the store's own do.
export const RELAY_SCRIPT = storeScript(`
local value, failure = stored(KEYS[1])
if failure then return failure end
local mode = ARGV[1]
local live = value and value >= 0
if mode == 'read' and not live then return false end
local floor = tonumber(ARGV[3])
local result
if mode == 'add' then
  local delta = tonumber(ARGV[2])
  if live then
    if delta > 0 then result = after(value, delta) else result = value end
  elseif value or delta == 0 then
    return false
  else
    result = clock()
  end
elseif live and (mode == 'adopt' or mode == 'read') then
  result = value
elseif live then
  result = after(value, 1)
else
  result = clock()
  if value and -value > result then result = -value end
end
if result < floor then result = floor end
if result == value then return value end
if live then
  redis.call('SET', KEYS[1], string.format('%.0f', result), 'KEEPTTL')
else
  redis.call('SET', KEYS[1], string.format('%.0f', result), 'EX', ARGV[4])
end
redis.pcall('PUBLISH', ARGV[5], redis.sha1hex(KEYS[1]) .. ' ' .. string.format('%.0f', result))
return result
`);

/** The Redis value a host's value last took in: a generation; null (Redis had no live value); undefined (unknown). */
export type Base = number | null | undefined;

/** The host's value of a key. */
export interface Local {
  /** The generation, or null when absent. */
  readonly generation: number | null;
  /** Whether it still holds the value it was first created with on this host (never bumped, cleared or raised). */
  readonly untouched: boolean;
}

export type ScriptMode = 'add' | 'create' | 'adopt' | 'read';

/** What to send for a key: nothing, the store's clear, or the relay's script. */
export type Step = { readonly kind: 'none' } | { readonly kind: 'clear' } | { readonly kind: 'script'; readonly mode: ScriptMode; readonly delta: number };

const NOTHING: Step = { kind: 'none' };

/** What to send to bring a key in step (see the module's text). */
export function decide(base: Base, local: Local, reread: boolean): Step {
  if (local.generation !== null) {
    if (typeof base === 'number' && local.generation >= base) {
      if (local.generation === base && !reread) return NOTHING;
      return { kind: 'script', mode: 'add', delta: local.generation - base };
    }
    // Created here and untouched since: a host meeting a key, not a change. Otherwise what changed here since
    // Redis' value was last known is not known: count one change (one more for the other hosts, never one less).
    return { kind: 'script', mode: local.untouched && (base === undefined || base === null) ? 'adopt' : 'create', delta: 0 };
  }
  if (typeof base === 'number') return { kind: 'clear' };
  if (base === null && !reread) return NOTHING;
  return { kind: 'script', mode: 'read', delta: 0 };
}

/**
 * What to do with Redis' answer: the host's value to write in place of `now` (undefined: write nothing; null:
 * make it absent), the base to keep once written, and whether to sync the key again. If the write is refused
 * (the host's value changed meanwhile, or Redis is below what the key once had here), `refused` says what
 * to keep instead; undefined there means "read the host's value again and settle again".
 */
export interface Settlement {
  readonly write: number | null | undefined;
  readonly base: Base;
  readonly again: boolean;
  readonly refused?: { readonly base: Base; readonly again: boolean } | undefined;
}

/** Settle Redis' answer `result` (its live generation after the step, or null) to a step sent when the host held `sent`. */
export function settle(sent: number | null, result: number | null, now: number | null): Settlement {
  if (result === null) {
    // Redis has no live value (cleared, expired, flushed): the host goes absent...
    if (now === null) return { write: undefined, base: null, again: false };
    // ...unless the key was made here after the step was sent: that creation is forwarded next.
    if (sent === null) return { write: undefined, base: null, again: true };
    return { write: null, base: null, again: false };
  }
  if (now === null) {
    // Cleared here after the step was sent: the clear is forwarded next.
    if (sent !== null) return { write: undefined, base: result, again: true };
    // Absent here: take Redis' value, unless the key was once higher here than Redis is now (Redis lost data):
    // it is forwarded, above that, when it is made again here.
    return { write: result, base: result, again: false, refused: { base: null, again: false } };
  }
  // Created here after the step was sent, or the host's value fell (a file restored from a copy): what changed
  // here is not known.
  if (sent === null || now < sent) return { write: undefined, base: undefined, again: true };
  const target = result + (now - sent);
  return { write: target === now ? undefined : target, base: result, again: false };
}

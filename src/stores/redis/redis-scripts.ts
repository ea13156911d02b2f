/**
 * What the Redis store keeps at each key and the Lua scripts that change
 * it atomically: a generation, or a tombstone for a cleared key; anything
 * else under the namespace is foreign data, refused with a typed error.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';

import { corruptValueError } from '../../store/errors';
import { describe } from '../../store/validate';

// Stored values: a generation (an integer >= 0), or a tombstone -(g + 1)
// for a cleared key whose highest generation was g. Each script reads and
// writes one key atomically, and announces a change on the store's channel
// (the last argument) for watchers. Numbers are written with %.0f: Lua's
// default formatting of large numbers loses digits.
//
// Every generation the scripts write is a hybrid clock: the larger of one
// more than the value before and the server's own clock in microseconds
// (TIME; never a client's: hosts' clocks disagree). A key is created at the
// clock, and each change moves it to max(value + 1, clock). So whatever
// Redis loses (a restart from an older snapshot, writes lost with AOF
// everysec, a failover to a replica that missed the last writes, FLUSHALL),
// the next change lands above every value issued before the loss, as long
// as the server's clock has moved forward since: no generation is ever
// handed out twice. Scripts replicate their effects (the default since
// Redis 5), so reading TIME before writing is allowed.
//
// Every script starts with this reader: absent is false; a generation or a
// tombstone is an integer written plainly ("0", "17", "-18"; never "-0",
// "007" or "1e3"); anything else, a value of another type included, is
// foreign data under our namespace.
const READ_STORED = `
local function stored(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then
    return nil, redis.error_reply('GENSYNC_CORRUPT ' .. key .. ' holds a value that is not a string')
  end
  if not raw then return false end
  if raw ~= '0' and not string.find(raw, '^%-?[1-9]%d*$') then
    return nil, redis.error_reply('GENSYNC_CORRUPT ' .. key .. ' holds ' .. string.sub(raw, 1, 40))
  end
  return tonumber(raw)
end
local function clock()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000000 + tonumber(now[2])
end
local function after(value, step)
  local at = clock()
  if value + step > at then return value + step end
  return at
end
`;

const FETCH_OR_CREATE = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
local seed = clock()
if value then
  if value >= 0 then return value end
  if -value > seed then seed = -value end
end
redis.call('SET', KEYS[1], string.format('%.0f', seed), 'EX', ARGV[1])
redis.pcall('PUBLISH', ARGV[2], redis.sha1hex(KEYS[1]) .. ' ' .. string.format('%.0f', seed))
return seed
`;

const INCREMENT = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
if not value or value < 0 then return false end
local generation = after(value, 1)
redis.call('SET', KEYS[1], string.format('%.0f', generation), 'KEEPTTL')
redis.pcall('PUBLISH', ARGV[1], redis.sha1hex(KEYS[1]) .. ' ' .. string.format('%.0f', generation))
return generation
`;

const CLEAR = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
if not value or value < 0 then return 0 end
redis.call('SET', KEYS[1], string.format('%.0f', -value - 1), 'KEEPTTL')
redis.pcall('PUBLISH', ARGV[1], redis.sha1hex(KEYS[1]) .. ' ' .. string.format('%.0f', -value - 1))
return 1
`;

// The relay's one script (see src/stores/relay): bring Redis up to date with a host's shared memory.
// ARGV: mode, delta, floor, lifetime in seconds, channel. Modes:
//   add     the host holds a value `delta` above the one it last had from Redis: move a live key to
//           max(value + delta, clock) (0 only reads); an absent or cleared key stays so and false is
//           answered (the host goes absent);
//   create  the host holds the key and cannot tell what changed since it last knew Redis' value: create
//           it as FETCH_OR_CREATE does, or count one change on a live key;
//   adopt   the host holds the key at the value it was first created with there, unchanged: create it,
//           or take a live key's value as it is (nothing changed on the host);
//   read    only read: the live generation, or false.
// A result never falls below `floor` (the host's value): Redis restarted from an old snapshot must not
// answer below what hosts already hold.
const RELAY_SYNC = `${READ_STORED}
local value, failure = stored(KEYS[1])
if failure then return failure end
local mode = ARGV[1]
local live = value and value >= 0
if mode == 'read' then
  if live then return value end
  return false
end
local floor = tonumber(ARGV[3])
local result
if mode == 'add' then
  if not live then return false end
  local delta = tonumber(ARGV[2])
  if delta > 0 then result = after(value, delta) else result = value end
elseif live and mode == 'adopt' then
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
`;

export interface Script {
  readonly source: string;
  readonly sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
export const SCRIPTS = { fetchOrCreate: script(FETCH_OR_CREATE), increment: script(INCREMENT), clear: script(CLEAR), relaySync: script(RELAY_SYNC) };

export function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, (ch) => `\\${ch}`);
}

export function parseStored(raw: string, redisKey: string): number {
  const value = Number(raw);
  // Written plainly, as the scripts write them: "-0" or "007" are not ours.
  if (!/^(0|-?[1-9]\d*)$/.test(raw) || !Number.isSafeInteger(value)) {
    throw corruptValueError(`The Redis key ${redisKey} holds ${JSON.stringify(raw.slice(0, 40))}, not a generation.`);
  }
  return value;
}

export function checkReply(reply: unknown, redisKey: string): number {
  const value = typeof reply === 'number' ? reply : Number(reply);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw corruptValueError(`Redis answered ${describe(reply)} for ${redisKey}, not a generation.`);
  }
  return value;
}

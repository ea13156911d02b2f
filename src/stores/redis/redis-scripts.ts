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
// "007" or "1e3") within the integers a double holds exactly (below 2^53,
// as the client checks: "9007199254740993" would be rewritten rounded);
// anything else, a value of another type included, is foreign data under
// our namespace, refused and never rewritten.
const READ_STORED = `
local function stored(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then
    return nil, redis.error_reply('GENSYNC_CORRUPT ' .. key .. ' holds a value that is not a string')
  end
  if not raw then return false end
  if (raw ~= '0' and not string.find(raw, '^%-?[1-9]%d*$')) or #raw > 17 or math.abs(tonumber(raw)) > 9007199254740991 then
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

export interface Script {
  readonly source: string;
  readonly sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
export const SCRIPTS = { fetchOrCreate: script(FETCH_OR_CREATE), increment: script(INCREMENT), clear: script(CLEAR) };

/**
 * A script of another module that works on this store's keys (the relay's): `body` runs after the reader of
 * stored values (`stored(key)`, which refuses foreign data) and the hybrid clock (`clock()`, `after(value, step)`).
 */
export function storeScript(body: string): Script {
  return script(`${READ_STORED}${body}`);
}

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

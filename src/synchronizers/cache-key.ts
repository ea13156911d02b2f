/**
 * Cache key normalization, byte for byte the algorithm of djblets'
 * `make_cache_key`.
 *
 * @module
 */

import { createHash, createHmac } from 'node:crypto';

import { InvalidArgumentError } from '../store/errors';
import { describe, optionalBoolean, optionsObject, wellFormedString } from '../store/validate';

/** Longest normalized key, in Unicode code points (memcached's limit less some room, as in djblets). */
export const MAX_KEY_LENGTH = 240;

/** Length of a lowercase hex SHA-256 digest. */
const SHA256_HEX_LENGTH = 64;

/** Options of {@link makeCacheKey}. */
export interface MakeCacheKeyOptions {
  /**
   * Parts joined in front of the key with `:`, unescaped. djblets uses the
   * site's domain and, when set, its site root; use whatever keeps two
   * applications on one store apart. Empty strings are skipped, as djblets
   * skips an empty site root.
   * @default no prefix
   */
  readonly prefix?: string | readonly string[] | undefined;
  /**
   * Replace the whole key with the hex HMAC-SHA256 of it, so that the key
   * reveals nothing about the state it names. Requires `encryptionKey`.
   * @default false
   */
  readonly useEncryption?: boolean | undefined;
  /** Secret for `useEncryption`; a non-empty string or bytes. */
  readonly encryptionKey?: string | Uint8Array | undefined;
}

/**
 * Build a cache key that fits the store's limits and avoids collisions,
 * exactly as djblets' `make_cache_key` does.
 *
 * 1. A string is one part. When a sequence has more than one part, each
 *    part is escaped (`%` → `%25`, then `:` → `%3A`) so that different
 *    sequences can never join to the same key. A one-part sequence is not
 *    escaped.
 * 2. The prefix parts and the key parts are joined with `:`.
 * 3. With `useEncryption`, the result is the lowercase hex HMAC-SHA256 of
 *    that string under `encryptionKey`.
 * 4. Otherwise each character from U+0000 to U+0020, and U+007F, becomes
 *    `\xNN`; and a key longer than 240 code points keeps its first 176 code
 *    points followed by the hex SHA-256 of the whole key.
 *
 * Lengths are counted in Unicode code points, as Python counts them, so an
 * emoji counts once. Strings must be well-formed Unicode: a lone surrogate
 * has no UTF-8 encoding and is rejected with {@link InvalidArgumentError}.
 *
 * @example
 * makeCacheKey('settings');                         // 'settings'
 * makeCacheKey(['users', 'a:b']);                   // 'users:a%3Ab'
 * makeCacheKey('settings', { prefix: 'example.com' }); // 'example.com:settings'
 */
export function makeCacheKey(key: string | readonly string[], options?: MakeCacheKeyOptions): string {
  const opts = optionsObject(options, 'makeCacheKey options');
  const parts = keyParts(key);
  const prefix = prefixParts(opts.prefix);
  const useEncryption = optionalBoolean(opts.useEncryption, 'useEncryption', false);

  const joined = [...prefix, ...parts].join(':');

  if (useEncryption) {
    return createHmac('sha256', encryptionKey(opts.encryptionKey)).update(joined, 'utf8').digest('hex');
  }

  const escaped = escapeControlCharacters(joined);
  const codePoints = Array.from(escaped);
  if (codePoints.length <= MAX_KEY_LENGTH) return escaped;

  const digest = createHash('sha256').update(escaped, 'utf8').digest('hex');
  return codePoints.slice(0, MAX_KEY_LENGTH - SHA256_HEX_LENGTH).join('') + digest;
}

function keyParts(key: unknown): string[] {
  if (typeof key === 'string') return [wellFormedString(key, 'cacheKey')];
  if (!Array.isArray(key)) {
    throw new InvalidArgumentError(`cacheKey must be a string or an array of strings, not ${describe(key)}.`);
  }
  if (key.length === 0) {
    throw new InvalidArgumentError('cacheKey must have at least one part; an empty array names nothing.');
  }
  const parts = key.map((part: unknown, index) => wellFormedString(part, `cacheKey[${index}]`));
  return parts.length === 1 ? parts : parts.map(escapePart);
}

function escapePart(part: string): string {
  return part.replaceAll('%', '%25').replaceAll(':', '%3A');
}

function prefixParts(prefix: unknown): string[] {
  if (prefix === undefined) return [];
  let parts: readonly unknown[];
  if (typeof prefix === 'string') {
    parts = [prefix];
  } else if (Array.isArray(prefix)) {
    parts = prefix;
  } else {
    throw new InvalidArgumentError(`Option "prefix" must be a string or an array of strings, not ${describe(prefix)}.`);
  }
  return parts.map((part, index) => wellFormedString(part, `prefix[${index}]`)).filter((part) => part.length > 0);
}

function encryptionKey(value: unknown): string | Uint8Array {
  if (typeof value === 'string' && value.length > 0) return value;
  if (value instanceof Uint8Array && value.length > 0) return value;
  throw new InvalidArgumentError(
    `Option "encryptionKey" must be a non-empty string or Uint8Array when useEncryption is true, not ${describe(value)}.`,
  );
}

/** Control characters and space, escaped the way djblets writes them. */
function escapeControlCharacters(key: string): string {
  // eslint-disable-next-line no-control-regex
  return key.replace(/[\x00-\x20\x7f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

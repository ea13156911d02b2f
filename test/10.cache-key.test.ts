import { execFileSync } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, makeCacheKey, MAX_KEY_LENGTH } from 'generation-sync';

import { FIXTURES } from './helpers';

const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');
const codePoints = (text: string): number => Array.from(text).length;

describe('makeCacheKey', () => {
  it('keeps a plain string key as it is', () => {
    expect(makeCacheKey('settings')).toBe('settings');
    expect(makeCacheKey('a:b%c')).toBe('a:b%c');
  });

  it('joins a sequence of parts with ":" and escapes "%" then ":" in each part', () => {
    expect(makeCacheKey(['users', 'settings'])).toBe('users:settings');
    expect(makeCacheKey(['a:b', 'c'])).toBe('a%3Ab:c');
    expect(makeCacheKey(['100%', 'x'])).toBe('100%25:x');
    // "%" is escaped first, so an escaped ":" is not escaped twice.
    expect(makeCacheKey(['%3A', ':'])).toBe('%253A:%3A');
  });

  it('does not escape a sequence of one part', () => {
    expect(makeCacheKey(['a:b%c'])).toBe('a:b%c');
    expect(makeCacheKey(['a:b%c'])).toBe(makeCacheKey('a:b%c'));
  });

  it('keeps sequences that differ apart even when their parts join to the same string', () => {
    expect(makeCacheKey(['a:b', 'c'])).not.toBe(makeCacheKey(['a', 'b:c']));
    expect(makeCacheKey(['a', 'b', 'c'])).not.toBe(makeCacheKey(['a:b', 'c']));
  });

  it('puts the prefix parts in front, unescaped, and skips empty ones', () => {
    expect(makeCacheKey('settings', { prefix: 'example.com' })).toBe('example.com:settings');
    expect(makeCacheKey('settings', { prefix: ['example.com', '/root:x/'] })).toBe('example.com:/root:x/:settings');
    expect(makeCacheKey(['a:b', 'c'], { prefix: 'host:1' })).toBe('host:1:a%3Ab:c');
    expect(makeCacheKey('settings', { prefix: ['example.com', ''] })).toBe('example.com:settings');
    expect(makeCacheKey('settings', { prefix: [] })).toBe('settings');
  });

  it('writes control characters, space and DEL as \\xNN', () => {
    expect(makeCacheKey('a b')).toBe('a\\x20b');
    expect(makeCacheKey('\t\n\r')).toBe('\\x09\\x0a\\x0d');
    expect(makeCacheKey('nul\u0000end')).toBe('nul\\x00end');
    expect(makeCacheKey('del\u007f')).toBe('del\\x7f');
    expect(makeCacheKey('\u001f!')).toBe('\\x1f!');
    // U+0080 and beyond are not control characters here.
    expect(makeCacheKey('\u0080\u00a0é')).toBe('\u0080\u00a0é');
  });

  it('keeps a key of exactly 240 code points and hashes one of 241', () => {
    const exact = 'a'.repeat(MAX_KEY_LENGTH);
    expect(makeCacheKey(exact)).toBe(exact);

    const over = 'a'.repeat(MAX_KEY_LENGTH + 1);
    const key = makeCacheKey(over);
    expect(key).toBe('a'.repeat(176) + sha256(over));
    expect(key).toHaveLength(240);
  });

  it('counts escapes in the length, and hashes the escaped key', () => {
    const raw = ' '.repeat(60); // becomes 240 characters of "\x20"
    expect(makeCacheKey(raw)).toBe('\\x20'.repeat(60));
    const longer = ' '.repeat(61);
    const escaped = '\\x20'.repeat(61);
    expect(makeCacheKey(longer)).toBe(escaped.slice(0, 176) + sha256(escaped));
  });

  it('counts Unicode code points, not UTF-16 units, as Python does', () => {
    // 239 + one astral character: 240 code points but 241 UTF-16 units.
    const fits = 'a'.repeat(239) + '😀';
    expect(fits.length).toBe(241);
    expect(makeCacheKey(fits)).toBe(fits);

    const over = 'a'.repeat(240) + '😀';
    expect(makeCacheKey(over)).toBe('a'.repeat(176) + sha256(over));
  });

  it('never splits an astral character at the 176-code-point cut', () => {
    const key = 'a'.repeat(175) + '😀' + 'b'.repeat(100);
    const result = makeCacheKey(key);
    expect(result).toBe('a'.repeat(175) + '😀' + sha256(key));
    expect(codePoints(result)).toBe(240);
    expect(result.isWellFormed()).toBe(true);

    const emojiOnly = '🎉'.repeat(300);
    const hashed = makeCacheKey(emojiOnly);
    expect(hashed).toBe('🎉'.repeat(176) + sha256(emojiOnly));
    expect(codePoints(hashed)).toBe(240);
  });

  it('returns the hex HMAC-SHA256 of the joined key when encrypting', () => {
    const expected = createHmac('sha256', 'secret').update('example.com:a%3Ab:c', 'utf8').digest('hex');
    expect(makeCacheKey(['a:b', 'c'], { prefix: 'example.com', useEncryption: true, encryptionKey: 'secret' })).toBe(expected);
    expect(makeCacheKey('x', { useEncryption: true, encryptionKey: new TextEncoder().encode('secret') })).toBe(
      createHmac('sha256', 'secret').update('x').digest('hex'),
    );
    // Encryption is applied to the unescaped key and never truncated.
    const long = ' '.repeat(500);
    expect(makeCacheKey(long, { useEncryption: true, encryptionKey: 'k' })).toBe(
      createHmac('sha256', 'k').update(long).digest('hex'),
    );
  });

  it('rejects what it cannot encode with a typed error naming the problem', () => {
    expect(() => makeCacheKey(42 as unknown as string)).toThrow(InvalidArgumentError);
    expect(() => makeCacheKey([])).toThrow(/at least one part/);
    expect(() => makeCacheKey(['a', 7 as unknown as string])).toThrow(/cacheKey\[1\] must be a string/);
    expect(() => makeCacheKey('bad\ud800')).toThrow(/lone UTF-16 surrogate at index 3/);
    expect(() => makeCacheKey('x', { prefix: 5 as unknown as string })).toThrow(/"prefix"/);
    expect(() => makeCacheKey('x', { useEncryption: true })).toThrow(/"encryptionKey"/);
    expect(() => makeCacheKey('x', { useEncryption: 'yes' as unknown as boolean })).toThrow(/"useEncryption" must be a boolean/);
    try {
      makeCacheKey('\udc00');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(TypeError);
      expect((error as InvalidArgumentError).code).toBe('ERR_GENSYNC_INVALID_ARGUMENT');
    }
  });

  it('matches an independent Python implementation on generated keys', () => {
    const alphabet = ['a', 'Z', '0', ':', '%', ' ', '\t', '\u0000', '\u007f', 'é', '中', '😀', '🎉', '\\', 'x'];
    let state = 12345;
    const random = (n: number): number => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return state % n;
    };
    const randomString = (maxLength: number): string =>
      Array.from({ length: random(maxLength) }, () => alphabet[random(alphabet.length)]).join('');

    type Case = { key: string | string[]; prefix?: string | string[]; use_encryption?: boolean; encryption_key?: string };
    const cases: Case[] = [];
    for (let i = 0; i < 400; i++) {
      const sequence = random(3) === 0;
      const key = sequence ? Array.from({ length: 1 + random(4) }, () => randomString(120)) : randomString(400);
      const item: Case = { key };
      if (random(2) === 0) item.prefix = random(2) === 0 ? randomString(20) : [randomString(20), randomString(10)];
      if (random(10) === 0) {
        item.use_encryption = true;
        item.encryption_key = 'k' + randomString(10);
      }
      cases.push(item);
    }
    const output = execFileSync('python3', [join(FIXTURES, 'make_cache_key_reference.py')], {
      input: cases.map((item) => JSON.stringify(item)).join('\n') + '\n',
      encoding: 'utf8',
    });
    const expected = output.trim().split('\n').map((line) => JSON.parse(line) as string);
    expect(expected).toHaveLength(cases.length);
    cases.forEach((item, index) => {
      const actual = makeCacheKey(item.key, {
        prefix: item.prefix,
        useEncryption: item.use_encryption,
        encryptionKey: item.encryption_key,
      });
      expect(actual, JSON.stringify(item)).toBe(expected[index]);
    });
  });
});

describe('makeCacheKey, properties', () => {
  // Unicode strings including controls, spaces, ":" and "%", and astral characters.
  const codePoint = fc
    .integer({ min: 0, max: 0x10ffff })
    .filter((cp) => cp < 0xd800 || cp > 0xdfff)
    .map((cp) => String.fromCodePoint(cp));
  const text = fc.string({ unit: fc.oneof(fc.constantFrom(':', '%', ' ', '\t', '\u0000', '\u007f', '😀', '中'), codePoint), maxLength: 300 });
  const codePoints = (value: string): number => Array.from(value).length;

  it('is at most 240 code points, has no control characters or spaces, and is deterministic', () => {
    fc.assert(
      fc.property(fc.oneof(text, fc.array(text, { minLength: 1, maxLength: 5 })), fc.option(fc.array(text, { maxLength: 2 }), { nil: undefined }), (key, prefix) => {
        const result = makeCacheKey(key, { prefix });
        expect(codePoints(result)).toBeLessThanOrEqual(240);
        expect(result).not.toMatch(/[\u0000-\u0020\u007f]/);
        expect(result.isWellFormed()).toBe(true);
        expect(makeCacheKey(key, { prefix })).toBe(result);
      }),
      { numRuns: 500 },
    );
  });

  it('gives distinct sequences of two or more parts distinct keys', () => {
    const sequence = fc.array(text, { minLength: 2, maxLength: 4 });
    fc.assert(
      fc.property(sequence, sequence, (a, b) => {
        fc.pre(JSON.stringify(a) !== JSON.stringify(b));
        expect(makeCacheKey(a)).not.toBe(makeCacheKey(b));
      }),
      { numRuns: 500 },
    );
  });

  it('does not escape a sequence of one part, as djblets does not', () => {
    fc.assert(
      fc.property(text, (part) => {
        expect(makeCacheKey([part])).toBe(makeCacheKey(part));
      }),
      { numRuns: 300 },
    );
  });

  it('encrypted, is always 64 hex digits', () => {
    fc.assert(
      fc.property(text, fc.string({ minLength: 1 }), (key, secret) => {
        fc.pre(secret.isWellFormed());
        expect(makeCacheKey(key, { useEncryption: true, encryptionKey: secret })).toMatch(/^[0-9a-f]{64}$/);
      }),
      { numRuns: 200 },
    );
  });
});

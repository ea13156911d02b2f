// Arguments of every wrong kind, to every entry point: a typed error with a
// message that says what to pass, never a crash; promise APIs reject.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import {
  AsyncGenerationSynchronizer,
  FileStore,
  GenerationSynchronizer,
  InvalidArgumentError,
  makeCacheKey,
  OutOfRangeError,
  RedisStore,
  SharedMemoryStore,
  type Store,
} from 'generation-sync';

import { tempDir, thrown } from './helpers';

describe('arguments of the wrong type or out of range', () => {
  const store = (): Store => SharedMemoryStore.open(join(tempDir(), 'g.shm'));
  const cases: Array<[string, () => unknown, ErrorConstructor | typeof InvalidArgumentError | typeof OutOfRangeError, RegExp]> = [
    ['a number as key', () => new GenerationSynchronizer(5 as unknown as string, { store: store() }), InvalidArgumentError, /cacheKey must be a string or an array/],
    ['a lone surrogate', () => new GenerationSynchronizer('x\ud800', { store: store() }), InvalidArgumentError, /lone UTF-16 surrogate/],
    ['a lone surrogate, unnormalized', () => new GenerationSynchronizer('\udfff', { store: store(), normalizeCacheKey: false }), InvalidArgumentError, /lone UTF-16 surrogate/],
    ['an array key unnormalized', () => new GenerationSynchronizer(['a'], { store: store(), normalizeCacheKey: false }), InvalidArgumentError, /cacheKey \(with normalizeCacheKey: false\) must be a string/],
    ['an empty key array', () => new GenerationSynchronizer([], { store: store() }), InvalidArgumentError, /at least one part/],
    ['options that are not an object', () => new GenerationSynchronizer('k', 'fast' as never), InvalidArgumentError, /GenerationSynchronizer options must be an object/],
    ['normalizeCacheKey: "yes"', () => new GenerationSynchronizer('k', { store: store(), normalizeCacheKey: 'yes' as never }), InvalidArgumentError, /"normalizeCacheKey" must be a boolean/],
    ['checkIntervalMs: 1', () => SharedMemoryStore.open(join(tempDir(), 'g.shm'), { checkIntervalMs: 1 }), OutOfRangeError, /"checkIntervalMs" must be an integer from 10 to 60000/],
    ['cacheExpirationSecs: 0', () => new GenerationSynchronizer('k', { store: store(), cacheExpirationSecs: 0 }), OutOfRangeError, /"cacheExpirationSecs" must be an integer from 1/],
    ['cacheExpirationSecs: 1.5', () => new GenerationSynchronizer('k', { store: store(), cacheExpirationSecs: 1.5 }), OutOfRangeError, /"cacheExpirationSecs"/],
    ['cacheExpirationSecs: "60"', () => new GenerationSynchronizer('k', { store: store(), cacheExpirationSecs: '60' as never }), InvalidArgumentError, /"cacheExpirationSecs" must be a number/],
    ['cacheExpirationSecs: NaN', () => new GenerationSynchronizer('k', { store: store(), cacheExpirationSecs: Number.NaN }), InvalidArgumentError, /"cacheExpirationSecs"/],
    ['keyPrefix: 7', () => new GenerationSynchronizer('k', { store: store(), keyPrefix: 7 as never }), InvalidArgumentError, /"prefix" must be a string or an array/],
    ['logger: {}', () => new GenerationSynchronizer('k', { store: store(), logger: {} as never }), InvalidArgumentError, /"logger" must have error\(\) and warn\(\)/],
    ['clock: 5', () => new GenerationSynchronizer('k', { store: store(), clock: 5 as never }), InvalidArgumentError, /"clock" must be a function/],
    ['a clock returning NaN', () => new GenerationSynchronizer('k', { store: store(), clock: () => Number.NaN }), OutOfRangeError, /The clock returned number NaN/],
    ['a clock returning a string', () => new GenerationSynchronizer('k', { store: store(), clock: () => 'now' as never }), OutOfRangeError, /The clock returned "now"/],
    ['store: {}', () => new GenerationSynchronizer('k', { store: {} as never }), InvalidArgumentError, /"store" must be a synchronous store/],
    ['capacity: -1', () => SharedMemoryStore.open(join(tempDir(), 'x.shm'), { capacity: -1 }), OutOfRangeError, /"capacity" must be an integer from 1/],
    ['capacity: 2^23', () => SharedMemoryStore.open(join(tempDir(), 'x.shm'), { capacity: 2 ** 23 }), OutOfRangeError, /"capacity"/],
    ['mode: "0600"', () => SharedMemoryStore.open(join(tempDir(), 'x.shm'), { mode: '0600' as never }), InvalidArgumentError, /"mode" must be a number/],
    ['staleLockMs: 100', () => FileStore.open(join(tempDir(), 'x.json'), { staleLockMs: 100 }), OutOfRangeError, /"staleLockMs" must be an integer from 2000/],
    ['a NUL in a path', () => FileStore.open(join(tempDir(), 'x\0.json')), InvalidArgumentError, /without NUL bytes/],
    ['makeCacheKey: encryptionKey missing', () => makeCacheKey('k', { useEncryption: true }), InvalidArgumentError, /"encryptionKey"/],
  ];
  it.each(cases)('%s', (_name, call, type, message) => {
    const error = thrown(() => call());
    expect(error).toBeInstanceOf(type);
    expect((error as Error).message).toMatch(message);
    expect((error as { code: string }).code).toMatch(/^ERR_GENSYNC_(INVALID_ARGUMENT|OUT_OF_RANGE)$/);
  });

  it('rejects, never throws synchronously, from the promise APIs', async () => {
    await expect(AsyncGenerationSynchronizer.create(5 as never)).rejects.toThrow(InvalidArgumentError);
    await expect(RedisStore.connect({ watchPollMs: 1 })).rejects.toThrow(/"watchPollMs" must be an integer from 10/);
  });
});

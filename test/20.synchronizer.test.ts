// The djblets semantics of GenerationSynchronizer, run unchanged against
// every store kind.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { GenerationSynchronizer, makeCacheKey, type GenerationSynchronizerOptions, type Store } from 'generation-sync';

import { recordingLogger, tempDir } from './helpers';
import { STORE_KINDS } from './stores';

const T0 = 1_700_000_000_000; // ms

describe.each(STORE_KINDS)('GenerationSynchronizer on the $name store', (kind) => {
  let store: Store;
  let now: number;
  const clock = (): number => now;
  const make = (key: string | readonly string[], options: GenerationSynchronizerOptions = {}): GenerationSynchronizer =>
    new GenerationSynchronizer(key, { store, clock, logger: recordingLogger(), ...options });

  beforeEach(() => {
    store = kind.open(tempDir());
    now = T0;
  });
  afterEach(() => store.close());

  it('starts with a generation seeded from the current Unix second, and not expired', () => {
    now = T0 + 999;
    const sync = make('test-key');
    expect(sync.syncGen).toBe(1_700_000_000);
    expect(sync.isExpired()).toBe(false);
    expect(sync.cacheKey).toBe('test-key');
  });

  it('takes the stored generation instead of seeding when the key exists', () => {
    const first = make('test-key');
    now = T0 + 60_000;
    const second = make('test-key');
    expect(second.syncGen).toBe(first.syncGen);
    expect(second.isExpired()).toBe(false);
  });

  it('is expired once another holder marks the state updated', () => {
    const mine = make('test-key');
    const theirs = make('test-key');
    expect(theirs.markUpdated()).toBe(true);
    expect(mine.isExpired()).toBe(true);
    expect(theirs.isExpired()).toBe(false);
  });

  it('is not expired while nobody changes the state', () => {
    const mine = make('test-key');
    make('test-key');
    make('other-key').markUpdated();
    for (let i = 0; i < 3; i++) expect(mine.isExpired()).toBe(false);
  });

  it('refresh takes the latest generation', () => {
    const mine = make('test-key');
    const theirs = make('test-key');
    theirs.markUpdated();
    theirs.markUpdated();
    expect(mine.isExpired()).toBe(true);
    expect(mine.refresh()).toBe(true);
    expect(mine.syncGen).toBe(theirs.syncGen);
    expect(mine.isExpired()).toBe(false);
  });

  it('markUpdated increments the generation by exactly one', () => {
    const sync = make('test-key');
    const before = sync.syncGen as number;
    expect(sync.markUpdated()).toBe(true);
    expect(sync.syncGen).toBe(before + 1);
    sync.markUpdated();
    expect(sync.syncGen).toBe(before + 2);
    expect(sync.isExpired()).toBe(false);
  });

  it('clear expires every holder, the one that cleared included', () => {
    const mine = make('test-key');
    const theirs = make('test-key');
    expect(mine.clear()).toBe(true);
    expect(mine.isExpired()).toBe(true);
    expect(theirs.isExpired()).toBe(true);
    // Clearing an absent key is fine too.
    expect(theirs.clear()).toBe(true);
  });

  it('refresh after clear re-creates the key above every value it had, even in the same second', () => {
    const mine = make('test-key');
    const theirs = make('test-key');
    const created = mine.syncGen as number;
    mine.markUpdated();
    mine.markUpdated();
    const highest = mine.syncGen as number;
    mine.clear();
    // The clock has not moved: djblets would re-seed with `created` again.
    expect(theirs.refresh()).toBe(true);
    expect(theirs.syncGen).toBeGreaterThan(highest);
    expect(theirs.syncGen).not.toBe(created);
    expect(mine.isExpired()).toBe(true);
    mine.refresh();
    expect(mine.syncGen).toBe(theirs.syncGen);
  });

  it('a re-created key never goes back even if the clock does', () => {
    now = T0 + 10_000_000;
    const sync = make('test-key');
    const high = sync.syncGen as number;
    sync.clear();
    now = T0;
    sync.refresh();
    expect(sync.syncGen).toBe(high + 1);
  });

  it('a re-created key takes the clock when it is ahead of every old value', () => {
    const sync = make('test-key');
    sync.clear();
    now = T0 + 3_600_000;
    sync.refresh();
    expect(sync.syncGen).toBe(1_700_003_600);
  });

  it('markUpdated on a cleared key re-creates it, and the other holders see it expired', () => {
    const mine = make('test-key');
    const theirs = make('test-key');
    const before = mine.syncGen as number;
    mine.clear();
    expect(mine.markUpdated()).toBe(true);
    expect(mine.syncGen).toBeGreaterThan(before);
    expect(mine.isExpired()).toBe(false);
    expect(theirs.isExpired()).toBe(true);
  });

  it('accepts a key given as a sequence and normalizes it', () => {
    const sync = make(['users', 'a:b', 'settings']);
    expect(sync.cacheKey).toBe('users:a%3Ab:settings');
    const same = make(['users', 'a:b', 'settings']);
    sync.markUpdated();
    expect(same.isExpired()).toBe(true);
    // A different split of the same characters is a different key.
    const other = make(['users:a', 'b:settings']);
    expect(other.cacheKey).not.toBe(sync.cacheKey);
    const otherGen = other.syncGen;
    sync.markUpdated();
    expect(other.isExpired()).toBe(false);
    expect(other.syncGen).toBe(otherGen);
  });

  it('applies keyPrefix through makeCacheKey, and none without normalization', () => {
    expect(make('settings', { keyPrefix: ['example.com', '/app/'] }).cacheKey).toBe('example.com:/app/:settings');
    expect(make('a b', { normalizeCacheKey: false }).cacheKey).toBe('a b');
    expect(make('a b').cacheKey).toBe(makeCacheKey('a b'));
  });

  it('keeps keys apart that differ only in normalization', () => {
    const raw = make('a b', { normalizeCacheKey: false });
    const normalized = make('a b');
    raw.markUpdated();
    expect(normalized.isExpired()).toBe(false);
  });

  it('keeps many distinct keys apart', () => {
    const keys = Array.from({ length: 200 }, (_, i) => `key-${i}`);
    const syncs = keys.map((key) => make(key));
    syncs[17]?.markUpdated();
    const observers = keys.map((key) => make(key));
    syncs[42]?.markUpdated();
    observers.forEach((observer, i) => expect(observer.isExpired(), keys[i]).toBe(i === 42));
  });

  it('works with keys of any length and content when not normalized', () => {
    const keys = [
      '',
      '\u0000',
      '__proto__',
      'constructor',
      'emoji 😀🎉 and 中文',
      'x'.repeat(256),
      'x'.repeat(257),
      'y'.repeat(1 << 20),
      'y'.repeat((1 << 20) - 1) + 'z',
    ];
    const syncs = keys.map((key) => make(key, { normalizeCacheKey: false }));
    expect(syncs.map((sync) => sync.cacheKey)).toEqual(keys);
    syncs.forEach((sync, i) => {
      const observers = keys.map((key) => make(key, { normalizeCacheKey: false }));
      sync.markUpdated();
      observers.forEach((observer, j) => expect(observer.isExpired(), `bump ${i}, observe ${j}`).toBe(i === j));
    });
  });
});

// The djblets semantics, run unchanged against every synchronizer class
// over every store it works with.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { makeCacheKey, type AsyncGenerationSynchronizerOptions, type AsyncStore, type Store } from 'generation-sync';

import { recordingLogger, tempDir } from './helpers';
import { SUBJECTS, type Synchronizer } from './stores';

const T0 = 1_700_000_000_000; // ms

describe.each(SUBJECTS)('$name', (subject) => {
  let store: Store | AsyncStore;
  let now: number;
  const clock = (): number => now;
  const make = (key: string | readonly string[], options: AsyncGenerationSynchronizerOptions = {}): Promise<Synchronizer> =>
    subject.create(key, { store, clock, logger: recordingLogger(), ...options });

  beforeEach(async () => {
    store = await subject.kind.open(tempDir());
    now = T0;
  });
  afterEach(async () => {
    await store.close();
  });

  it('starts with a generation seeded from the clock, and not expired', async () => {
    now = T0 + 999;
    const before = Date.now();
    const sync = await make('test-key');
    const seed = subject.kind.seedFor(T0 + 999);
    if (seed === undefined) {
      // Redis: the server's clock in microseconds (the server runs on this host), whatever the client's clock says.
      expect(sync.syncGen).toBeGreaterThanOrEqual((before - 1000) * 1000);
      expect(sync.syncGen).toBeLessThanOrEqual((Date.now() + 1000) * 1000);
    } else {
      expect(sync.syncGen).toBe(seed);
    }
    expect(await sync.isExpired()).toBe(false);
    expect(sync.cacheKey).toBe('test-key');
  });

  it('takes the stored generation instead of seeding when the key exists', async () => {
    const first = await make('test-key');
    now = T0 + 60_000;
    const second = await make('test-key');
    expect(second.syncGen).toBe(first.syncGen);
    expect(await second.isExpired()).toBe(false);
  });

  it('is expired once another holder marks the state updated', async () => {
    const mine = await make('test-key');
    const theirs = await make('test-key');
    expect(await theirs.markUpdated()).toBe(true);
    expect(await mine.isExpired()).toBe(true);
    expect(await theirs.isExpired()).toBe(false);
  });

  it('the README\'s order (refresh, then load) sees a change made during the load; the reverse order loses it (issue 16)', async () => {
    // The shared data and its writer: every change is saved, then announced with markUpdated().
    let data = 1;
    const writer = await make('settings');
    const change = async (): Promise<void> => {
      data++;
      await writer.markUpdated();
    };
    /** A load that reads the data, during which another process changes it. */
    const loadWithChangeDuring = async (): Promise<number> => {
      const read = data;
      await change();
      return read;
    };

    for (const order of ['refresh, then load', 'load, then refresh'] as const) {
      const reader = await make('settings');
      let held = data;
      await change(); // the reader must notice this one
      expect(await reader.isExpired()).toBe(true);
      if (order === 'refresh, then load') {
        await reader.refresh();
        held = await loadWithChangeDuring();
      } else {
        held = await loadWithChangeDuring();
        await reader.refresh();
      }
      expect(held).toBe(data - 1); // it holds data one change old
      // The safe order still reports expired, so the next check reloads; the reverse order reports fresh: lost.
      expect(await reader.isExpired(), order).toBe(order === 'refresh, then load');
    }
  });

  it('is not expired while nobody changes the state', async () => {
    const mine = await make('test-key');
    await make('test-key');
    await (await make('other-key')).markUpdated();
    for (let i = 0; i < 3; i++) expect(await mine.isExpired()).toBe(false);
  });

  it('refresh takes the latest generation', async () => {
    const mine = await make('test-key');
    const theirs = await make('test-key');
    await theirs.markUpdated();
    await theirs.markUpdated();
    expect(await mine.isExpired()).toBe(true);
    expect(await mine.refresh()).toBe(true);
    expect(mine.syncGen).toBe(theirs.syncGen);
    expect(await mine.isExpired()).toBe(false);
  });

  it(subject.kind.seedFor(0) === undefined
    ? 'markUpdated moves the generation to the larger of one more and the server clock in microseconds'
    : 'markUpdated increments the generation by exactly one', async () => {
    const sync = await make('test-key');
    const before = sync.syncGen as number;
    const clockBefore = Date.now() * 1000; // the same machine's clock as the server's, read before the change
    expect(await sync.markUpdated()).toBe(true);
    const first = sync.syncGen as number;
    await sync.markUpdated();
    const second = sync.syncGen as number;
    if (subject.kind.seedFor(0) === undefined) {
      // Redis: a hybrid clock kept by the server (src/stores/redis/redis-scripts.ts).
      expect(first).toBeGreaterThanOrEqual(Math.max(before + 1, clockBefore));
      expect(second).toBeGreaterThanOrEqual(first + 1);
      expect(second).toBeLessThanOrEqual(Math.max(first + 1, Date.now() * 1000 + 1000));
    } else {
      expect(first).toBe(before + 1);
      expect(second).toBe(before + 2);
    }
    expect(await sync.isExpired()).toBe(false);
  });

  it('clear expires every holder, the one that cleared included', async () => {
    const mine = await make('test-key');
    const theirs = await make('test-key');
    expect(await mine.clear()).toBe(true);
    expect(await mine.isExpired()).toBe(true);
    expect(await theirs.isExpired()).toBe(true);
    // Clearing an absent key is fine too.
    expect(await theirs.clear()).toBe(true);
  });

  it('refresh after clear re-creates the key above every value it had, even in the same second', async () => {
    const mine = await make('test-key');
    const theirs = await make('test-key');
    const created = mine.syncGen as number;
    await mine.markUpdated();
    await mine.markUpdated();
    const highest = mine.syncGen as number;
    await mine.clear();
    // The clock has not moved: djblets would re-seed with `created` again.
    expect(await theirs.refresh()).toBe(true);
    expect(theirs.syncGen).toBeGreaterThan(highest);
    expect(theirs.syncGen).not.toBe(created);
    expect(await mine.isExpired()).toBe(true);
    await mine.refresh();
    expect(mine.syncGen).toBe(theirs.syncGen);
  });

  it('a re-created key never goes back even if the clock does', async () => {
    now = T0 + 10_000_000;
    const sync = await make('test-key');
    const high = sync.syncGen as number;
    await sync.clear();
    now = T0;
    await sync.refresh();
    // Redis re-creates from its own clock, which has moved on; never below the old value either way.
    if (subject.kind.seedFor(now) === undefined) expect(sync.syncGen).toBeGreaterThan(high);
    else expect(sync.syncGen).toBe(high + 1);
  });

  it('a re-created key takes the clock when it is ahead of every old value', async () => {
    const sync = await make('test-key');
    await sync.clear();
    const high = sync.syncGen as number;
    now = T0 + 3_600_000;
    await sync.refresh();
    const seed = subject.kind.seedFor(T0 + 3_600_000);
    if (seed === undefined) expect(sync.syncGen).toBeGreaterThan(high); // Redis: its own clock, which is ahead
    else expect(sync.syncGen).toBe(seed);
  });

  it('markUpdated on a cleared key re-creates it, and the other holders see it expired', async () => {
    const mine = await make('test-key');
    const theirs = await make('test-key');
    const before = mine.syncGen as number;
    await mine.clear();
    expect(await mine.markUpdated()).toBe(true);
    expect(mine.syncGen).toBeGreaterThan(before);
    expect(await mine.isExpired()).toBe(false);
    expect(await theirs.isExpired()).toBe(true);
  });

  it('accepts a key given as a sequence and normalizes it', async () => {
    const sync = await make(['users', 'a:b', 'settings']);
    expect(sync.cacheKey).toBe('users:a%3Ab:settings');
    const same = await make(['users', 'a:b', 'settings']);
    await sync.markUpdated();
    expect(await same.isExpired()).toBe(true);
    // A different split of the same characters is a different key.
    const other = await make(['users:a', 'b:settings']);
    expect(other.cacheKey).not.toBe(sync.cacheKey);
    const otherGen = other.syncGen;
    await sync.markUpdated();
    expect(await other.isExpired()).toBe(false);
    expect(other.syncGen).toBe(otherGen);
  });

  it('applies keyPrefix through makeCacheKey, and none without normalization', async () => {
    expect((await make('settings', { keyPrefix: ['example.com', '/app/'] })).cacheKey).toBe('example.com:/app/:settings');
    expect((await make('a b', { normalizeCacheKey: false })).cacheKey).toBe('a b');
    expect((await make('a b')).cacheKey).toBe(makeCacheKey('a b'));
  });

  it('keeps keys apart that differ only in normalization', async () => {
    const raw = await make('a b', { normalizeCacheKey: false });
    const normalized = await make('a b');
    await raw.markUpdated();
    expect(await normalized.isExpired()).toBe(false);
  });

  it('keeps many distinct keys apart', async () => {
    const keys = Array.from({ length: 200 }, (_, i) => `key-${i}`);
    const syncs = await Promise.all(keys.map((key) => make(key)));
    await syncs[17]?.markUpdated();
    const observers = await Promise.all(keys.map((key) => make(key)));
    await syncs[42]?.markUpdated();
    for (const [i, observer] of observers.entries()) expect(await observer.isExpired(), keys[i]).toBe(i === 42);
  });

  it('works with keys of any length and content when not normalized', async () => {
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
    const syncs = await Promise.all(keys.map((key) => make(key, { normalizeCacheKey: false })));
    expect(syncs.map((sync) => sync.cacheKey)).toEqual(keys);
    const observers = await Promise.all(keys.map((key) => make(key, { normalizeCacheKey: false })));
    for (const [i, sync] of syncs.entries()) {
      await sync.markUpdated();
      for (const [j, observer] of observers.entries()) {
        expect(await observer.isExpired(), `bump ${i}, observe ${j}`).toBe(i === j);
      }
      await observers[i]?.refresh();
    }
  });
});

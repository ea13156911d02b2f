// Real processes sharing one store: exact totals under contention, change
// notification between processes, and racing creation of one new key.
import { afterEach, describe, expect, it } from 'vitest';

import { AsyncGenerationSynchronizer, type AsyncStore, type Store } from 'generation-sync';

import { ask, startWorker, stopAll, tempDir, type Worker, type WorkerReply } from './helpers';
import { RedisServer } from './redis-server';
import { STORE_KINDS } from './stores';
import { effort } from './support/effort';

const workers: Worker[] = [];
afterEach(() => stopAll(workers.splice(0)));

async function startWorkers(count: number, args: string[]): Promise<Worker[]> {
  const started = Array.from({ length: count }, () => startWorker('worker.mjs', args));
  workers.push(...started);
  await Promise.all(started.map((worker) => worker.next()));
  return started;
}

/** Per store kind: processes × increments for the exact-total test. */
const HAMMER: Record<string, { processes: number; increments: number }> = {
  shm: { processes: 4, increments: effort.shmHammer },
  file: { processes: 4, increments: effort.storeHammer },
  redis: { processes: 4, increments: effort.storeHammer },
  ioredis: { processes: 4, increments: effort.storeHammer },
};

/** The current generation of `key`, read through a fresh synchronizer of the right class. */
async function generationOf(store: Store | AsyncStore, key: string): Promise<number | null> {
  return (await AsyncGenerationSynchronizer.create(key, { store })).syncGen;
}

describe.each(STORE_KINDS)('processes sharing the $name store', (kind) => {
  // On Redis each change moves a key to the larger of one more and the server's clock: counted on a server whose
  // clock stands still, where every change is exactly one more.
  it(`N processes × M markUpdated() on one key end at exactly base + N·M${kind.on ? ' (the server\'s clock held still)' : ''}`, async () => {
    const { processes, increments } = HAMMER[kind.name] as { processes: number; increments: number };
    const dir = tempDir();
    const frozen = kind.on ? await RedisServer.start({ frozenClockUs: 1_700_000_000_000_000 }) : undefined;
    try {
      const store = frozen && kind.on ? await kind.on.open(frozen.url, dir) : await kind.open(dir);
      const base = (await generationOf(store, 'hammered')) as number;
      const group = await startWorkers(processes, frozen && kind.on ? kind.on.workerArgs(frozen.url, dir) : await kind.workerArgs(dir));
      const startAt = Date.now() + 300;
      const replies = await Promise.all(group.map((worker) => ask(worker, { cmd: 'hammer', key: 'hammered', count: increments, startAt })));

      expect(replies.map((reply) => reply.failures)).toEqual(group.map(() => 0));
      const total = base + processes * increments;
      expect(await generationOf(store, 'hammered')).toBe(total);
      // Whoever made the last increment holds the final value; nobody holds more.
      const finals = replies.map((reply) => reply.syncGen as number);
      expect(Math.max(...finals)).toBe(total);
      for (const value of finals) expect(value).toBeGreaterThanOrEqual(base + increments);
      await store.close();
    } finally {
      await frozen?.stop();
    }
  });

  it.runIf(kind.on !== undefined)('on a server whose clock runs, N processes × M markUpdated() are each handed a generation of their own, and the last is the stored one', async () => {
    const { processes, increments } = HAMMER[kind.name] as { processes: number; increments: number };
    const dir = tempDir();
    const store = await kind.open(dir);
    const base = (await generationOf(store, 'hammered')) as number;
    const group = await startWorkers(processes, await kind.workerArgs(dir));
    const startAt = Date.now() + 300;
    const replies = await Promise.all(group.map((worker) => ask(worker, { cmd: 'hammer', key: 'hammered', count: increments, startAt, collect: true })));
    expect(replies.map((reply) => reply.failures)).toEqual(group.map(() => 0));
    const handed = replies.flatMap((reply) => reply.values as number[]);
    expect(handed).toHaveLength(processes * increments);
    expect(new Set(handed).size).toBe(handed.length); // two increments never read the same value
    for (const reply of replies) {
      const own = reply.values as number[];
      expect(own.every((value, i) => value > (i === 0 ? base : (own[i - 1] as number)))).toBe(true);
    }
    expect(await generationOf(store, 'hammered')).toBe(Math.max(...handed));
    await store.close();
  });

  it('one process bumps, the others see isExpired() and refresh to the same value', async () => {
    const dir = tempDir();
    const [bumper, ...watchers] = await startWorkers(4, await kind.workerArgs(dir));
    const initial = await ask(bumper as Worker, { cmd: 'sync', key: 'settings' });
    for (const watcher of watchers) expect((await ask(watcher, { cmd: 'sync', key: 'settings' })).syncGen).toBe(initial.syncGen);

    for (let round = 0; round < 5; round++) {
      for (const watcher of watchers) watcher.send({ cmd: 'watch', key: 'settings', timeoutMs: 20_000 });
      const started = await Promise.all(watchers.map((watcher) => watcher.next<WorkerReply>()));
      expect(started.map((reply) => reply.expiredAtStart)).toEqual(watchers.map(() => false));

      const bumped = await ask(bumper as Worker, { cmd: round === 3 ? 'clear' : 'bump', key: 'settings' });
      expect(bumped.ok).toBe(true);
      const seen = await Promise.all(watchers.map((watcher) => watcher.next<WorkerReply>()));
      for (const reply of seen) {
        expect(reply.timedOut).toBe(false);
        expect(reply.expiredAfterRefresh).toBe(false);
      }
      // All watchers refreshed to one value; after a bump it is the bumper's.
      const values = new Set(seen.map((reply) => reply.syncGen));
      expect(values.size).toBe(1);
      if (round !== 3) expect(seen[0]?.syncGen).toBe(bumped.syncGen);
      else expect(seen[0]?.syncGen).toBeGreaterThan(initial.syncGen as number);
      await ask(bumper as Worker, { cmd: 'bump', key: 'noise' });
      // The bumper is stale only after a clear (it refreshes below).
      const own = await ask(bumper as Worker, { cmd: 'expired', key: 'settings' });
      expect(own.expired).toBe(round === 3);
      if (round === 3) {
        bumper?.send({ cmd: 'watch', key: 'settings', timeoutMs: 1000 });
        await bumper?.next();
        expect((await bumper?.next<WorkerReply>())?.syncGen).toBe(seen[0]?.syncGen);
      }
    }
  });

  it('processes creating the same new key at the same moment get one slot and one value', async () => {
    const dir = tempDir();
    const group = await startWorkers(8, await kind.workerArgs(dir));
    const rounds = 20;
    for (let round = 0; round < rounds; round++) {
      const key = `new-key-${round}`;
      const startAt = Date.now() + 100;
      // Each process would seed a different value, so two slots would show as two values.
      const replies = await Promise.all(
        group.map((worker, i) => ask(worker, { cmd: 'create', key, seedMs: (1_000_000 + i) * 1000, startAt })),
      );
      const values = new Set(replies.map((reply) => reply.syncGen));
      expect(values.size, `round ${round}: ${[...values].join(', ')}`).toBe(1);
    }
    const store = await kind.open(dir);
    const keys = (await store.entries()).map((entry) => entry.key);
    expect(keys.sort()).toEqual(Array.from({ length: rounds }, (_, i) => `new-key-${i}`).sort());
    await store.close();
  });
});

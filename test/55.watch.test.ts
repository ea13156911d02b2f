// Push, not poll: watch() and waitForChange() on every store, in one process
// and across real processes; SynchronizedValue and its async twin.
import { spawn, type ChildProcess } from 'node:child_process';
import { renameSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  AsyncSynchronizedValue,
  FileStore,
  GenerationSynchronizer,
  InvalidArgumentError,
  RedisStore,
  SharedMemoryStore,
  StoreUnavailableError,
  SynchronizedValue,
  type AsyncGenerationSynchronizerOptions,
  type AsyncStore,
  type GenerationChange,
  type Store,
} from 'generation-sync';

import { eventually, FIXTURES, recordingLogger, ROOT, startWorker, stopAll, tempDir, thrown, type Worker } from './helpers';
import { sharedRedisUrl } from './redis-server';
import { scaled } from './support/time-scale';
import { STORE_KINDS, SUBJECTS, type Synchronizer } from './stores';
import { effort } from './support/effort';

const workers: Worker[] = [];
afterEach(() => stopAll(workers.splice(0)));

describe.each(SUBJECTS)('watching with $name', (subject) => {
  let store: Store | AsyncStore;
  const make = (key: string, options: AsyncGenerationSynchronizerOptions = {}): Promise<Synchronizer> =>
    subject.create(key, { store, logger: recordingLogger(), ...options });

  beforeEach(async () => {
    store = await subject.kind.open(tempDir());
  });
  afterEach(async () => {
    await store.close();
  });

  it('calls the listener with the new and the previous generation on a bump and on a clear, until unwatched', async () => {
    const watcher = await make('watched');
    const changer = await make('watched');
    const changes: GenerationChange[] = [];
    const unwatch = watcher.watch((change) => changes.push(change));
    const start = watcher.syncGen;

    await changer.markUpdated();
    await eventually('the bump', () => (changes.length >= 1 ? true : undefined));
    expect(changes[0]).toEqual({ generation: changer.syncGen, previous: start });

    await changer.clear();
    await eventually('the clear', () => (changes.length >= 2 ? true : undefined));
    expect(changes[1]).toEqual({ generation: null, previous: changer.syncGen });

    unwatch[Symbol.dispose]();
    unwatch(); // idempotent
    await changer.refresh();
    await changer.markUpdated();
    const other = await make('watched');
    const seen = await other.waitForChange({ timeoutMs: 0 });
    expect(seen).toBeNull();
    await other.markUpdated();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(changes).toHaveLength(2);
    // The listener does not refresh the synchronizer; the application does.
    expect(await watcher.isExpired()).toBe(true);
  });

  it('changes() yields each change to a for-await loop, merges what a slow loop missed, and ends cleanly on abort (issue 16)', async () => {
    const watcher = await make('iterated');
    const changer = await make('iterated');
    const start = watcher.syncGen;
    const controller = new AbortController();
    const seen: GenerationChange[] = [];
    const loop = (async () => {
      for await (const change of watcher.changes({ signal: controller.signal })) {
        seen.push(change);
        if (seen.length === 1) await new Promise((resolve) => setTimeout(resolve, 300)); // a slow consumer
      }
      return 'ended';
    })();
    await changer.markUpdated();
    await eventually('the first change', () => (seen.length >= 1 ? true : undefined));
    expect(seen[0]).toEqual({ generation: changer.syncGen, previous: start });
    const afterFirst = changer.syncGen;
    // Three changes while the loop is busy arrive merged: the latest generation, and the one the loop saw before.
    await changer.markUpdated();
    await changer.markUpdated();
    await changer.markUpdated();
    await eventually('the merged change', () => (seen.at(-1)?.generation === changer.syncGen ? true : undefined));
    expect(seen.at(-1)?.previous).toBe(seen.at(-2)?.generation);
    expect(seen[1]?.previous).toBe(afterFirst);
    controller.abort();
    expect(await loop).toBe('ended'); // no throw
  });

  it('changes() ends when the loop breaks, when the store closes, and when the synchronizer is disposed of (issue 16)', async () => {
    const watcher = await make('ending');
    const changer = await make('ending');
    // break: the watch stops (a later change reaches nobody).
    const broken = (async () => {
      for await (const change of watcher.changes()) return change;
      return undefined;
    })();
    await changer.markUpdated();
    expect(await broken).toMatchObject({ generation: changer.syncGen });

    // dispose of the synchronizer: its loops end, its watches stop.
    const heard: GenerationChange[] = [];
    watcher.watch((change) => heard.push(change));
    const disposed = (async () => {
      const got: GenerationChange[] = [];
      for await (const change of watcher.changes()) got.push(change);
      return got;
    })();
    watcher[Symbol.dispose]();
    expect(await disposed).toEqual([]);
    await changer.markUpdated();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(heard).toEqual([]);

    // The store closes: the loop ends without throwing.
    const closing = (async () => {
      for await (const change of watcher.changes()) void change;
      return 'ended';
    })();
    await new Promise((resolve) => setTimeout(resolve, 20));
    await store.close();
    expect(await closing).toBe('ended');
    store = await subject.kind.open(tempDir()); // for afterEach
  });

  it('watch() stops when its signal aborts, and an aborted signal starts nothing (issue 16)', async () => {
    const watcher = await make('signalled');
    const changer = await make('signalled');
    const heard: GenerationChange[] = [];
    const controller = new AbortController();
    watcher.watch((change) => heard.push(change), { signal: controller.signal });
    watcher.watch((change) => heard.push(change), { signal: AbortSignal.abort() });
    await changer.markUpdated();
    await eventually('the change', () => (heard.length >= 1 ? true : undefined));
    controller.abort();
    await changer.markUpdated();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(heard).toHaveLength(1);
    expect(() => watcher.watch(() => undefined, { signal: 'soon' as never })).toThrow(/must be an AbortSignal/);
  });

  it('waitForChange resolves with the next change, at once when already changed, null on timeout, and honours AbortSignal', async () => {
    const mine = await make('waited');
    const theirs = await make('waited');

    expect(await mine.waitForChange({ timeoutMs: 30 })).toBeNull();

    const waiting = mine.waitForChange({ timeoutMs: 10_000 });
    await theirs.markUpdated();
    expect(await waiting).toEqual({ generation: theirs.syncGen, previous: mine.syncGen });

    // Already behind: resolves without a new change.
    expect(await mine.waitForChange({ timeoutMs: 10_000 })).toEqual({ generation: theirs.syncGen, previous: mine.syncGen });

    await mine.refresh();
    const controller = new AbortController();
    const aborted = mine.waitForChange({ signal: controller.signal });
    controller.abort(new Error('no longer needed'));
    await expect(aborted).rejects.toThrow('no longer needed');
    await expect(mine.waitForChange({ signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
    await expect(mine.waitForChange({ timeoutMs: -1 })).rejects.toThrow(/"timeoutMs"/);
  });

  it('coalesces a burst but always ends on the latest generation', async () => {
    const watcher = await make('burst');
    const changer = await make('burst');
    const seen: Array<number | null> = [];
    const unwatch = watcher.watch(({ generation }) => seen.push(generation));
    for (let i = 0; i < 200; i++) await changer.markUpdated();
    await eventually('the last bump', () => (seen.at(-1) === changer.syncGen ? true : undefined));
    expect(seen.length).toBeLessThanOrEqual(200);
    for (let i = 1; i < seen.length; i++) expect(seen[i] as number).toBeGreaterThan(seen[i - 1] as number);
    unwatch();
  });
});

describe.each(STORE_KINDS)('watchers in other processes, on the $name store', (kind) => {
  interface Status {
    changes: number;
    last: number | null;
    timerFires: number;
  }

  async function watchers(count: number, dir: string, key: string): Promise<Worker[]> {
    const args = [...(await kind.workerArgs(dir)), key];
    const started = Array.from({ length: count }, () => startWorker('watcher.mjs', args));
    workers.push(...started);
    await Promise.all(started.map((worker) => worker.next()));
    return started;
  }

  const status = async (worker: Worker): Promise<Status> => {
    worker.send({ cmd: 'status' });
    return worker.next<Status>();
  };

  it(`a bump in one process wakes the watchers in three others, and ${effort.watchBurst.toLocaleString('en-US')} rapid bumps end with all of them on the final generation`, async () => {
    const dir = tempDir();
    const group = await watchers(3, dir, 'shared-key');
    const bumper = startWorker('worker.mjs', await kind.workerArgs(dir));
    workers.push(bumper);
    await bumper.next();

    bumper.send({ cmd: 'bump', key: 'shared-key' });
    const { syncGen: first } = await bumper.next<{ syncGen: number }>();
    await eventually('every watcher to see the bump', async () => {
      const all = await Promise.all(group.map(status));
      return all.every((s) => s.last === first && s.changes === 1) ? all : undefined;
    });

    const count = effort.watchBurst;
    bumper.send({ cmd: 'hammer', key: 'shared-key', count, startAt: 0 });
    const { syncGen: final, failures } = await bumper.next<{ syncGen: number; failures: number }>(120_000);
    expect(failures).toBe(0);
    // Each bump moves the key up by one (on Redis, at least one: it also follows the server's clock).
    if (kind.seedFor(0) === undefined) expect(final).toBeGreaterThanOrEqual(first + count);
    else expect(final).toBe(first + count);
    const all = await eventually(
      'every watcher to see the final generation',
      async () => {
        const statuses = await Promise.all(group.map(status));
        return statuses.every((s) => s.last === final) ? statuses : undefined;
      },
      20_000,
    );
    for (const s of all) {
      expect(s.changes).toBeGreaterThan(1);
      expect(s.changes).toBeLessThanOrEqual(count + 1);
      // The watcher's own timer kept firing: waiting never blocked its event loop.
      expect(s.timerFires).toBeGreaterThan(0);
    }
  });

  it('keeps the event loop free while waiting: a timer keeps firing', async () => {
    const [watcher] = await watchers(1, tempDir(), 'quiet-key');
    const fired = await eventually('the watcher\'s timer to fire 20 times', async () => {
      const s = await status(watcher as Worker);
      return s.timerFires >= 20 ? s.timerFires : undefined;
    });
    expect(fired).toBeGreaterThanOrEqual(20);
  });

  it('disposing of the last watcher lets the process exit on its own', async () => {
    const [watcher] = await watchers(1, tempDir(), 'exit-key');
    (watcher as Worker).send({ cmd: 'unwatch' });
    await (watcher as Worker).next();
    const code = await Promise.race([(watcher as Worker).exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 10_000))]);
    expect(code).toBe(0);
  });

  if (kind.name !== 'redis' && kind.name !== 'ioredis') {
    it('a watch alone never keeps the process alive', async () => {
      const [watcher] = await watchers(1, tempDir(), 'detached-key');
      (watcher as Worker).send({ cmd: 'detach' });
      await (watcher as Worker).next();
      const code = await Promise.race([(watcher as Worker).exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 10_000))]);
      expect(code).toBe(0);
    });
  }
});

describe.each(SUBJECTS)('SynchronizedValue on $name', (subject) => {
  let store: Store | AsyncStore;
  beforeEach(async () => {
    store = await subject.kind.open(tempDir());
  });
  afterEach(async () => {
    await store.close();
  });

  it('loads once, reloads only after a change anywhere, and invalidate() reloads here and expires everywhere', async () => {
    let version = 1;
    let loads = 0;
    const load = (): { version: number } => {
      loads++;
      return { version };
    };
    if (subject.kind.asynchronous || subject.name.startsWith('Async')) {
      const a = await AsyncSynchronizedValue.create('value', async () => load(), { store });
      const b = await AsyncSynchronizedValue.create('value', async () => load(), { store });
      expect((await a.get()).version).toBe(1);
      expect((await b.get()).version).toBe(1);
      expect(await a.get()).toBe(await a.get());
      expect(loads).toBe(2);
      version = 2;
      expect((await a.invalidate()).version).toBe(2);
      expect((await b.get()).version).toBe(2);
      expect(loads).toBe(4);
      // Single flight: concurrent gets after a change share one reload.
      version = 3;
      await a.invalidate();
      const before = loads;
      const results = await Promise.all(Array.from({ length: 20 }, () => b.get()));
      expect(results.every((value) => value.version === 3)).toBe(true);
      expect(loads - before).toBe(1);
    } else {
      const a = new SynchronizedValue('value', load, { store: store as Store });
      const b = new SynchronizedValue('value', load, { store: store as Store });
      expect(a.get().version).toBe(1);
      expect(b.get().version).toBe(1);
      expect(a.get()).toBe(a.get());
      expect(loads).toBe(2);
      version = 2;
      expect(a.invalidate().version).toBe(2);
      expect(b.get().version).toBe(2);
      expect(b.get()).toBe(b.get());
      expect(loads).toBe(4);
    }
  });

  it('a loader that fails is retried on the next get(), even though the generation moved on', async () => {
    let fail = false;
    let loads = 0;
    const load = (): string => {
      loads++;
      if (fail) throw new Error('database down');
      return `load ${loads}`;
    };
    if (subject.kind.asynchronous || subject.name.startsWith('Async')) {
      const value = await AsyncSynchronizedValue.create('flaky', async () => load(), { store });
      expect(await value.get()).toBe('load 1');
      fail = true;
      await expect(value.invalidate()).rejects.toThrow('database down');
      fail = false;
      expect(await value.get()).toBe('load 3');
      expect(await value.get()).toBe('load 3');
    } else {
      const value = new SynchronizedValue('flaky', load, { store: store as Store });
      expect(value.get()).toBe('load 1');
      fail = true;
      expect(() => value.invalidate()).toThrow('database down');
      fail = false;
      expect(value.get()).toBe('load 3');
      expect(value.get()).toBe('load 3');
    }
  });
});

describe('ending while watching, with another process bumping the key in a tight loop (shared-memory store)', () => {
  /** How many times each way of ending is tried (test/support/effort.ts): every one must end normally. */
  const ROUNDS = effort.teardownRounds;
  /** How long one process may take before it counts as hung (and is killed): longer under emulation, where starting a Worker takes seconds. */
  const HANG_MS = scaled(30_000);
  const CLI = join(ROOT, 'dist', 'cli.js');

  interface Ending {
    readonly status: number | null;
    readonly signal: NodeJS.Signals | null;
    readonly stderr: string;
  }

  function run(args: string[], onStart?: (child: ChildProcess) => void, hangMs = HANG_MS): Promise<Ending> {
    return new Promise((resolveEnd) => {
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.stdout.on('data', () => {});
      const killer = setTimeout(() => child.kill('SIGKILL'), hangMs); // a hang ends as a failure, not a stuck test
      child.once('exit', (status, signal) => {
        clearTimeout(killer);
        resolveEnd({ status, signal, stderr });
      });
      onStart?.(child);
    });
  }

  /** Run `count` jobs, two at a time (the machine has two cores), and return every result. */
  async function inPairs<T>(count: number, job: (i: number) => Promise<T>): Promise<T[]> {
    const results: T[] = [];
    for (let i = 0; i < count; i += 2) results.push(...(await Promise.all([i, i + 1].filter((n) => n < count).map(job))));
    return results;
  }

  async function withBumper<T>(action: (path: string) => Promise<T>): Promise<T> {
    const path = join(tempDir(), 'g.shm');
    const bumper = startWorker('bump-until-stopped.mjs', [path, 'hot', '300000']);
    workers.push(bumper);
    await bumper.next();
    try {
      return await action(path);
    } finally {
      bumper.send('stop');
      const { bumps } = await bumper.next<{ bumps: number }>();
      expect(bumps).toBeGreaterThan(0);
    }
  }

  const abnormal = (endings: Ending[]): Ending[] => endings.filter((ending) => ending.status !== 0 || ending.signal !== null);

  it.each(['natural', 'exit', 'sigterm'])(`a process that ends (%s) while changes arrive exits 0, ${ROUNDS} times out of ${ROUNDS}`, async (mode) => {
    const endings = await withBumper((path) => inPairs(ROUNDS, () => run([join(FIXTURES, 'watch-teardown.mjs'), mode, path, 'hot'])));
    expect(abnormal(endings)).toEqual([]);
  }, 300_000);

  it.each(['worker-end', 'worker-terminate'])(`a Worker that watches and ends (%s) never takes the process down, ${ROUNDS} times out of ${ROUNDS}`, async (mode) => {
    const processes = 4;
    const endings = await withBumper((path) =>
      inPairs(processes, () => run([join(FIXTURES, 'watch-teardown.mjs'), mode, path, 'hot', String(ROUNDS / processes)])),
    );
    expect(abnormal(endings)).toEqual([]);
    expect(endings.map((ending) => ending.status)).toEqual(Array(processes).fill(0));
  }, 300_000);

  it(`a Worker terminated just as it loads the addon never takes the process down (${ROUNDS * 3} Workers)`, async () => {
    // Each Worker is terminated within 2 ms of opening a store, so some terminations land while the addon's
    // module initialisation runs in that Worker: node-addon-api then could not throw, and aborted the process
    // (FATAL ERROR: Error::ThrowAsJavaScriptException napi_throw) at a6de41b, in 5 of 5 runs of 30 Workers, on
    // Node 20 and 26 (found by .ci/run's Node 26 stage in the worker-terminate test above). A Worker takes about
    // 0.1 s to start and load: 300 of them (full effort) take 30 to 45 s on a loaded 2-core machine.
    const path = join(tempDir(), 'g.shm');
    const ending = await run([join(FIXTURES, 'worker-load-terminate.mjs'), path, String(ROUNDS * 3)], undefined, scaled(240_000));
    expect(abnormal([ending])).toEqual([]);
  }, 300_000);

  it(`Ctrl-C on the CLI's watch exits 0, ${ROUNDS} times out of ${ROUNDS}`, async () => {
    const endings = await withBumper((path) =>
      inPairs(ROUNDS, () =>
        run([CLI, 'watch', 'hot', '--store', 'shm', '--path', path], (child) => {
          // Interrupt (once, as one Ctrl-C) when it has printed its first change, so that changes are arriving.
          let lines = 0;
          let interrupted = false;
          child.stdout?.on('data', (chunk: Buffer) => {
            lines += chunk.toString().split('\n').length - 1;
            if (lines >= 2 && !interrupted) {
              interrupted = true;
              child.kill('SIGINT');
            }
          });
        }),
      ),
    );
    expect(abnormal(endings)).toEqual([]);
  }, 300_000);
});

describe.each(STORE_KINDS)('closing the $name store while waiting (issue 11 item 10, issue 13 item 11; failed at 1545de2)', (kind) => {
  it('a pending waitForChange() without a timeout rejects with StoreClosedError', async () => {
    const store = await kind.open(tempDir());
    const subject = SUBJECTS.find((candidate) => candidate.kind === kind) as (typeof SUBJECTS)[number];
    const sync = await subject.create('k', { store, logger: recordingLogger() });
    // The expectation is attached first: closing an asynchronous store rejects the wait while close() is still running.
    const rejected = expect(sync.waitForChange()).rejects.toMatchObject({ code: 'ERR_GENSYNC_STORE_CLOSED' });
    await store.close();
    await rejected;
  });
});

describe.each(SUBJECTS.filter((subject) => subject.kind.asynchronous || subject.name.startsWith('Async')))(
  'AsyncSynchronizedValue never goes back to an older value, on $name (issue 13 items 1 and 2; failed at 1545de2)',
  (subject) => {
    let store: Store | AsyncStore;
    beforeEach(async () => {
      store = await subject.kind.open(tempDir());
    });
    afterEach(async () => {
      await store.close();
    });

    /** A loader whose loads finish only when the test says: each load returns the "database" as it was when called. */
    function controlledLoader(): { load: () => Promise<string>; pending: Array<() => void>; set: (value: string) => void } {
      let database = 'v0';
      const pending: Array<() => void> = [];
      return {
        pending,
        set: (value) => (database = value),
        load: () => {
          const snapshot = database;
          return new Promise<string>((resolve) => pending.push(() => resolve(snapshot)));
        },
      };
    }

    it('a reload that started earlier and finishes later does not overwrite the value of invalidate()', async () => {
      const loader = controlledLoader();
      const value = await AsyncSynchronizedValue.create('ordered', loader.load, { store });
      const first = value.get(); // reload A: takes the generation, loads v0 slowly
      await eventually('reload A to start loading', () => (loader.pending.length === 1 ? true : undefined));
      loader.set('v1');
      const invalidated = value.invalidate(); // reload B: a change, loads v1
      await eventually('reload B to start loading', () => (loader.pending.length === 2 ? true : undefined));
      loader.pending[1]?.();
      expect(await invalidated).toBe('v1');
      loader.pending[0]?.(); // A finishes last, with the older value
      await first;
      expect(await value.get()).toBe('v1');
      expect(await value.synchronizer.isExpired()).toBe(false);
      expect(loader.pending).toHaveLength(2);
    });

    it('get() does not join a reload that began before a change it can see: it ends on the newest value', async () => {
      const loader = controlledLoader();
      const value = await AsyncSynchronizedValue.create('watched-then-rebuilt', loader.load, { store });
      const other = await subject.create('watched-then-rebuilt', { store, logger: recordingLogger() });
      loader.set('v2');
      const early = value.get(); // reload A loads v2
      await eventually('reload A to start loading', () => (loader.pending.length === 1 ? true : undefined));
      loader.set('v3');
      await other.markUpdated(); // another process changes the state; the watcher tells the holder, who rebuilds
      const rebuilt = value.get();
      await eventually('a newer reload to start loading', () => (loader.pending.length === 2 ? true : undefined));
      for (const finish of loader.pending) finish();
      expect(await early).toBe('v2');
      expect(await rebuilt).toBe('v3');
      expect(await value.get()).toBe('v3');
    });
  },
);

describe('SynchronizedValue refuses a loader that returns a promise (issue 13 item 1; failed at 1545de2)', () => {
  it('an async function at construction, and a returned promise at the first load; nothing is cached', () => {
    const store = SharedMemoryStore.open(join(tempDir(), 'g.shm'));
    expect(() => new SynchronizedValue('k', (async () => 1) as never, { store })).toThrow(/AsyncSynchronizedValue/);
    let loads = 0;
    const value = new SynchronizedValue('k', (() => {
      loads++;
      return Promise.reject(new Error('database down'));
    }) as never, { store });
    expect(() => value.get()).toThrow(InvalidArgumentError);
    expect(() => value.get()).toThrow(/AsyncSynchronizedValue/);
    expect(loads).toBe(2); // nothing was cached: each get() tried again
    store.close();
  });
});

describe.each(STORE_KINDS.filter((kind) => !kind.asynchronous))(
  'invalidate() reports a change that did not reach the $name store (issue 13 item 3; failed at 1545de2)',
  (kind) => {
    /** Make the store's file unusable, as an outage would: a truncated shared-memory file, a damaged JSON file put in its place. */
    function breakStore(dir: string): void {
      if (kind.name === 'shm') {
        truncateSync(join(dir, 'generations.shm'), 0);
      } else {
        writeFileSync(join(dir, 'damaged.json'), '{ damaged');
        renameSync(join(dir, 'damaged.json'), join(dir, 'generations.json'));
      }
    }

    it('SynchronizedValue.invalidate() throws ERR_GENSYNC_NOT_PUBLISHED, after reloading here', async () => {
      const dir = tempDir();
      const store = (await kind.open(dir)) as Store;
      let loads = 0;
      const value = new SynchronizedValue('k', () => ++loads, { store, logger: recordingLogger() });
      expect(value.get()).toBe(1);
      breakStore(dir);
      await new Promise((resolve) => setTimeout(resolve, 600)); // let the store notice
      const error = thrown(() => value.invalidate());
      expect(error).toBeInstanceOf(StoreUnavailableError);
      expect((error as StoreUnavailableError).code).toBe('ERR_GENSYNC_NOT_PUBLISHED');
      expect(loads).toBe(2);
      store.close();
    });

    it('AsyncSynchronizedValue.invalidate() rejects with ERR_GENSYNC_NOT_PUBLISHED', async () => {
      const dir = tempDir();
      const store = (await kind.open(dir)) as Store;
      let loads = 0;
      const value = await AsyncSynchronizedValue.create('k', async () => ++loads, { store, logger: recordingLogger() });
      expect(await value.get()).toBe(1);
      breakStore(dir);
      await new Promise((resolve) => setTimeout(resolve, 600));
      await expect(value.invalidate()).rejects.toMatchObject({ code: 'ERR_GENSYNC_NOT_PUBLISHED' });
      store.close();
    });
  },
);

describe('disposal and abort, as the ecosystem expects (issue 16)', () => {
  it('`using` closes a local store; `await using` closes a Redis store; synchronized values dispose of their watches', async () => {
    const dir = tempDir();
    const shm = SharedMemoryStore.open(join(dir, 'g.shm'));
    const file = FileStore.open(join(dir, 'g.json'));
    for (const store of [shm, file]) {
      store[Symbol.dispose]();
      expect(store.closed).toBe(true);
    }
    const redis = await RedisStore.connect({ url: sharedRedisUrl(), namespace: `dispose-${process.pid}` });
    await redis[Symbol.asyncDispose]();
    expect(redis.closed).toBe(true);

    const store = SharedMemoryStore.open(join(dir, 'v.shm'));
    const value = new SynchronizedValue('v', () => 1, { store });
    const heard: unknown[] = [];
    value.synchronizer.watch((change) => heard.push(change));
    value[Symbol.dispose]();
    new GenerationSynchronizer('v', { store }).markUpdated();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(heard).toEqual([]);
    store.close();
  });

  it('RedisStore.connect() gives up when its signal aborts: it rejects with the reason and leaves nothing running', async () => {
    const reason = new Error('shutting down');
    await expect(RedisStore.connect({ url: sharedRedisUrl(), signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    // A server that never answers (a listening socket that accepts and stays silent): connect() would wait its timeout.
    const silent = createServer((socket) => socket.resume()); // reads (so it sees the client hang up), never answers
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as AddressInfo).port;
    const controller = new AbortController();
    // Aborted while the socket is still connecting (the hardest moment to let go cleanly), then once connected.
    const early = RedisStore.connect({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs: 30_000, signal: controller.signal, logger: recordingLogger() });
    controller.abort(reason);
    await expect(early).rejects.toBe(reason);
    const late = new AbortController();
    setTimeout(() => late.abort(reason), 200);
    await expect(RedisStore.connect({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs: 30_000, signal: late.signal, logger: recordingLogger() })).rejects.toBe(reason);
    // (Had it waited out connectTimeoutMs instead, it would have resolved with a reconnecting store, not rejected.)
    // Nothing left running: the store's socket is gone too (node-redis lost a destroy() racing the connect; the socket
    // then waited for its handshake forever and kept the process alive).
    const connections = (): Promise<number> => new Promise((resolve, reject) => silent.getConnections((error, count) => (error ? reject(error) : resolve(count))));
    await eventually('the store to hang up', async () => ((await connections()) === 0 ? true : undefined));
    await new Promise<void>((resolve) => silent.close(() => resolve()));
    await expect(RedisStore.connect({ signal: 'x' as never })).rejects.toThrow(/must be an AbortSignal/);
  });
});

// The store contract, for every store: each against an in-memory model with
// operations from two processes (fast-check, model-based), its files' modes
// under any umask, and refusal of a network-class filesystem (a real FUSE
// mount); and the exported conformance checks, run by the three stores and
// by stores written outside the package (one correct, one subtly wrong).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  FileStore,
  SharedMemoryStore,
  StoreClosedError,
  UnsafeStoreError,
  type AsyncStore,
  type Store,
} from 'generation-sync';
import { checkStoreContract, type GenerationListener, type KeyBinding, type StoreEntry } from 'generation-sync/conformance';

import { ROOT, startWorker, tempDir, thrown, type Worker } from './helpers';
import { STORE_KINDS } from './stores';

describe('a store on a network-class filesystem (a real FUSE mount)', () => {
  // Made by hand rather than with tempDir(): they must outlive the per-test cleanup until unmounted.
  let base: string;
  let source: string;
  let mount: string;
  beforeAll(() => {
    base = mkdtempSync(join(tmpdir(), 'gensync-fuse-'));
    source = join(base, 'src');
    mount = join(base, 'mnt');
    mkdirSync(source);
    mkdirSync(mount);
    execFileSync('bindfs', [source, mount]);
  });
  afterAll(() => {
    for (const [command, args] of [['fusermount3', ['-u', mount]], ['fusermount', ['-u', mount]], ['umount', [mount]]] as const) {
      if (spawnSync(command, [...args]).status === 0) break;
    }
    rmSync(base, { recursive: true, force: true });
  });

  it('is refused with ERR_GENSYNC_NETWORK_FILESYSTEM by every local store, and nothing is created', () => {
    expect((statSync(mount).dev === statSync(source).dev)).toBe(false);
    for (const open of [() => SharedMemoryStore.open(join(mount, 'g.shm')), () => FileStore.open(join(mount, 'g.json'))]) {
      const error = thrown(() => open());
      expect(error).toBeInstanceOf(UnsafeStoreError);
      expect((error as UnsafeStoreError).code).toBe('ERR_GENSYNC_NETWORK_FILESYSTEM');
      expect((error as Error).message).toMatch(/FUSE filesystem.*local disk the application owns/);
      expect((error as Error).message).not.toMatch(/\/dev\/shm/); // the README warns against it (issue 16)
    }
    // Through the default store too, when GENERATION_SYNC_DIR points there.
    const script = `try { require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))}).defaultStore(); } catch (e) { console.log(e.code); }`;
    expect(execFileSync(process.execPath, ['-e', script], { env: { ...process.env, GENERATION_SYNC_DIR: join(mount, 'app') }, encoding: 'utf8' }).trim()).toBe(
      'ERR_GENSYNC_NETWORK_FILESYSTEM',
    );
    expect(readdirSync(source).filter((name) => name !== 'app')).toEqual([]);
  });
});

describe('file modes under any umask', () => {
  it.each([0o000, 0o077, 0o022])('umask %o: store files 0600, the default directory 0700', (mask) => {
    const tmp = tempDir();
    const script = `
      process.umask(${mask});
      const gs = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      gs.SharedMemoryStore.open().close();
      gs.FileStore.open().close();
    `;
    execFileSync(process.execPath, ['-e', script], { env: { ...process.env, TMPDIR: tmp, GENERATION_SYNC_DIR: '' } });
    const dir = join(tmp, `generation-sync-${process.getuid?.()}`);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'generations.shm')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'generations.json')).mode & 0o777).toBe(0o600);
  });
});

/**
 * The model: what the store should hold for each key, and the highest value
 * each key has ever shown (a re-created key must go above it).
 */
interface Model {
  now: number;
  keys: Map<string, { present: boolean; value: number; highest: number }>;
}

interface Real {
  store: Store | AsyncStore;
  other: Worker;
  seedFor(ms: number): number | undefined;
}

type Op = 'read' | 'fetchOrCreate' | 'increment' | 'delete';

async function perform(real: Real, remote: boolean, op: Op, key: string, now: number): Promise<unknown> {
  if (remote) {
    real.other.send({ cmd: 'op', op, key, now });
    const reply = await real.other.next<{ value: unknown; error?: { message: string } }>();
    if (reply.error) throw new Error(reply.error.message);
    return reply.value;
  }
  const binding = real.store.bind(key, { expirationSecs: 3600 });
  switch (op) {
    case 'read':
      return binding.read();
    case 'fetchOrCreate':
      return binding.fetchOrCreate(now);
    case 'increment':
      return binding.increment();
    case 'delete':
      await binding.delete();
      return null;
  }
}

class StoreCommand implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly op: Op,
    readonly key: string,
    readonly remote: boolean,
    readonly advanceMs: number,
  ) {}

  check(): boolean {
    return true;
  }

  async run(model: Model, real: Real): Promise<void> {
    model.now += this.advanceMs;
    const state = model.keys.get(this.key);
    const result = await perform(real, this.remote, this.op, this.key, model.now);
    switch (this.op) {
      case 'read':
        expect(result).toBe(state?.present ? state.value : null);
        break;
      case 'fetchOrCreate': {
        // Redis seeds from its own clock (undefined here): only the ordering is checked for it.
        const seed = real.seedFor(model.now);
        if (state?.present) {
          expect(result).toBe(state.value);
        } else {
          const value = result as number;
          if (seed !== undefined) expect(value).toBeGreaterThanOrEqual(seed);
          // A re-created key goes above every value it had; from the clock when that is higher.
          if (state) {
            expect(value).toBeGreaterThan(state.highest);
            if (seed !== undefined && seed > state.highest + 1000) expect(value).toBe(seed);
          } else if (seed !== undefined) {
            expect(value).toBe(seed);
          }
          model.keys.set(this.key, { present: true, value, highest: Math.max(value, state?.highest ?? 0) });
        }
        break;
      }
      case 'increment':
        expect(result).toBe(state?.present ?? false);
        if (state?.present) {
          state.value += 1;
          state.highest = Math.max(state.highest, state.value);
        }
        break;
      case 'delete':
        if (state) state.present = false;
        break;
    }
  }

  toString(): string {
    return `${this.remote ? 'other process' : 'this process'}: ${this.op}(${this.key}) after ${this.advanceMs} ms`;
  }
}

describe.each(STORE_KINDS)('the $name store against a model, with operations from two processes', (kind) => {
  let other: Worker;
  let dir: string;
  beforeAll(async () => {
    dir = tempDir('gensync-model-');
    other = startWorker('worker.mjs', await kind.workerArgs(dir));
    await other.next();
  });
  afterAll(() => {
    other.child.kill();
  });

  it('agrees with the model over random sequences of reads, creations, increments and clears', async () => {
    const store = await kind.open(dir);
    let run = 0;
    const command = fc
      .record({
        op: fc.constantFrom<Op>('read', 'fetchOrCreate', 'increment', 'delete', 'increment', 'fetchOrCreate'),
        key: fc.constantFrom('a', 'b', 'c'),
        remote: fc.boolean(),
        advanceMs: fc.constantFrom(0, 0, 1, 999, 5000, 3_600_000),
      })
      .map(({ op, key, remote, advanceMs }) => new StoreCommand(op, key, remote, advanceMs));
    await fc.assert(
      fc.asyncProperty(fc.commands([command], { maxCommands: 30 }), async (commands) => {
        // Every run gets fresh keys (a prefix per run), so runs do not see each other's history.
        const prefix = `run${run++}-`;
        const prefixed = [...commands].map((c) => {
          const { op, key, remote, advanceMs } = c as StoreCommand;
          return new StoreCommand(op, prefix + key, remote, advanceMs);
        });
        await fc.asyncModelRun(() => ({ model: { now: 1_800_000_000_000, keys: new Map() }, real: { store, other, seedFor: kind.seedFor } }), prefixed);
      }),
      { numRuns: kind.name === 'file' ? 15 : 30 },
    );
    await store.close();
  }, 120_000);
});

describe.each(STORE_KINDS)('the $name store and the exported conformance checks', (kind) => {
  it('passes every check', async () => {
    const dir = tempDir('gensync-conformance-');
    const results = await checkStoreContract(() => kind.open(dir));
    expect(results.filter((check) => !check.passed).map((check) => `${check.name}: ${check.error?.message}`)).toEqual([]);
    expect(results.length).toBe(9);
  });
});

/**
 * A store written outside the package, the way a user would: generations in
 * a Map of this process. `forgetsDeleted` makes it drop a deleted key's
 * value, so that re-creating the key can repeat a generation.
 */
class MemoryStore implements Store {
  readonly kind = 'memory';
  readonly path = undefined;
  closed = false;
  readonly #keys = new Map<string, { value: number; present: boolean }>();
  readonly #listeners = new Map<string, Set<GenerationListener>>();

  constructor(private readonly forgetsDeleted = false) {}

  bind(key: string): KeyBinding {
    this.#open();
    const store = this;
    let synced: number | null = null;
    return {
      key,
      get synced() {
        return synced;
      },
      isStale: () => synced === null || store.#read(key) !== synced,
      read: () => store.#read(key),
      fetchOrCreate(now) {
        const entry = store.#entry(key);
        if (entry === undefined || !entry.present) store.#set(key, Math.max(Math.floor(now / 1000), (entry?.value ?? -1) + 1), true);
        return (synced = store.#read(key) as number);
      },
      increment() {
        const entry = store.#entry(key);
        if (entry === undefined || !entry.present) return false;
        store.#set(key, entry.value + 1, true);
        synced = entry.value + 1;
        return true;
      },
      delete() {
        const entry = store.#entry(key);
        if (entry === undefined) return;
        if (store.forgetsDeleted) store.#keys.delete(key);
        else store.#set(key, entry.value, false);
        store.#tell(key);
      },
    };
  }

  entries(): StoreEntry[] {
    this.#open();
    return [...this.#keys].map(([key, { value, present }]) => ({ key, keyTruncated: false, generation: present ? value : null, createdAt: null, updatedAt: null }));
  }

  watch(key: string, _since: number | null | undefined, listener: GenerationListener): () => void {
    const listeners = this.#listeners.get(key) ?? new Set();
    this.#listeners.set(key, listeners.add(listener));
    return () => listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
  }

  #open(): void {
    if (this.closed) throw new StoreClosedError('closed');
  }

  #entry(key: string): { value: number; present: boolean } | undefined {
    this.#open();
    return this.#keys.get(key);
  }

  #read(key: string): number | null {
    const entry = this.#entry(key);
    return entry?.present === true ? entry.value : null;
  }

  #set(key: string, value: number, present: boolean): void {
    this.#keys.set(key, { value, present });
    this.#tell(key);
  }

  #tell(key: string): void {
    const generation = this.#read(key);
    for (const listener of this.#listeners.get(key) ?? []) queueMicrotask(() => listener(generation));
  }
}

describe('a store written outside the package, run through the exported conformance checks', () => {
  it('passes every check when it keeps the contract', async () => {
    const results = await checkStoreContract(() => new MemoryStore());
    expect(results.filter((check) => !check.passed).map((check) => `${check.name}: ${check.error?.message}`)).toEqual([]);
  });

  it('fails the never-repeat check, and only that one, when it forgets the value of a deleted key', async () => {
    const failed = (await checkStoreContract(() => new MemoryStore(true))).filter((check) => !check.passed);
    expect(failed.map((check) => check.name)).toEqual([expect.stringMatching(/^delete\(\) expires every holder, and the key comes back above every value/)]);
    expect(failed[0]?.error?.message).toMatch(/^re-created at \d+, not above the \d+ it had$/);
  });
});

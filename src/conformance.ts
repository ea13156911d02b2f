/**
 * The store contract as checks that any store can run: the package's own
 * three run them in its test suite, and a store written outside the package
 * (an extension point: implement {@link Store} or {@link AsyncStore}) can run
 * them from its own tests, with any test framework:
 *
 * ```js
 * const { checkStoreContract } = require('generation-sync/conformance');
 * test('my store keeps the generation-sync contract', async () => {
 *   const failures = (await checkStoreContract(() => MyStore.open())).filter((check) => !check.passed);
 *   assert.deepEqual(failures, []);
 * });
 * ```
 *
 * The checks use one process and two bindings of each key as two holders.
 * They cannot prove what only many processes show (atomicity across
 * processes, crash safety): test that with real processes, as this
 * package's own suite does.
 *
 * @module generation-sync/conformance
 */

import { StoreClosedError } from './store/errors';
import type { AsyncKeyBinding, AsyncStore, KeyBinding, Store } from './store/store';

/** The outcome of one check. */
export interface ContractCheck {
  /** What the check requires of a store. */
  readonly name: string;
  readonly passed: boolean;
  /** Why it failed. */
  readonly error?: Error;
}

/** Options of {@link checkStoreContract}. */
export interface ContractOptions {
  /** How long a watcher may take to hear of a change, in milliseconds. @default 2000 */
  readonly watchTimeoutMs?: number;
}

type AnyStore = Store | AsyncStore;
type AnyBinding = KeyBinding | AsyncKeyBinding;

const EXPIRATION = { expirationSecs: 3600 };
/** The clock the checks create keys with: a fixed instant, so that a re-created key gets the same seed as before. */
const NOW = Date.UTC(2030, 0, 1);
const INCREMENTS = 50;

class ContractViolation extends Error {}

function expect(condition: boolean, what: string): void {
  if (!condition) throw new ContractViolation(what);
}

function sameValue(actual: unknown, expected: unknown, what: string): void {
  expect(Object.is(actual, expected), `${what}: expected ${String(expected)}, got ${String(actual)}`);
}

async function created(binding: AnyBinding): Promise<number> {
  const generation = await binding.fetchOrCreate(NOW);
  expect(Number.isSafeInteger(generation) && generation >= 0, `fetchOrCreate() answered ${generation}, not a generation (a safe integer, at least 0)`);
  return generation;
}

/** Wait for `listener` calls until `until` holds for one, or the timeout. */
function heard(store: AnyStore, key: string, since: number, until: (generation: number | null) => boolean, timeoutMs: number, change: () => Promise<unknown>): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    let unwatch: (() => void) | undefined;
    const timer = setTimeout(() => finish(false), timeoutMs);
    const finish = (result: boolean): void => {
      clearTimeout(timer);
      unwatch?.();
      resolve(result);
    };
    unwatch = store.watch(key, since, (generation) => {
      if (until(generation)) finish(true);
    });
    change().catch(reject);
  });
}

/** Every check, by name: each gets a fresh store and two holders of one key. */
const CHECKS: ReadonlyArray<readonly [string, (store: AnyStore, a: AnyBinding, b: AnyBinding, options: Required<ContractOptions>) => Promise<void>]> = [
  [
    'a key never created reads as absent, and as stale',
    async (_store, a) => {
      sameValue(await a.read(), null, 'read() of a new key');
      sameValue(a.synced, null, 'synced of a new binding');
      expect(await a.isStale(), 'isStale() of a key never fetched must be true');
    },
  ],
  [
    'fetchOrCreate() creates the key once and every holder takes the same generation',
    async (_store, a, b) => {
      const generation = await created(a);
      sameValue(a.synced, generation, 'synced after fetchOrCreate()');
      sameValue(await b.fetchOrCreate(NOW + 60_000), generation, "another holder's fetchOrCreate() of the existing key");
      sameValue(await a.read(), generation, 'read()');
      expect(!(await a.isStale()) && !(await b.isStale()), 'no holder is stale right after taking the generation');
    },
  ],
  [
    'increment() moves the generation up, the incrementer stays fresh, every other holder goes stale',
    async (_store, a, b) => {
      const generation = await created(a);
      await created(b);
      expect(await a.increment(), 'increment() of a present key must answer true');
      const incremented = a.synced;
      expect(typeof incremented === 'number' && incremented > generation, `synced after increment() is ${incremented}, not above ${generation}`);
      expect(!(await a.isStale()), 'the incrementer must not be stale');
      expect(await b.isStale(), 'another holder must be stale after an increment');
      sameValue(await b.read(), incremented, "another holder's read()");
    },
  ],
  [
    'increment() of an absent key answers false and creates nothing',
    async (_store, a) => {
      expect(!(await a.increment()), 'increment() of an absent key must answer false');
      sameValue(await a.read(), null, 'read() after increment() of an absent key');
    },
  ],
  [
    `${INCREMENTS} increments from two holders, interleaved, each move the generation up: it ends at least ${INCREMENTS} above`,
    async (_store, a, b) => {
      const generation = await created(a);
      const results = await Promise.all(Array.from({ length: INCREMENTS }, (_, i) => (i % 2 === 0 ? a : b).increment()));
      expect(results.every(Boolean), 'every increment of a present key must answer true');
      const after = await a.read();
      expect(typeof after === 'number' && after >= generation + INCREMENTS, `the generation after the increments is ${after}, not at least ${generation + INCREMENTS}`);
    },
  ],
  [
    'delete() expires every holder, and the key comes back above every value it had (never the same generation twice)',
    async (_store, a, b) => {
      const generation = await created(a);
      await created(b);
      expect(await a.increment(), 'increment() before delete()');
      await a.delete();
      sameValue(await b.read(), null, 'read() after delete()');
      expect((await a.isStale()) && (await b.isStale()), 'every holder, the deleter included, must be stale after delete()');
      expect(!(await b.increment()), 'increment() of a deleted key must answer false');
      // Created again with the same clock as the first time: the seed alone would repeat the generation.
      const again = await b.fetchOrCreate(NOW);
      expect(again > generation + 1, `re-created at ${again}, not above the ${generation + 1} it had`);
      sameValue(await a.fetchOrCreate(NOW), again, "another holder's fetchOrCreate() after the re-creation");
    },
  ],
  [
    'entries() lists a key with its generation',
    async (store, a) => {
      const generation = await created(a);
      const entries = await store.entries();
      const entry = entries.find((candidate) => candidate.key === a.key);
      expect(entry !== undefined, `entries() does not list "${a.key}"`);
      sameValue(entry?.generation, generation, 'the generation entries() gives');
    },
  ],
  [
    'watch() hears a change made through another holder, and nothing after unwatching',
    async (store, a, b, options) => {
      const generation = await created(a);
      const heardIt = await heard(store, a.key, generation, (g) => g !== null && g > generation, options.watchTimeoutMs, async () => b.increment());
      expect(heardIt, `no listener call with a generation above ${generation} within ${options.watchTimeoutMs} ms of an increment`);
      let calls = 0;
      store.watch(a.key, await a.read(), () => calls++)();
      await b.increment();
      await new Promise((resolve) => setTimeout(resolve, Math.min(options.watchTimeoutMs, 200)));
      sameValue(calls, 0, 'listener calls after unwatching');
    },
  ],
  [
    'after close(), operations fail with StoreClosedError and bind() throws it',
    async (store, a) => {
      await created(a);
      await store.close();
      expect(store.closed, 'closed must be true after close()');
      const outcome = await Promise.resolve()
        .then(() => a.read())
        .then(
          () => undefined,
          (error: unknown) => error,
        );
      expect(outcome instanceof StoreClosedError, `read() after close() must fail with StoreClosedError, not ${String(outcome)}`);
      let bound: unknown;
      try {
        store.bind('another', EXPIRATION);
      } catch (error) {
        bound = error;
      }
      expect(bound instanceof StoreClosedError, `bind() after close() must throw StoreClosedError, not ${String(bound)}`);
    },
  ],
];

/**
 * Run every check of the store contract, each on a fresh store from
 * `open` (closed afterwards), and report each. Never throws for a failed
 * check: look at `passed`. A store that fails a check is not safe to use
 * with the synchronizers.
 */
export async function checkStoreContract(open: () => AnyStore | Promise<AnyStore>, options?: ContractOptions): Promise<ContractCheck[]> {
  const settled: Required<ContractOptions> = { watchTimeoutMs: options?.watchTimeoutMs ?? 2000 };
  const results: ContractCheck[] = [];
  for (const [index, [name, check]] of CHECKS.entries()) {
    let store: AnyStore | undefined;
    try {
      store = await open();
      const key = `generation-sync-contract:${index}:${process.pid}:${Date.now()}`;
      await check(store, store.bind(key, EXPIRATION), store.bind(key, EXPIRATION), settled);
      results.push({ name, passed: true });
    } catch (error) {
      results.push({ name, passed: false, error: error instanceof Error ? error : new Error(String(error)) });
    } finally {
      if (store !== undefined && !store.closed) await store.close();
    }
  }
  return results;
}

export type { AsyncKeyBinding, AsyncStore, BindOptions, GenerationListener, KeyBinding, Store, StoreEntry } from './store/store';

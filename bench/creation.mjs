// Opening a store and creating many keys: time, file size, and the resident
// memory of the process that did it. Each run is a fresh process.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { AsyncGenerationSynchronizer, FileStore, GenerationSynchronizer, RedisStore, SharedMemoryStore } from 'generation-sync';

import { runChild, withRedis } from './support.mjs';

/** Child side: open a `kind` store and create `count` keys; print the measurements. */
export async function createKeys(kind, count, location) {
  const started = process.hrtime.bigint();
  let store;
  let file;
  if (kind === 'redis') {
    store = await RedisStore.connect({ url: location, namespace: `creation-${process.pid}:` });
    for (let i = 0; i < count; i++) await AsyncGenerationSynchronizer.create(`key-${i}`, { store, normalizeCacheKey: false });
  } else {
    const dir = mkdtempSync(join(tmpdir(), 'gensync-creation-'));
    file = join(dir, kind === 'shm' ? 'keys.shm' : 'keys.json');
    store = kind === 'shm' ? SharedMemoryStore.open(file, { capacity: count }) : FileStore.open(file);
    for (let i = 0; i < count; i++) new GenerationSynchronizer(`key-${i}`, { store, normalizeCacheKey: false });
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const fileBytes = file === undefined ? null : statSync(file).size;
  const rssMb = process.memoryUsage().rss / 2 ** 20;
  await store.close();
  console.log(JSON.stringify({ ms, fileBytes, rssMb }));
}

/**
 * @param {{ sizes: Record<string, number[]> }} options  counts per store kind
 * @returns {Promise<Array<{ kind: string, keys: number, ms: number, fileBytes: number | null, rssMb: number }>>}
 */
export async function runCreation({ sizes }) {
  const rows = [];
  const measure = (kind, location) => {
    for (const keys of sizes[kind] ?? []) rows.push({ kind, keys, ...runChild(['creation', kind, String(keys), location ?? '']) });
  };
  measure('shm');
  measure('file');
  if (sizes.redis?.length) await withRedis((url) => measure('redis', url));
  return rows;
}

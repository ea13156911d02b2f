#!/usr/bin/env node
// Two processes share a GenerationCache: each caches "catalog" entries; when
// the other process invalidates the namespace, this one's next lookup reloads.
//
//   node examples/lru-cache/demo.mjs
import { fork } from 'node:child_process';

import { GenerationCache } from './generation-cache.mjs';

const cache = new GenerationCache({ max: 1000 });
let loads = 0;
const load = (id) => async () => {
  loads++;
  return { id, loadedBy: process.pid, at: Date.now() };
};

if (process.argv[2] === 'invalidate') {
  cache.invalidate('catalog');
  process.exit(0);
}

await cache.get('catalog', 'p1', load('p1'));
await cache.get('catalog', 'p1', load('p1'));
await cache.get('users', 'u1', load('u1'));
console.log(`before: ${loads} loads for 3 lookups (one hit)`);
await new Promise((resolve) => fork(new URL(import.meta.url), ['invalidate']).once('exit', resolve));
await cache.get('catalog', 'p1', load('p1')); // another process invalidated "catalog": reloaded
await cache.get('users', 'u1', load('u1')); // "users" did not change: still a hit
console.log(`after another process invalidated "catalog": ${loads} loads (catalog reloaded, users still cached)`);

// A short real run on the arm64 build, under qemu-user (see .ci/run): two
// processes bump one key of one shared-memory store concurrently, and the
// count must be exact; a watcher in this process must be woken (futex) by a
// bump from another. Run with the arm64 node and GENERATION_SYNC_ADDON
// naming the arm64 prebuild.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GenerationSynchronizer, SharedMemoryStore } from 'generation-sync';

const BUMPS = 50_000;
const [role, path] = process.argv.slice(2);

if (role === 'bumper') {
  const sync = new GenerationSynchronizer('smoke', { store: SharedMemoryStore.open(path) });
  for (let i = 0; i < BUMPS; i++) if (!sync.markUpdated()) throw new Error(`bump ${i} did not reach the store`);
  process.exit(0);
}

if (process.arch !== 'arm64') throw new Error(`this is ${process.arch}, not arm64`);
const dir = mkdtempSync(join(tmpdir(), 'gensync-arm64-'));
const file = join(dir, 'g.shm');
const store = SharedMemoryStore.open(file);
const sync = new GenerationSynchronizer('smoke', { store });
const base = sync.syncGen;
if (store.watchMechanism !== 'futex') throw new Error(`watching by ${store.watchMechanism}, not futex`);
const woken = sync.waitForChange({ timeoutMs: 60_000 });

const ended = (child) => new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
const started = Date.now();
const endings = await Promise.all([0, 1].map(() => ended(fork(new URL(import.meta.url), ['bumper', file]))));
if (endings.some((e) => e.code !== 0)) throw new Error(`a bumper failed: ${JSON.stringify(endings)}`);
if ((await woken) === null) throw new Error('the watcher was not woken within 60 s');
sync.refresh();
const total = sync.syncGen - base;
console.log(`arm64: 2 processes × ${BUMPS} markUpdated() → +${total} (expected ${2 * BUMPS}) in ${Date.now() - started} ms; watcher woken by futex`);
store.close();
rmSync(dir, { recursive: true, force: true });
if (total !== 2 * BUMPS) throw new Error(`lost updates: +${total}, expected +${2 * BUMPS}`);

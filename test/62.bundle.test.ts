// The package bundled into an application with esbuild, as serverless and
// single-file deployments do: the bundle no longer sits inside the package,
// so the addon cannot be found beside it. The bundle must then say so and
// name GENERATION_SYNC_ADDON, and with it set must use shared memory, in
// both module forms.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

const ESBUILD = join(ROOT, 'node_modules', '.bin', 'esbuild');
const ADDON = join(ROOT, 'build', 'Release', 'generation_sync.node');

const APP = `
const { GenerationSynchronizer, SharedMemoryStore, defaultStore } = require('generation-sync');
let shm;
try {
  const store = SharedMemoryStore.open(process.argv[2]);
  const sync = new GenerationSynchronizer('bundled', { store });
  shm = { ok: sync.markUpdated(), generation: sync.syncGen };
} catch (error) {
  shm = { code: error.code, message: error.message };
}
let defaultKind;
try {
  defaultKind = defaultStore().kind;
} catch (error) {
  defaultKind = error.code;
}
console.log(JSON.stringify({ shm, defaultKind }));
`;

function bundle(format: 'cjs' | 'esm'): string {
  const dir = tempDir('gensync-bundle-');
  writeFileSync(join(dir, 'app.js'), APP);
  const out = join(dir, format === 'esm' ? 'bundle.mjs' : 'bundle.cjs');
  // An application project with the package among its dependencies.
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(ROOT, join(dir, 'node_modules', 'generation-sync'));
  // An ES module bundle of CommonJS code needs a require for Node's built-in modules: esbuild's usual banner.
  const banner = format === 'esm' ? ["--banner:js=import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);"] : [];
  execFileSync(ESBUILD, [join(dir, 'app.js'), '--bundle', '--platform=node', `--format=${format}`, ...banner, '--log-level=error', `--outfile=${out}`], { cwd: dir });
  return out;
}

function run(script: string, env: NodeJS.ProcessEnv): { shm: Record<string, unknown>; defaultKind: string } {
  const dir = tempDir('gensync-bundle-run-');
  const result = spawnSync(process.execPath, [script, join(dir, 'g.shm')], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, GENERATION_SYNC_DIR: join(dir, 'default'), GENERATION_SYNC_ADDON: '', ...env },
  });
  expect(result.status, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as { shm: Record<string, unknown>; defaultKind: string };
}

describe.each(['cjs', 'esm'] as const)('an application bundled with esbuild (%s)', (format) => {
  it('without GENERATION_SYNC_ADDON, reports the addon missing and names the variable', () => {
    const out = run(bundle(format), {});
    expect(out.shm.code).toBe('ERR_GENSYNC_ADDON_UNAVAILABLE');
    expect(out.shm.message).toMatch(/set GENERATION_SYNC_ADDON to the path of generation_sync\.node/);
    expect(out.defaultKind).toBe('file');
  });

  it('with GENERATION_SYNC_ADDON, uses the shared-memory store, by default too', () => {
    const out = run(bundle(format), { GENERATION_SYNC_ADDON: ADDON });
    expect(out.shm).toEqual({ ok: true, generation: expect.any(Number) });
    expect(out.defaultKind).toBe('shm');
  });

  it('with GENERATION_SYNC_ADDON naming a missing file, says so', () => {
    const out = run(bundle(format), { GENERATION_SYNC_ADDON: join(ROOT, 'no-such-addon.node') });
    expect(out.shm.code).toBe('ERR_GENSYNC_ADDON_UNAVAILABLE');
    expect(out.shm.message).toContain('GENERATION_SYNC_ADDON names');
    // The default store does not fall back to the file store that other processes, which load the addon, do not use.
    expect(out.defaultKind).toBe('ERR_GENSYNC_ADDON_UNAVAILABLE');
  });
});

describe('finding the addon in a package', () => {
  it("tries this checkout's build, then the prebuilds for this C library, most specific first, never another C library's", async () => {
    const { addonCandidates } = (await import('../dist/stores/shm/native.js')) as typeof import('../src/stores/shm/native');
    const root = tempDir('gensync-candidates-');
    const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
    mkdirSync(dir, { recursive: true });
    for (const name of ['generation_sync.node', 'generation_sync.musl.node', 'generation_sync.glibc.node', 'README.txt']) writeFileSync(join(dir, name), '');
    // This machine runs glibc (Debian), with musl installed beside it for the musl load check: glibc must win.
    expect(addonCandidates(root)).toEqual([
      join(root, 'build', 'Release', 'generation_sync.node'),
      join(dir, 'generation_sync.glibc.node'),
      join(dir, 'generation_sync.node'),
    ]);
  });
});

// How defaultStore() chooses: the shared-memory store when the addon loads,
// the file store (with one warning) when it does not, and what
// GENERATION_SYNC_STORE forces.
import { execFileSync } from 'node:child_process';
import { cpSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

interface Report {
  kind?: string;
  path?: string;
  reason?: string;
  warnings: Array<{ code: string; message: string }>;
  error?: { name: string; code: string; message: string };
}

/** Run a probe of defaultStore() in a fresh process of the package installed at `packageDir`. */
function probe(packageDir: string, env: NodeJS.ProcessEnv): Report {
  const script = `
    const warnings = [];
    process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
    const gs = require(${JSON.stringify(join(packageDir, 'dist', 'index.js'))});
    const out = { warnings };
    try {
      const a = new gs.GenerationSynchronizer('one');
      const b = new gs.GenerationSynchronizer('two');
      if (a.store !== b.store || gs.defaultStore() !== a.store) throw new Error('more than one default store');
      out.kind = a.store.kind;
      out.path = a.store.path;
      out.reason = gs.defaultStoreChoice().reason;
    } catch (error) {
      out.error = { name: error.name, code: error.code, message: error.message };
    }
    setImmediate(() => console.log(JSON.stringify(out)));
  `;
  const stdout = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, GENERATION_SYNC_STORE: '', ...env } });
  return JSON.parse(stdout) as Report;
}

/** A copy of the built package with no addon anywhere: no build/, no prebuilds/. */
function packageWithoutAddon(): string {
  const dir = tempDir('gensync-noaddon-');
  cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  return dir;
}

describe('defaultStore()', () => {
  it('is the shared-memory store when the addon loads, without a warning', () => {
    const store = tempDir();
    const report = probe(ROOT, { GENERATION_SYNC_DIR: store });
    expect(report).toMatchObject({ kind: 'shm', path: join(store, 'generations.shm'), warnings: [] });
    expect(report.reason).toMatch(/native addon loads from/);
  });

  it('falls back to the file store with exactly one warning that says why and how to fix it', () => {
    const store = tempDir();
    const report = probe(packageWithoutAddon(), { GENERATION_SYNC_DIR: store });
    expect(report).toMatchObject({ kind: 'file', path: join(store, 'generations.json') });
    expect(report.warnings).toHaveLength(1);
    expect(report.warnings[0]?.code).toBe('GENSYNC_FILE_STORE_FALLBACK');
    expect(report.warnings[0]?.message).toMatch(
      /slower JSON file store .*generations\.json\. The generation-sync native addon is not available: no addon is built for linux-x64 .*npm install-scripts approve generation-sync.*npm rebuild generation-sync/,
    );
  });

  it('GENERATION_SYNC_STORE=file forces the file store, silently', () => {
    const store = tempDir();
    expect(probe(ROOT, { GENERATION_SYNC_DIR: store, GENERATION_SYNC_STORE: 'file' })).toMatchObject({
      kind: 'file',
      path: join(store, 'generations.json'),
      warnings: [],
    });
  });

  it('GENERATION_SYNC_STORE=shm forces the shared-memory store, and is a typed error where it cannot load', () => {
    const store = tempDir();
    expect(probe(ROOT, { GENERATION_SYNC_DIR: store, GENERATION_SYNC_STORE: 'shm' })).toMatchObject({ kind: 'shm', warnings: [] });
    const report = probe(packageWithoutAddon(), { GENERATION_SYNC_DIR: store, GENERATION_SYNC_STORE: 'shm' });
    expect(report.kind).toBeUndefined();
    expect(report.error).toMatchObject({ name: 'AddonUnavailableError', code: 'ERR_GENSYNC_ADDON_UNAVAILABLE' });
  });

  it('rejects any other GENERATION_SYNC_STORE value with an error naming the variable', () => {
    const report = probe(ROOT, { GENERATION_SYNC_DIR: tempDir(), GENERATION_SYNC_STORE: 'redis' });
    expect(report.error).toMatchObject({ code: 'ERR_GENSYNC_OUT_OF_RANGE' });
    expect(report.error?.message).toMatch(/GENERATION_SYNC_STORE must be "shm", "file" or unset, not "redis"/);
  });
});

// How defaultStore() chooses: the shared-memory store when the addon loads,
// the file store (with one warning) when it does not, and what
// GENERATION_SYNC_STORE forces.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, symlinkSync, writeFileSync } from 'node:fs';
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
      /slower JSON file store .*generations\.json\. The generation-sync native addon is not available: no addon is built for linux-x64 .*npx node-gyp rebuild -C node_modules\/generation-sync/,
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

  it('GENERATION_SYNC_ADDON naming a file that does not load is a typed error that names it, never a fallback to the file store', () => {
    const store = tempDir();
    const broken = join(tempDir(), 'not-an-addon.node');
    writeFileSync(broken, 'not an ELF file');
    for (const path of ['/nonexistent/generation_sync.node', broken]) {
      const report = probe(ROOT, { GENERATION_SYNC_DIR: store, GENERATION_SYNC_ADDON: path });
      expect(report.kind).toBeUndefined();
      expect(report.warnings).toEqual([]);
      expect(report.error).toMatchObject({ name: 'AddonUnavailableError', code: 'ERR_GENSYNC_ADDON_UNAVAILABLE' });
      expect(report.error?.message).toContain(path);
    }
    // Named and loading: the shared-memory store, as without the variable.
    expect(probe(ROOT, { GENERATION_SYNC_DIR: store, GENERATION_SYNC_ADDON: join(ROOT, 'build', 'Release', 'generation_sync.node') })).toMatchObject({ kind: 'shm', warnings: [] });
  });

  it('rejects any other GENERATION_SYNC_STORE value with an error naming the variable', () => {
    const report = probe(ROOT, { GENERATION_SYNC_DIR: tempDir(), GENERATION_SYNC_STORE: 'redis' });
    expect(report.error).toMatchObject({ code: 'ERR_GENSYNC_OUT_OF_RANGE' });
    expect(report.error?.message).toMatch(/GENERATION_SYNC_STORE must be "shm", "file" or unset, not "redis"/);
  });
});

describe('another local user squatting the default directory (issue 12 item 5; failed at 1545de2)', () => {
  const SQUATTER_UID = 4242;
  const isRoot = process.getuid?.() === 0;

  // Running a process as another user needs root; CI runs as root, so this always runs there.
  it.skipIf(!isRoot)('is an outage, not a crash: the application starts, is told once who owns the directory and what to do, and recovers once it is fixed', () => {
    const tmp = tempDir();
    chmodSync(tmp, 0o1777); // a shared temp directory, like /tmp
    const squatted = join(tmp, `generation-sync-${process.getuid?.()}`);
    // Another user creates the victim's default directory first.
    execFileSync(process.execPath, ['-e', `require('node:fs').mkdirSync(${JSON.stringify(squatted)}, { mode: 0o755 })`], { uid: SQUATTER_UID, gid: SQUATTER_UID });
    const script = `
      const warnings = [];
      process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
      const lines = [];
      const logger = { error: (m) => lines.push(m), warn: (m) => lines.push(m), info: (m) => lines.push(m) };
      const gs = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const out = { warnings, lines };
      try {
        const sync = new gs.GenerationSynchronizer('k', { logger });
        const other = new gs.GenerationSynchronizer('other', { logger });
        out.during = { syncGen: sync.syncGen, expired: sync.isExpired(), updated: sync.markUpdated(), otherExpired: other.isExpired() };
        // An operator removes the squatted directory; within about a second the default store opens.
        require('node:fs').rmSync(${JSON.stringify(squatted)}, { recursive: true });
        const until = Date.now() + 1200;
        while (Date.now() < until) {}
        out.after = { refreshed: sync.refresh(), updated: sync.markUpdated(), expired: sync.isExpired(), kind: gs.defaultStore().kind };
      } catch (error) {
        out.error = { name: error.name, code: error.code, message: error.message };
      }
      setImmediate(() => console.log(JSON.stringify(out)));
    `;
    const stdout = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, TMPDIR: tmp, GENERATION_SYNC_DIR: '', GENERATION_SYNC_STORE: '' } });
    const report = JSON.parse(stdout) as {
      error?: unknown;
      warnings: Array<{ code: string; message: string }>;
      lines: string[];
      during: { syncGen: number | null; expired: boolean; updated: boolean; otherExpired: boolean };
      after: { refreshed: boolean; updated: boolean; expired: boolean; kind: string };
    };
    expect(report.error).toBeUndefined();
    expect(report.during).toEqual({ syncGen: null, expired: true, updated: false, otherExpired: true });
    const told = report.warnings.filter((warning) => warning.code === 'GENSYNC_DEFAULT_DIRECTORY_UNSAFE');
    expect(told).toHaveLength(1);
    expect(told[0]?.message).toMatch(new RegExp(`belongs to user ${SQUATTER_UID}[\\s\\S]*GENERATION_SYNC_DIR`));
    expect(report.after).toMatchObject({ refreshed: true, updated: true, expired: false });
  });
});

describe('both kinds of local store in one directory (issue 12 item 8; failed at 1545de2)', () => {
  /** Open the store of `kind` at `path` twice in a fresh process; report the warnings it got. */
  function openTwice(kind: 'shm' | 'file', path: string): Array<{ code: string; message: string }> {
    const script = `
      const warnings = [];
      process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
      const gs = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
      const open = () => ${kind === 'shm' ? 'gs.SharedMemoryStore' : 'gs.FileStore'}.open(${JSON.stringify(path)});
      open().close();
      open().close();
      setImmediate(() => console.log(JSON.stringify(warnings)));
    `;
    return JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as Array<{ code: string; message: string }>;
  }

  it.each([
    ['shm', 'file'],
    ['file', 'shm'],
  ] as const)('a %s store that finds a %s store beside it warns once, with the fix; doctor reports it', (kind, other) => {
    const dir = tempDir();
    const names = { shm: 'generations.shm', file: 'generations.json' };
    expect(openTwice(other, join(dir, names[other]))).toEqual([]);
    const warnings = openTwice(kind, join(dir, names[kind])).filter((warning) => warning.code === 'GENSYNC_MIXED_STORES');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toContain(join(dir, names[other]));
    expect(warnings[0]?.message).toMatch(/do not see[\s\S]*GENERATION_SYNC_STORE/);
    const doctor = spawnSync(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'doctor', '--store', kind, '--path', join(dir, names[kind]), '--json'], { encoding: 'utf8' });
    const report = JSON.parse(doctor.stdout) as { problems: Array<{ problem: string; fix: string }> };
    expect(report.problems.some((problem) => problem.problem.includes(join(dir, names[other])))).toBe(true);
    expect(doctor.status).toBe(1);
  });
});

describe('NODE_DEBUG=generation-sync (issue 16)', () => {
  const script = `
    const { renameSync, writeFileSync } = require('node:fs');
    const { join } = require('node:path');
    const { FileStore, GenerationSynchronizer } = require(${JSON.stringify(join(ROOT, 'dist', 'index.js'))});
    new GenerationSynchronizer('settings').markUpdated();
    const path = join(process.env.GENERATION_SYNC_DIR, 'other.json');
    const sync = new GenerationSynchronizer('flags', { store: FileStore.open(path), logger: { error() {}, warn() {}, info() {} } });
    writeFileSync(path + '.new', 'damaged', { mode: 0o600 });
    renameSync(path + '.new', path); // files are only ever replaced, so the store reads the new one
    if (!sync.isExpired()) throw new Error('a damaged store must read as expired');
  `;
  const run = (env: NodeJS.ProcessEnv): string =>
    spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, GENERATION_SYNC_DIR: tempDir(), ...env } }).stderr;

  it('traces the store chosen and why, keys created and outages, and prints nothing without it', () => {
    const traced = run({ NODE_DEBUG: 'generation-sync' });
    expect(traced).toMatch(/GENERATION-SYNC \d+: default store: shm at .*generations\.shm \(the native addon loads from /);
    expect(traced).toMatch(/GENERATION-SYNC \d+: created key "settings" in .*generations\.shm/);
    expect(traced).toMatch(/GENERATION-SYNC \d+: creating key "flags" in .*other\.json/);
    expect(traced).toMatch(/GENERATION-SYNC \d+: outage: checking for expiration in "flags" failed/);
    expect(run({ NODE_DEBUG: '' })).not.toMatch(/GENERATION-SYNC/);
  });
});

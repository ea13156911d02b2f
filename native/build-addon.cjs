'use strict';
// Builds the addon from source with node-gyp when it is missing or older
// than its sources: `npm run build:addon`, which `npm start`, `npm test`
// and `npm run bench` run first in a checkout of the repository.
//
// The package has no install script at all (npm 11 would warn about it on
// every install, and refuse it under --strict-allow-scripts): from the
// registry, a platform with a prebuild needs nothing run, and elsewhere the
// user builds it once with `npx node-gyp rebuild -C node_modules/generation-sync`.
const { spawnSync } = require('node:child_process');
const { existsSync, readdirSync, statSync } = require('node:fs');
const { join, resolve } = require('node:path');

const root = resolve(__dirname, '..');
const built = join(root, 'build', 'Release', 'generation_sync.node');

function upToDate() {
  if (!existsSync(built)) return false;
  const builtAt = statSync(built).mtimeMs;
  const sources = readdirSync(__dirname).filter((name) => /\.(cc|h)$/.test(name)).map((name) => join(__dirname, name));
  return [...sources, join(root, 'binding.gyp')].every((file) => statSync(file).mtimeMs <= builtAt);
}

if (upToDate()) process.exit(0);

const local = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const [command, args] = existsSync(local) ? [process.execPath, [local]] : ['node-gyp', []];
const build = spawnSync(command, [...args, 'rebuild'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
if (build.status !== 0) {
  console.error('generation-sync: building the native addon failed (see above); it needs python3, make and a C++ compiler.');
  process.exit(build.status || 1);
}

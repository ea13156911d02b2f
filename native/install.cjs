'use strict';
// generation-sync's install script (package.json "install"). npm runs it
// only where the consuming project allows this package's install scripts.
//
// - In a git checkout (development), it builds the addon from source and
//   fails loudly if that fails.
// - In an installed package, it keeps a prebuilt addon that loads on this
//   machine; otherwise it builds from source; and if that fails too (no
//   compiler), it warns and exits 0: the library then falls back to its
//   JSON file store, and npm install still succeeds.
const { spawnSync } = require('node:child_process');
const { existsSync, readdirSync } = require('node:fs');
const { join, resolve } = require('node:path');

const root = resolve(__dirname, '..');
const development = existsSync(join(root, 'src')) && existsSync(join(root, 'test'));

function prebuiltAddonLoads() {
  const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!existsSync(dir)) return false;
  return readdirSync(dir)
    .filter((name) => name.endsWith('.node'))
    .some((name) => {
      try {
        require(join(dir, name));
        return true;
      } catch {
        return false;
      }
    });
}

function nodeGypCommand() {
  const local = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(local)) return [process.execPath, [local]];
  if (process.env.npm_config_node_gyp) return [process.execPath, [process.env.npm_config_node_gyp]];
  return ['node-gyp', []];
}

if (!development && process.env.GENERATION_SYNC_BUILD_FROM_SOURCE !== '1' && prebuiltAddonLoads()) {
  process.exit(0);
}

const [command, args] = nodeGypCommand();
const build = spawnSync(command, [...args, 'rebuild'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
if (build.status === 0) process.exit(0);

if (development) {
  console.error('generation-sync: building the native addon failed (see above).');
  process.exit(build.status || 1);
}
console.warn(
  'generation-sync: the native addon could not be built here (see above), so this package will use its ' +
    'slower JSON file store. To get the shared-memory store, install python3, make and a C++ compiler, ' +
    'then run "npm rebuild generation-sync".',
);
process.exit(0);

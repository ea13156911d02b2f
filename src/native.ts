/**
 * The one place that finds and loads the native addon.
 *
 * @internal
 * @module
 */

import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { AddonUnavailableError } from './errors';

/** What the addon exports; see `native/addon.cc`. */
export interface NativeAddon {
  /** Map `length` bytes of `fd` MAP_SHARED; unmapped when the buffer is collected. */
  map(fd: number, length: number): ArrayBuffer;
  /** Reserve every block of the first `length` bytes of `fd`. */
  allocate(fd: number, length: number): void;
  /** Take the key-creation lock on `fd`; false if still held by another after `timeoutMs`. */
  lock(fd: number, timeoutMs: number): boolean;
  /** Release the key-creation lock on `fd`. */
  unlock(fd: number): void;
  /** Rename, failing with EEXIST rather than replacing an existing file. */
  renameNoReplace(from: string, to: string): void;
}

const ADDON_FILE = 'generation_sync.node';

/** The package's root directory (this file is `dist/native.js`). */
export const PACKAGE_ROOT = resolve(__dirname, '..');

type LoadResult = { readonly addon: NativeAddon } | { readonly error: AddonUnavailableError };

let loaded: LoadResult | undefined;

/** Places the addon may be, most specific first. */
export function addonCandidates(): string[] {
  return [join(PACKAGE_ROOT, 'build', 'Release', ADDON_FILE), join(PACKAGE_ROOT, 'build', 'Debug', ADDON_FILE)];
}

function load(): LoadResult {
  const candidates = addonCandidates();
  const path = candidates.find((candidate) => existsSync(candidate));
  if (path === undefined) {
    return {
      error: new AddonUnavailableError(
        `The generation-sync native addon is not built (looked for ${candidates.join(', ')}). ` +
          'Build it with "npm rebuild generation-sync" (needs python3, make and a C++ compiler).',
      ),
    };
  }
  try {
    const addon = require(path) as Partial<NativeAddon>;
    const missing = (['map', 'allocate', 'lock', 'unlock', 'renameNoReplace'] as const).filter(
      (name) => typeof addon[name] !== 'function',
    );
    if (missing.length > 0) {
      throw new Error(`the addon at ${path} lacks ${missing.join(', ')}; it is from another version`);
    }
    return { addon: addon as NativeAddon };
  } catch (cause) {
    return {
      error: new AddonUnavailableError(
        `The generation-sync native addon at ${path} could not be loaded: ${(cause as Error).message}. ` +
          'Rebuild it for this Node.js with "npm rebuild generation-sync".',
        { cause },
      ),
    };
  }
}

/** The addon. Throws {@link AddonUnavailableError} saying why it cannot be loaded. */
export function nativeAddon(): NativeAddon {
  loaded ??= load();
  if ('error' in loaded) throw loaded.error;
  return loaded.addon;
}

/** Why the addon cannot be loaded, or `undefined` when it can. */
export function addonLoadError(): AddonUnavailableError | undefined {
  loaded ??= load();
  return 'error' in loaded ? loaded.error : undefined;
}

/**
 * What the file store keeps in its file: one JSON document with a list of
 * keys, each with its generation, whether it was cleared, and when it
 * expires. A file that is not a store of this kind, is damaged, or comes
 * from a newer version is refused with a typed error and left as it is.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { corruptFileError, foreignFileError, StoreFormatError } from '../../store/errors';
import { describe } from '../../store/validate';

/** The `format` field that marks a file as a store of this kind. */
export const FILE_FORMAT = 'generation-sync-file-store';
/** The format version this code writes and the newest it reads. */
export const FILE_FORMAT_VERSION = 1;

/** proper-lockfile's default; it refuses anything under 2000 ms. */
/**
 * The largest file store this code reads: far above any real one (a key
 * takes about 120 bytes, so this is hundreds of thousands of keys), and
 * small enough that reading a wrong file cannot exhaust memory.
 */
export const MAX_FILE_STORE_BYTES = 64 * 1024 * 1024;

/** One key in the file. */
export interface FileEntry {
  readonly generation: number;
  /** Cleared: the key reads as absent, and `generation` is the highest value it had. */
  readonly absent: boolean;
  /** When the key expires (ms since the epoch); it then reads as absent. */
  readonly expiresAt: number;
  readonly createdAt: number;
  readonly updatedAt: number;
}

export function isLive(entry: FileEntry, now: number): boolean {
  return !entry.absent && entry.expiresAt > now;
}

export function checkGeneration(generation: number, key: string, path: string): void {
  if (!Number.isSafeInteger(generation)) {
    throw new StoreFormatError(
      'ERR_GENSYNC_CORRUPT_FILE',
      `Key "${key}" in ${path} would reach generation ${generation}, beyond what a number can hold exactly.`,
      { path },
    );
  }
}

export function serialize(entries: ReadonlyMap<string, FileEntry>): string {
  const list = [...entries].map(([key, entry]) => ({ key, ...entry }));
  return JSON.stringify({ format: FILE_FORMAT, version: FILE_FORMAT_VERSION, entries: list }) + '\n';
}

/**
 * Parse a store file. Keys live in an array of records, not as object
 * properties, so keys such as `__proto__` are ordinary keys; and every
 * field is checked before it is trusted.
 */
export function parseStoreFile(text: string, path: string): Map<string, FileEntry> {
  const foreign = (what: string): StoreFormatError => foreignFileError(path, what);
  const corrupt = (why: string): StoreFormatError => corruptFileError(path, 'file store', why);

  if (text.length === 0) throw foreign('an empty file');
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    if (!text.trimStart().startsWith('{')) throw foreign('not a generation-sync file store');
    throw corrupt('it is not valid JSON');
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw foreign('not a generation-sync file store');
  }
  const { format, version, entries } = document as Record<string, unknown>;
  if (format !== FILE_FORMAT) throw foreign('not a generation-sync file store');
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) throw corrupt(`format version ${describe(version)}`);
  if (version > FILE_FORMAT_VERSION) {
    throw new StoreFormatError(
      'ERR_GENSYNC_UNSUPPORTED_VERSION',
      `${path} has file store format ${version}, newer than format ${FILE_FORMAT_VERSION} that this version of ` +
        'generation-sync understands. Upgrade generation-sync in this application, or use another path.',
      { path },
    );
  }
  if (!Array.isArray(entries)) throw corrupt('"entries" is not a list');

  const parsed = new Map<string, FileEntry>();
  entries.forEach((record: unknown, index) => {
    if (typeof record !== 'object' || record === null || Array.isArray(record)) throw corrupt(`entry ${index} is not an object`);
    const { key, generation, absent, expiresAt, createdAt, updatedAt } = record as Record<string, unknown>;
    if (typeof key !== 'string' || !key.isWellFormed()) throw corrupt(`entry ${index} has no valid key`);
    if (parsed.has(key)) throw corrupt(`key ${JSON.stringify(key.slice(0, 80))} appears twice`);
    if (typeof generation !== 'number' || !Number.isSafeInteger(generation) || generation < 0) {
      throw corrupt(`entry ${index} has generation ${describe(generation)}`);
    }
    if (typeof absent !== 'boolean') throw corrupt(`entry ${index} has no "absent" flag`);
    for (const [name, value] of [['expiresAt', expiresAt], ['createdAt', createdAt], ['updatedAt', updatedAt]] as const) {
      if (typeof value !== 'number' || !Number.isFinite(value)) throw corrupt(`entry ${index} has ${name} ${describe(value)}`);
    }
    parsed.set(key, {
      generation,
      absent,
      expiresAt: expiresAt as number,
      createdAt: createdAt as number,
      updatedAt: updatedAt as number,
    });
  });
  return parsed;
}


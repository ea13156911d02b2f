/**
 * Retiring a store file that its path no longer names, and carrying its
 * keys over to the file that the path does name, so that no update is
 * lost and no generation repeats when a file is unlinked, renamed,
 * replaced or restored from a backup while processes use it. Which file a
 * store instance uses is decided by `live-file.ts`; this module acts on the
 * files it is given.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { renameSync, statSync, type Stats } from 'node:fs';

import { StoreError, StoreUnavailableError } from '../../store/errors';
import { ioError, temporaryName } from '../../system/filesystem';
import { findOrCreate, withCreationLock } from './key-creation';
import type { KeyIdentity, MappedFile } from './mapped-file';
import type { NativeAddon } from './native';
import { buildStoreFile, openStoreFile, removeQuietly, type OpenSettings } from './open-file';
import { ABSENT, H_RECORD_COUNT, RELAYED, VALUE_MASK, WATCHED } from './shm-format';

/** Upper bound on compare-and-swap retries; each failure means another process made progress. */
export const MAX_CAS_ATTEMPTS = 100_000;

/** How many times opening the path may find a retired file there and replace it before giving up. */
const RETIRED_REPLACEMENTS = 3;

/** A key of a file and its generation word as it was captured. */
export interface CapturedKey {
  readonly identity: KeyIdentity;
  readonly word: bigint;
}

/**
 * Open, check and map the live store file at `path`: create it if there
 * is none, and replace it (carrying its keys over) if it is a retired file
 * that came back (moved away and back, restored from a backup), or a file
 * of format 1 (generation-sync 0.1): its keys come over as floors, so every
 * holder reloads once and no generation repeats. Processes of 0.1 on the
 * same file then find it retired and cannot open the new one (it is of a
 * newer format): upgrade every process of a host together.
 */
export function openLive(path: string, settings: OpenSettings, addon: NativeAddon): MappedFile {
  for (let replaced = 0; replaced <= RETIRED_REPLACEMENTS; replaced++) {
    const file = openStoreFile(path, settings, addon);
    if (!file.retired && !file.legacy) {
      if (!file.lostRecords()) return file;
      file.markRetired(); // lost its records in place: replace it as a retired file
    }
    try {
      replaceWhileRetired(file, settings);
    } finally {
      file.close();
    }
  }
  throw new StoreUnavailableError(
    'ERR_GENSYNC_STORE_UNAVAILABLE',
    `${path} was replaced by a retired store file ${RETIRED_REPLACEMENTS} times in a row. ` +
      'Something keeps restoring an old copy of the store file: stop it, or use another path.',
    { path },
  );
}

/**
 * Mark `file`, which its path no longer names, as retired, and poison
 * every key in it: one atomic OR of ABSENT per key, which also returns the
 * last value each key reached there. The flag is set first, so any process
 * that writes a key afterwards can tell (see the bindings' re-checks).
 * Wakes the file's watchers. Idempotent: every process that notices does
 * it, and words already poisoned come back absent.
 */
export function retire(file: MappedFile): CapturedKey[] {
  file.markRetired();
  const captured: CapturedKey[] = [];
  const count = Math.min(file.headerWord(H_RECORD_COUNT), file.header.capacity);
  for (let record = 0; record < count; record++) {
    const word = Atomics.or(file.gens, file.wordIndex(record), ABSENT);
    // A record that lost its contents names no key: what it held is known only to the processes that used it.
    if (word === 0n || file.recordLost(record)) continue;
    captured.push({ identity: file.identityAt(record), word });
  }
  file.wakeWatchers();
  return captured;
}

/**
 * Carry a key of a retired file over to `file`, given the word it held
 * when it was poisoned. A present word (this process poisoned it, and the
 * key may have been bumped there after holders of the old file loaded) is
 * raised above both values, so that they all reload. An absent word
 * (poisoned by another process, which raised it, or cleared before) only
 * sets a floor, so that carrying over again changes nothing and a
 * re-created key continues above it. Returns whether the key is watched
 * here (the caller then wakes the watchers); a full or damaged file cannot
 * take the key, and its holders re-create it when they refresh.
 */
export function carryOver(file: MappedFile, identity: KeyIdentity, word: bigint): boolean {
  const wasAbsent = (word & ABSENT) !== 0n;
  const oldValue = word & VALUE_MASK;
  let record: number;
  try {
    record = findOrCreate(file, identity, null);
  } catch (error) {
    if (error instanceof StoreError) return false;
    throw error;
  }
  if (record < 0) return false;
  const index = file.wordIndex(record);
  for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
    const current = Atomics.load(file.gens, index);
    const currentValue = current & VALUE_MASK;
    let next: bigint;
    if (!wasAbsent) {
      next = ((currentValue > oldValue ? currentValue : oldValue) + 1n) | (current & WATCHED);
    } else if (currentValue > oldValue) {
      return false; // already above: nothing to do
    } else {
      next = (oldValue + 1n) | (current & (ABSENT | WATCHED));
    }
    if (Atomics.compareExchange(file.gens, index, current, next) === current) {
      // A relay already here waits for this key: a change it must hear of (its flag is used once).
      if ((current & RELAYED) !== 0n) file.relayChanged(record);
      return (current & WATCHED) !== 0n;
    }
  }
  return false;
}

/**
 * A retired file is at the path again. Under its creation lock (so that
 * one process does this), if the path still names it: poison it again,
 * build a fresh file carrying its keys over as floors, and rename that
 * over the path.
 */
function replaceWhileRetired(file: MappedFile, settings: OpenSettings): void {
  withCreationLock(file, () => {
    let stats: Stats | undefined;
    try {
      stats = statSync(file.path, { throwIfNoEntry: false });
    } catch (error) {
      throw ioError(error, 'check', file.path);
    }
    if (stats === undefined || stats.ino !== file.ino || stats.dev !== file.dev) return; // someone else did it
    const captured = retire(file);
    const temporary = temporaryName(file.path);
    try {
      // A file of format 1 keeps its capacity in the new format.
      buildStoreFile(temporary, file.legacy ? { ...settings, capacity: Math.max(settings.capacity, file.header.capacity) } : settings, file.addon);
      const fresh = openStoreFile(temporary, settings, file.addon);
      try {
        for (const { identity, word } of captured) carryOver(fresh, identity, word | ABSENT);
      } finally {
        fresh.close();
      }
      renameSync(temporary, file.path);
    } catch (error) {
      if (error instanceof StoreError) throw error;
      throw ioError(error, 'replace the retired store', file.path);
    } finally {
      removeQuietly(temporary);
    }
  });
}

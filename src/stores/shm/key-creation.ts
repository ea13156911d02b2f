/**
 * Creating a key in a store file, crash-safe: the only code that claims a
 * record and publishes it in the index. Readers never lock, so the order
 * of the writes below is the whole protocol: a record is filled completely
 * before its index entry is published, and a process killed at any step
 * (see the checkpoints; `90.faults` kills one at each) leaves either
 * nothing visible or a complete key, which the next creator repairs under
 * the lock.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { StoreFullError } from '../../store/errors';
import { checkpoint } from '../../system/checkpoints';
import type { KeyIdentity, MappedFile } from './mapped-file';
import { ABSENT, CREATION_LOCK_BYTE, DIGEST_BYTES, H_PENDING_RECORD, H_RECORD_COUNT, R_CREATED_AT, R_DIGEST, R_FIRST_VALUE, R_KEY, R_KEY_LENGTH, R_UPDATED_AT } from './shm-format';
import { trace } from '../../store/trace';

/**
 * The record of `identity` in `file`, created (holding `seed`, or absent
 * when null) under the creation lock if missing; -1 if the file turned out
 * to be retired, where nothing may be created (the caller moves on).
 */
export function findOrCreate(file: MappedFile, identity: KeyIdentity, seed: number | null): number {
  const found = file.find(identity);
  return found >= 0 ? found : withCreationLock(file, () => (file.retired ? -1 : findOrCreateLocked(file, identity, seed)));
}

/**
 * Holding the creation lock of `file`: make sure it has a record (absent
 * when new) for each of `identities`, so that a move carries many keys over
 * under one hold of the lock rather than one per key. Keys that do not fit
 * are left out (the carry-over skips them). Does nothing in a retired file.
 */
export function createMissingLocked(file: MappedFile, identities: Iterable<KeyIdentity>): void {
  if (file.retired) return;
  for (const identity of identities) {
    try {
      findOrCreateLocked(file, identity, null);
    } catch (error) {
      if (error instanceof StoreFullError) return;
      throw error;
    }
  }
}

/** Run `action` holding the key-creation lock of `file`, after repairing what a process that died holding it left. */
export function withCreationLock<T>(file: MappedFile, action: () => T): T {
  if (!file.lock(CREATION_LOCK_BYTE, true)) throw file.lockTimeout();
  try {
    checkpoint('shm-create', 'locked');
    recoverInterruptedCreation(file);
    return action();
  } finally {
    file.unlock(CREATION_LOCK_BYTE);
  }
}

/**
 * Under the creation lock: find the key again, or claim, fill and publish
 * a new record — holding `seed`, or absent when `seed` is null. -1 when
 * the file turns out to have lost records (it is then retired).
 */
function findOrCreateLocked(file: MappedFile, identity: KeyIdentity, seed: number | null): number {
  const existing = file.find(identity);
  if (existing >= 0) return existing;
  if (file.lostRecords()) {
    // Cut short and extended in place: its keys are gone from under every process. Make nothing here: retire
    // it, so that every process moves to a fresh file carrying what it knows (see openLive).
    file.markRetired();
    file.wakeWatchers();
    return -1;
  }

  const { capacity } = file.header;
  const record = file.recordCount();
  if (record === capacity) {
    throw new StoreFullError(
      `The store at ${file.path} holds its maximum of ${capacity} keys, so "${identity.label}" cannot be added ` +
        '(keys it already holds keep working). Open a new store file with a larger "capacity" option.',
      { path: file.path },
    );
  }
  file.setHeaderWord(H_PENDING_RECORD, record + 1);
  checkpoint('shm-create', 'claimed');

  const now = Date.now();
  file.wipeRecord(record);
  checkpoint('shm-create', 'zeroed');
  file.setRecordTime(record, R_CREATED_AT, now);
  file.setRecordTime(record, R_UPDATED_AT, now);
  file.setRecordWord(record, R_KEY_LENGTH, identity.length);
  if (seed !== null && seed > 0 && seed < 2 ** 32) file.setRecordWord(record, R_FIRST_VALUE, seed);
  checkpoint('shm-create', 'stamped');
  identity.digest.copy(file.recordBytes(record, R_DIGEST, DIGEST_BYTES));
  identity.inline.copy(file.recordBytes(record, R_KEY, identity.inline.length));
  checkpoint('shm-create', 'keyed');
  Atomics.store(file.gens, file.wordIndex(record), seed === null ? ABSENT : BigInt(seed));
  checkpoint('shm-create', 'seeded');

  const { slot } = file.probe(identity.tag, () => false); // the first empty entry
  if (slot < 0) throw file.corrupt('the index has no empty entry although the store is below capacity');
  file.setSlotTag(slot, identity.tag);
  checkpoint('shm-create', 'tagged');
  // Publishing the ref is the last write: from here on readers find a complete record.
  file.publishSlot(slot, record);
  checkpoint('shm-create', 'published');
  file.setHeaderWord(H_RECORD_COUNT, record + 1);
  checkpoint('shm-create', 'counted');
  file.setHeaderWord(H_PENDING_RECORD, 0);
  checkpoint('shm-create', 'settled');
  // A host with a relay: the relay learns of the new key as of a change.
  if (file.relayed) file.relayChanged(record);
  if (trace.enabled) trace('created key %j in %s (record %d, %s)', identity.label, file.path, record, seed === null ? 'absent' : `generation ${seed}`);
  return record;
}

/**
 * A process that died while creating a key leaves H_PENDING_RECORD set.
 * Holding the lock, we know it is dead: keep its record if the index
 * already publishes it (it was complete), otherwise wipe it for reuse.
 */
function recoverInterruptedCreation(file: MappedFile): void {
  const pending = file.headerWord(H_PENDING_RECORD);
  if (pending === 0) return;
  if (pending > file.header.capacity) throw file.corrupt(`the pending record is ${pending - 1}, beyond the capacity of ${file.header.capacity}`);
  const record = pending - 1;
  if (file.isPublished(record)) {
    if (file.recordCount() < pending) file.setHeaderWord(H_RECORD_COUNT, pending);
  } else {
    file.wipeRecord(record);
  }
  file.setHeaderWord(H_PENDING_RECORD, 0);
}

/**
 * One mapped shared-memory store file and every operation on it: opening
 * and checking, the hash index, key creation under the creation lock,
 * retirement, and carrying keys over from a retired file. The store
 * (`shm-store.ts`) decides which file is in use; everything here acts on
 * exactly the file it is called on.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fdatasyncSync,
  fstatSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { dirname } from 'node:path';

import { corruptFileError, StoreError, StoreFormatError, StoreFullError, StoreUnavailableError } from '../../store/errors';
import { checkDirectoryChain, checkStoreFile, errnoCode, ioError, OPEN_EXISTING, OPEN_NEW, openFailure, publishWithoutReplacing, temporaryName } from '../../system/filesystem';
import type { NativeAddon } from './native';
import { retryUntil } from '../../system/lock-wait';
import { pause } from '../../system/pause';
import {
  ABSENT,
  CREATION_LOCK_BYTE,
  decodeHeader,
  DIGEST_BYTES,
  encodeHeader,
  FLAG_RETIRED,
  H_FLAGS,
  H_NOTIFY_SEQ,
  H_PENDING_RECORD,
  H_RECORD_COUNT,
  HEADER_SIZE,
  INLINE_KEY_BYTES,
  layoutFor,
  MAGIC,
  R_CREATED_AT,
  R_DIGEST,
  R_GENERATION,
  R_KEY,
  R_KEY_LENGTH,
  R_UPDATED_AT,
  RECORD_SIZE,
  VALUE_MASK,
  WATCHED,
  type HeaderInfo,
} from './shm-format';
import { checkpoint } from '../../system/test-hooks';

/** Attempts to open a path whose file another process is creating or replacing at that moment. */
const OPEN_ATTEMPTS = 5;
const OPEN_RETRY_PAUSE_MS = 10;

/** Upper bound on compare-and-swap retries; each failure means another process made progress. */
export const MAX_CAS_ATTEMPTS = 100_000;

/** How many times opening the path may find a retired file there and replace it before giving up. */
const RETIRED_REPLACEMENTS = 3;

/** What open() checked once, kept for reopening the path later. */
export interface OpenSettings {
  readonly capacity: number;
  readonly mode: number;
  readonly lockTimeoutMs: number;
}

/**
 * What identifies a key in a file: its UTF-8 length, SHA-256 and first
 * bytes. A record can be matched or re-created from this alone, which is
 * how keys are carried over to a new file.
 */
export interface KeyIdentity {
  /** The key for messages (for a key carried over from an old file, only its first bytes). */
  readonly label: string;
  readonly length: number;
  readonly digest: Buffer;
  /** The first INLINE_KEY_BYTES bytes of the key (all of it when shorter). */
  readonly inline: Buffer;
  /** Hash-index tag: the first four bytes of the digest. */
  readonly tag: number;
}

export function identityOf(key: string): KeyIdentity {
  const bytes = Buffer.from(key, 'utf8');
  const digest = createHash('sha256').update(bytes).digest();
  return { label: key, length: bytes.length, digest, inline: bytes.subarray(0, INLINE_KEY_BYTES), tag: digest.readUInt32LE(0) };
}

/** A key of a file and its generation word as it was captured. */
export interface CapturedKey {
  readonly identity: KeyIdentity;
  readonly word: bigint;
}

/** One record as {@link StoreFile.records} reads it. */
export interface RecordView {
  readonly key: string;
  readonly keyLength: number;
  readonly word: bigint;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** One mapped store file. Close it with {@link StoreFile.close}, which unmaps it at once. */
export class StoreFile {
  readonly gens: BigInt64Array;
  readonly #u32: Uint32Array;
  readonly #f64: Float64Array;
  readonly #bytes: Buffer;
  #open = true;

  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly header: HeaderInfo,
    readonly buffer: ArrayBuffer,
    readonly ino: number,
    readonly dev: number,
    private readonly addon: NativeAddon,
    private readonly lockTimeoutMs: number,
  ) {
    this.gens = new BigInt64Array(buffer);
    this.#u32 = new Uint32Array(buffer);
    this.#f64 = new Float64Array(buffer);
    this.#bytes = Buffer.from(buffer);
  }

  /**
   * Open, check and map the live store file at `path`: create it if there
   * is none, and replace it (carrying its keys over) if it is a retired
   * file that came back (moved away and back, restored from a backup).
   */
  static openLive(path: string, settings: OpenSettings, addon: NativeAddon): StoreFile {
    for (let replaced = 0; replaced <= RETIRED_REPLACEMENTS; replaced++) {
      const file = StoreFile.#openAt(path, settings, addon);
      if (!file.retired) return file;
      try {
        file.#replaceWhileRetired(settings);
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

  static #openAt(path: string, settings: OpenSettings, addon: NativeAddon): StoreFile {
    // Every open and re-open: the path must still lead where only root and this user can change it.
    checkDirectoryChain(dirname(path));
    for (let attempt = 1; ; attempt++) {
      let fd: number;
      try {
        fd = openSync(path, OPEN_EXISTING);
      } catch (error) {
        if (errnoCode(error) === 'ENOENT') {
          createStoreFile(path, settings, addon);
          continue;
        }
        throw openFailure(error, path);
      }
      try {
        const stats = fstatSync(fd);
        if (stats.isFile() && stats.nlink !== 1 && attempt < OPEN_ATTEMPTS) {
          // Replaced between open and fstat, or being published with link + unlink right now.
          closeSync(fd);
          pause(OPEN_RETRY_PAUSE_MS);
          continue;
        }
        checkStoreFile(stats, path);
        const header = decodeHeader(readHeader(fd, stats, path), stats.size, path);
        const buffer = addon.map(fd, header.fileSize);
        return new StoreFile(path, fd, header, buffer, stats.ino, stats.dev, addon, settings.lockTimeoutMs);
      } catch (error) {
        closeSync(fd);
        if (error instanceof StoreError) throw error;
        throw ioError(error, 'open the store', path);
      }
    }
  }

  /** Unmap (no typed array over the file can reach it afterwards) and close. Idempotent. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.addon.unmap(this.buffer);
    closeSync(this.fd);
  }

  get isOpen(): boolean {
    return this.#open;
  }

  /** Whether some process found this file pulled from its path and retired it. */
  get retired(): boolean {
    return (Atomics.load(this.#u32, H_FLAGS / 4) & FLAG_RETIRED) !== 0;
  }

  /**
   * Whether the file is still as long as its header says and still starts
   * with the magic: a shrunk file (the pages past its end read as absent,
   * see the addon) or one overwritten in place is not.
   */
  get intact(): boolean {
    let size: number;
    try {
      size = fstatSync(this.fd).size;
    } catch {
      return false;
    }
    return size >= this.header.fileSize && this.#bytes.subarray(0, MAGIC.length).equals(MAGIC);
  }

  /** Index of the generation word of `record` in {@link StoreFile.gens}. */
  wordIndex(record: number): number {
    return (this.#recordOffset(record) + R_GENERATION) / 8;
  }

  /** Records in use, checked against the capacity. */
  recordCount(): number {
    const count = Atomics.load(this.#u32, H_RECORD_COUNT / 4);
    if (count > this.header.capacity) throw this.corrupt(`the record count is ${count}, above the capacity of ${this.header.capacity}`);
    return count;
  }

  /** Every record, in creation order. */
  records(): RecordView[] {
    const views: RecordView[] = [];
    const count = this.recordCount();
    for (let record = 0; record < count; record++) {
      const base = this.#recordOffset(record);
      const keyLength = this.#u32[(base + R_KEY_LENGTH) / 4] ?? 0;
      views.push({
        key: this.#bytes.toString('utf8', base + R_KEY, base + R_KEY + Math.min(keyLength, INLINE_KEY_BYTES)),
        keyLength,
        word: Atomics.load(this.gens, this.wordIndex(record)),
        createdAt: this.#f64[(base + R_CREATED_AT) / 8] ?? 0,
        updatedAt: this.#f64[(base + R_UPDATED_AT) / 8] ?? 0,
      });
    }
    return views;
  }

  /** Record now as the last creation, re-creation or clear time of `record`. */
  stamp(record: number): void {
    this.#f64[(this.#recordOffset(record) + R_UPDATED_AT) / 8] = Date.now();
  }

  /** Bump the notification sequence and wake every watcher thread, in every process. */
  wakeWatchers(): void {
    Atomics.add(this.#u32, H_NOTIFY_SEQ / 4, 1);
    this.addon.wake(this.buffer, H_NOTIFY_SEQ);
  }

  /** Search the index without a lock. Returns the record number, or -1 when the key is not published. */
  find(identity: KeyIdentity): number {
    const { capacity } = this.header;
    const { ref } = this.#probe(identity.tag, (candidate, entry) => {
      if (candidate > capacity) throw this.corrupt(`an index entry names record ${candidate - 1} of ${capacity}`);
      return this.#u32[entry + 1] === identity.tag && this.#holds(candidate - 1, identity);
    });
    return ref - 1; // -1 when it stopped at an empty entry or went round the table
  }

  /**
   * The one probe loop of the index (linear probing from the tag's home
   * position): visit each published entry until `stop` says so, or until an
   * empty entry, past which no key of this tag can be. Returns where it
   * stopped: the u32 index of the entry and its record reference (0 for an
   * empty entry); entry -1 when it went round the whole table.
   */
  #probe(tag: number, stop: (ref: number, entry: number) => boolean): { readonly entry: number; readonly ref: number } {
    const { tableSize, indexOffset } = this.header;
    const mask = tableSize - 1;
    let position = tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const entry = (indexOffset >> 2) + position * 2;
      const ref = Atomics.load(this.#u32, entry);
      if (ref === 0 || stop(ref, entry)) return { entry, ref };
      position = (position + 1) & mask;
    }
    return { entry: -1, ref: 0 };
  }

  /**
   * The record of `identity`, created (holding `seed`, or absent when null)
   * under the creation lock if missing; -1 if the file turned out to be
   * retired, where nothing may be created (the caller moves on).
   */
  findOrCreate(identity: KeyIdentity, seed: number | null): number {
    const found = this.find(identity);
    return found >= 0 ? found : this.withCreationLock(() => (this.retired ? -1 : this.#findOrCreateLocked(identity, seed)));
  }

  /** Take the kernel lock on the byte at `offset`, waiting up to the lock timeout; false if it did not come free. */
  lock(offset: number, exclusive: boolean): boolean {
    return retryUntil(this.lockTimeoutMs, () => (this.addon.tryLock(this.fd, offset, exclusive) ? true : undefined)) ?? false;
  }

  /** Run `action` holding the key-creation lock, after repairing what a process that died holding it left. */
  withCreationLock<T>(action: () => T): T {
    if (!this.lock(CREATION_LOCK_BYTE, true)) throw this.lockTimeout();
    try {
      checkpoint('shm-create', 'locked');
      this.#recoverInterruptedCreation();
      return action();
    } finally {
      this.addon.unlock(this.fd, CREATION_LOCK_BYTE);
    }
  }

  lockTimeout(): StoreUnavailableError {
    return new StoreUnavailableError(
      'ERR_GENSYNC_LOCK_TIMEOUT',
      `Another process held the key-creation lock of ${this.path} for more than ${this.lockTimeoutMs} ms. ` +
        'A process may be stopped (SIGSTOP) or hung while creating a key: resume or kill it.',
      { path: this.path },
    );
  }

  corrupt(why: string): StoreFormatError {
    return corruptFileError(this.path, 'store', why);
  }

  /**
   * Mark this file, which its path no longer names, as retired, and poison
   * every key in it: one atomic OR of ABSENT per key, which also returns
   * the last value each key reached here. The flag is set first, so any
   * process that writes a key afterwards can tell (see the store's
   * re-checks). Wakes this file's watchers. Idempotent: every process that
   * notices does it, and words already poisoned come back absent.
   */
  retire(): CapturedKey[] {
    Atomics.or(this.#u32, H_FLAGS / 4, FLAG_RETIRED);
    const captured: CapturedKey[] = [];
    const count = Math.min(Atomics.load(this.#u32, H_RECORD_COUNT / 4), this.header.capacity);
    for (let record = 0; record < count; record++) {
      const base = this.#recordOffset(record);
      const length = Math.min(this.#u32[(base + R_KEY_LENGTH) / 4] ?? 0, 2 ** 31);
      const digest = Buffer.from(this.#bytes.subarray(base + R_DIGEST, base + R_DIGEST + DIGEST_BYTES));
      const inline = Buffer.from(this.#bytes.subarray(base + R_KEY, base + R_KEY + Math.min(length, INLINE_KEY_BYTES)));
      const word = Atomics.or(this.gens, this.wordIndex(record), ABSENT);
      captured.push({ identity: { label: inline.toString('utf8'), length, digest, inline, tag: digest.readUInt32LE(0) }, word });
    }
    this.wakeWatchers();
    return captured;
  }

  /**
   * Carry a key of a retired file over to this one, given the word it held
   * when it was poisoned. A present word (this process poisoned it, and the
   * key may have been bumped there after holders of this file loaded) is
   * raised above both values, so that they all reload. An absent word
   * (poisoned by another process, which raised it, or cleared before) only
   * sets a floor, so that carrying over again changes nothing and a
   * re-created key continues above it. Returns whether the key is watched
   * here (the caller then wakes the watchers); a full or damaged file
   * cannot take the key, and its holders re-create it when they refresh.
   */
  carryOver(identity: KeyIdentity, word: bigint): boolean {
    const wasAbsent = (word & ABSENT) !== 0n;
    const oldValue = word & VALUE_MASK;
    let record: number;
    try {
      record = this.findOrCreate(identity, null);
    } catch (error) {
      if (error instanceof StoreError) return false;
      throw error;
    }
    if (record < 0) return false;
    const index = this.wordIndex(record);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const current = Atomics.load(this.gens, index);
      const currentValue = current & VALUE_MASK;
      let next: bigint;
      if (!wasAbsent) {
        next = ((currentValue > oldValue ? currentValue : oldValue) + 1n) | (current & WATCHED);
      } else if (currentValue > oldValue) {
        return false; // already above: nothing to do
      } else {
        next = (oldValue + 1n) | (current & (ABSENT | WATCHED));
      }
      if (Atomics.compareExchange(this.gens, index, current, next) === current) return (current & WATCHED) !== 0n;
    }
    return false;
  }

  /**
   * A retired file is at the path again. Under its creation lock (so that
   * one process does this), if the path still names it: poison it again,
   * build a fresh file carrying its keys over as floors, and rename that
   * over the path.
   */
  #replaceWhileRetired(settings: OpenSettings): void {
    this.withCreationLock(() => {
      let stats: Stats | undefined;
      try {
        stats = statSync(this.path, { throwIfNoEntry: false });
      } catch (error) {
        throw ioError(error, 'check', this.path);
      }
      if (stats === undefined || stats.ino !== this.ino || stats.dev !== this.dev) return; // someone else did it
      const captured = this.retire();
      const temporary = temporaryName(this.path);
      try {
        buildStoreFile(temporary, settings, this.addon);
        const fresh = StoreFile.#openAt(temporary, settings, this.addon);
        try {
          for (const { identity, word } of captured) fresh.carryOver(identity, word | ABSENT);
        } finally {
          fresh.close();
        }
        renameSync(temporary, this.path);
      } catch (error) {
        if (error instanceof StoreError) throw error;
        throw ioError(error, 'replace the retired store', this.path);
      } finally {
        removeQuietly(temporary);
      }
    });
  }

  /**
   * Under the creation lock: find the key again, or claim, fill and publish
   * a new record — holding `seed`, or absent when `seed` is null.
   */
  #findOrCreateLocked(identity: KeyIdentity, seed: number | null): number {
    const existing = this.find(identity);
    if (existing >= 0) return existing;

    const { capacity } = this.header;
    const record = this.recordCount();
    if (record === capacity) {
      throw new StoreFullError(
        `The store at ${this.path} holds its maximum of ${capacity} keys, so "${identity.label}" cannot be added ` +
          '(keys it already holds keep working). Open a new store file with a larger "capacity" option.',
        { path: this.path },
      );
    }
    Atomics.store(this.#u32, H_PENDING_RECORD / 4, record + 1);
    checkpoint('shm-create', 'claimed');

    const base = this.#recordOffset(record);
    const now = Date.now();
    this.#bytes.fill(0, base, base + RECORD_SIZE);
    checkpoint('shm-create', 'zeroed');
    this.#f64[(base + R_CREATED_AT) / 8] = now;
    this.#f64[(base + R_UPDATED_AT) / 8] = now;
    this.#u32[(base + R_KEY_LENGTH) / 4] = identity.length;
    checkpoint('shm-create', 'stamped');
    identity.digest.copy(this.#bytes, base + R_DIGEST);
    identity.inline.copy(this.#bytes, base + R_KEY);
    checkpoint('shm-create', 'keyed');
    Atomics.store(this.gens, this.wordIndex(record), seed === null ? ABSENT : BigInt(seed));
    checkpoint('shm-create', 'seeded');

    const { entry } = this.#probe(identity.tag, () => false); // the first empty entry
    if (entry < 0) throw this.corrupt('the index has no empty entry although the store is below capacity');
    this.#u32[entry + 1] = identity.tag;
    checkpoint('shm-create', 'tagged');
    // Publishing the ref is the last write: from here on readers find a complete record.
    Atomics.store(this.#u32, entry, record + 1);
    checkpoint('shm-create', 'published');
    Atomics.store(this.#u32, H_RECORD_COUNT / 4, record + 1);
    checkpoint('shm-create', 'counted');
    Atomics.store(this.#u32, H_PENDING_RECORD / 4, 0);
    checkpoint('shm-create', 'settled');
    return record;
  }

  /**
   * A process that died while creating a key leaves H_PENDING_RECORD set.
   * Holding the lock, we know it is dead: keep its record if the index
   * already publishes it (it was complete), otherwise wipe it for reuse.
   */
  #recoverInterruptedCreation(): void {
    const pending = Atomics.load(this.#u32, H_PENDING_RECORD / 4);
    if (pending === 0) return;
    if (pending > this.header.capacity) throw this.corrupt(`the pending record is ${pending - 1}, beyond the capacity of ${this.header.capacity}`);
    const record = pending - 1;
    if (this.#isPublished(record)) {
      if (this.recordCount() < pending) Atomics.store(this.#u32, H_RECORD_COUNT / 4, pending);
    } else {
      const base = this.#recordOffset(record);
      this.#bytes.fill(0, base, base + RECORD_SIZE);
    }
    Atomics.store(this.#u32, H_PENDING_RECORD / 4, 0);
  }

  #isPublished(record: number): boolean {
    const tag = this.#bytes.readUInt32LE(this.#recordOffset(record) + R_DIGEST);
    return this.#probe(tag, (ref) => ref === record + 1).ref === record + 1;
  }

  #recordOffset(record: number): number {
    return this.header.recordsOffset + record * RECORD_SIZE;
  }

  #holds(record: number, identity: KeyIdentity): boolean {
    const base = this.#recordOffset(record);
    if (this.#u32[(base + R_KEY_LENGTH) / 4] !== identity.length) return false;
    if (!this.#bytes.subarray(base + R_DIGEST, base + R_DIGEST + DIGEST_BYTES).equals(identity.digest)) return false;
    return this.#bytes.subarray(base + R_KEY, base + R_KEY + identity.inline.length).equals(identity.inline);
  }
}

function readHeader(fd: number, stats: Stats, file: string): Buffer {
  const header = Buffer.alloc(Math.min(HEADER_SIZE, Math.max(stats.size, 0)));
  try {
    const read = readSync(fd, header, 0, header.length, 0);
    return header.subarray(0, read);
  } catch (error) {
    throw ioError(error, 'read the header of', file);
  }
}

function removeQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Already renamed into place, or never made: nothing left to remove.
  }
}

/** Write a complete, empty store file at `file`, which must not exist. */
function buildStoreFile(file: string, settings: OpenSettings, addon: NativeAddon): void {
  const layout = layoutFor(settings.capacity);
  let fd: number;
  try {
    fd = openSync(file, OPEN_NEW, settings.mode);
  } catch (error) {
    throw ioError(error, 'create the store', file);
  }
  try {
    fchmodSync(fd, settings.mode);
    addon.allocate(fd, layout.fileSize);
    writeSync(fd, encodeHeader(layout, Date.now()), 0, HEADER_SIZE, 0);
    fdatasyncSync(fd);
  } catch (error) {
    throw ioError(error, 'create the store', file);
  } finally {
    closeSync(fd);
  }
}

/**
 * Build a complete store file under a temporary name, then publish it
 * under `file` only if nothing is there yet, so that no process ever opens
 * a half-initialized store. Losing the race to another creator is fine:
 * the caller opens the winner's file.
 */
function createStoreFile(file: string, settings: OpenSettings, addon: NativeAddon): void {
  const temporary = temporaryName(file);
  try {
    buildStoreFile(temporary, settings, addon);
    publishWithoutReplacing(temporary, file, addon.renameNoReplace);
  } catch (error) {
    if (error instanceof StoreError) throw error;
    throw ioError(error, 'create the store', file);
  } finally {
    removeQuietly(temporary);
  }
}

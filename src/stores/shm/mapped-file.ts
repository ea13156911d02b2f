/**
 * One mapped store file: the only module that turns the layout's byte
 * offsets into typed-array indexes, and the one probe loop of the hash
 * index. Everything above it names fields (`R_KEY_LENGTH`, `H_FLAGS`) and
 * records, never bytes. Opening and creating a file is `open-file.ts`;
 * creating a key, `key-creation.ts`; retiring a file, `retirement.ts`.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';
import { closeSync, fstatSync } from 'node:fs';

import { corruptFileError, StoreFormatError, StoreUnavailableError } from '../../store/errors';
import { retryUntil } from '../../system/lock-wait';
import type { NativeAddon } from './native';
import {
  ABSENT,
  DIGEST_BYTES,
  DIRTY_BITS_PER_WORD,
  FLAG_RETIRED,
  H_FLAGS,
  H_LIVENESS,
  H_NONCE,
  H_NOTIFY_SEQ,
  H_NOTIFY_SLEEPERS,
  H_RECORD_COUNT,
  H_RELAY_SEQ,
  H_RELAY_SLEEPERS,
  H_RELAY_TERM,
  INLINE_KEY_BYTES,
  LEGACY_DIGEST_BYTES,
  LEGACY_FORMAT_VERSION,
  LEGACY_R_DIGEST,
  MAGIC,
  R_CREATED_AT,
  R_DIGEST,
  R_GENERATION,
  R_KEY,
  R_KEY_LENGTH,
  R_UPDATED_AT,
  RECORD_SIZE,
  type HeaderInfo,
} from './shm-format';

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

const ZERO_WORD_BYTES = Buffer.alloc(8);
/** A 64-bit word holding ABSENT, in this machine's byte order, as the addon fills a substituted page. */
const ABSENT_WORD_BYTES = Buffer.from(new BigUint64Array([ABSENT]).buffer);

/** One record as {@link MappedFile.records} reads it. */
export interface RecordView {
  readonly key: string;
  readonly keyLength: number;
  readonly word: bigint;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** Where a probe of the index stopped: the entry's slot and its record reference (0 for an empty entry). */
export interface ProbeStop {
  /** Slot number in the index; -1 when the probe went round the whole table. */
  readonly slot: number;
  readonly ref: number;
}

/** A store file mapped `MAP_SHARED`. Close it with {@link MappedFile.close}, which unmaps it at once. */
export class MappedFile {
  /** The file as 64-bit words: generation words are read and bumped here, on the hot path. */
  readonly gens: BigInt64Array;
  readonly #u32: Uint32Array;
  readonly #f64: Float64Array;
  readonly #bytes: Buffer;
  /** Where a record's digest is, and how many bytes of the key's SHA-256 it keeps (format 1 kept them all). */
  readonly #digestOffset: number;
  readonly #digestBytes: number;
  /** The header's nonce when this file was mapped: a copy of another file written over it in place changes it. */
  readonly #nonceAtMap: number;
  /** The liveness counter as this process last left it (see {@link wentBack}). */
  #livenessSeen: number | undefined;
  #open = true;

  /** Made by `open-file.ts`, which has checked the file and its header. */
  constructor(
    readonly path: string,
    readonly fd: number,
    readonly header: HeaderInfo,
    readonly buffer: ArrayBuffer,
    readonly ino: number,
    readonly dev: number,
    readonly addon: NativeAddon,
    readonly lockTimeoutMs: number,
  ) {
    this.gens = new BigInt64Array(buffer);
    this.#u32 = new Uint32Array(buffer);
    this.#f64 = new Float64Array(buffer);
    this.#bytes = Buffer.from(buffer);
    const legacy = header.version === LEGACY_FORMAT_VERSION;
    this.#digestOffset = legacy ? LEGACY_R_DIGEST : R_DIGEST;
    this.#digestBytes = legacy ? LEGACY_DIGEST_BYTES : DIGEST_BYTES;
    this.#nonceAtMap = this.nonce;
  }

  /** Whether this is a file of format 1, open only to carry its keys over. */
  get legacy(): boolean {
    return this.header.version === LEGACY_FORMAT_VERSION;
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

  // Header fields: u32 words, read and written atomically.

  headerWord(field: number): number {
    return Atomics.load(this.#u32, field / 4);
  }

  setHeaderWord(field: number, value: number): void {
    Atomics.store(this.#u32, field / 4, value);
  }

  /** Add one to a u32 header field (wrapping); returns the value before. */
  addHeaderWord(field: number): number {
    return Atomics.add(this.#u32, field / 4, 1);
  }

  /** Compare-and-swap a u32 header field; returns the value found. */
  swapHeaderWord(field: number, expected: number, value: number): number {
    return Atomics.compareExchange(this.#u32, field / 4, expected, value);
  }

  /** Whether some process found this file pulled from its path and retired it. */
  get retired(): boolean {
    return (this.headerWord(H_FLAGS) & FLAG_RETIRED) !== 0;
  }

  /** Set the retired flag; every process that writes a key afterwards can tell. */
  markRetired(): void {
    Atomics.or(this.#u32, H_FLAGS / 4, FLAG_RETIRED);
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

  /**
   * Whether records this file counts as made have lost their contents: the
   * last one has an all-zero digest, which a made record never has (it is
   * a SHA-256). So it reads after a truncation to the header (or into the
   * records) followed by an extension, the file's size, header and inode
   * all as before (issue 27 item 1). Records are made in order and a
   * creation checks this first, so the last record is the one to look at.
   */
  lostRecords(): boolean {
    const count = Math.min(this.headerWord(H_RECORD_COUNT), this.header.capacity);
    return count > 0 && this.recordLost(count - 1);
  }

  /**
   * Whether `record` has lost its contents (see {@link lostRecords}): its
   * digest starts with eight bytes of zeros, or with the word every 64 bits
   * of a page the fault handler substituted hold (in this mapping only).
   */
  recordLost(record: number): boolean {
    const start = this.recordBytes(record, this.#digestOffset, 8);
    return start.equals(ZERO_WORD_BYTES) || start.equals(ABSENT_WORD_BYTES);
  }

  /** The random number written in the header when the file was made (0 in a header that lost it). */
  get nonce(): number {
    return this.headerWord(H_NONCE) >>> 0;
  }

  /** Whether the header's nonce is no longer the one this file had when it was mapped: another file's copy is here. */
  get overwritten(): boolean {
    return this.nonce !== this.#nonceAtMap;
  }

  /**
   * Add one to the file's liveness counter (H_LIVENESS), and say whether it
   * went back since this process last did: an older copy of the file was
   * written over it in place (`cp`, `dd`, `rsync --inplace` of a backup).
   * Format 1 has no such counter: never.
   */
  wentBack(): boolean {
    if (this.legacy) return false;
    const now = (this.addHeaderWord(H_LIVENESS) + 1) >>> 0;
    const seen = this.#livenessSeen;
    this.#livenessSeen = now;
    // Compared as a difference, so that the counter may wrap.
    return seen !== undefined && ((now - seen) | 0) <= 0;
  }

  /** Bump the notification sequence and wake every watcher thread, in every process (only if one sleeps). */
  wakeWatchers(): void {
    this.#signal(H_NOTIFY_SEQ, H_NOTIFY_SLEEPERS);
  }

  /** Whether a relay ever ran on this file (its records are then marked dirty when made). */
  get relayed(): boolean {
    return this.headerWord(H_RELAY_TERM) !== 0;
  }

  /** Tell the host's relay that `record` changed: its bit in the dirty map, and a wake-up if the relay sleeps. */
  relayChanged(record: number): void {
    this.markDirty(record);
    this.#signal(H_RELAY_SEQ, H_RELAY_SLEEPERS);
  }

  /**
   * Add one to the futex word at `seq` and wake its waiters, unless none sleeps. A waiter adds itself to
   * `sleepers` before it looks at `seq` and waits, so that either it sees this change or this sees it
   * (both are sequentially consistent). An addon without sleeper counts is always woken.
   */
  #signal(seq: number, sleepers: number): void {
    Atomics.add(this.#u32, seq / 4, 1);
    // Format 1's watchers (processes of generation-sync 0.1) do not count themselves: always wake them.
    if (this.legacy || !this.addon.capabilities.sleepers || Atomics.load(this.#u32, sleepers / 4) !== 0) this.addon.wake(this.buffer, seq);
  }

  // The dirty map (format 2): one bit per record, set when a relayed key changed, taken by the relay.

  /** How many 32-bit words the dirty map has. */
  get dirtyWords(): number {
    return Math.ceil(this.header.capacity / DIRTY_BITS_PER_WORD);
  }

  markDirty(record: number): void {
    Atomics.or(this.#u32, this.header.dirtyOffset / 4 + Math.floor(record / DIRTY_BITS_PER_WORD), 1 << record % DIRTY_BITS_PER_WORD);
  }

  /** Take (read and clear) word `index` of the dirty map: bit b means record index * 32 + b changed. */
  takeDirty(index: number): number {
    return Atomics.exchange(this.#u32, this.header.dirtyOffset / 4 + index, 0) >>> 0;
  }

  // Records.

  /** Records in use, checked against the capacity. */
  recordCount(): number {
    const count = this.headerWord(H_RECORD_COUNT);
    if (count > this.header.capacity) throw this.corrupt(`the record count is ${count}, above the capacity of ${this.header.capacity}`);
    return count;
  }

  /** Index of the generation word of `record` in {@link MappedFile.gens}. */
  wordIndex(record: number): number {
    return (this.#offset(record, R_GENERATION)) / 8;
  }

  recordWord(record: number, field: number): number {
    return this.#u32[this.#offset(record, field) / 4] ?? 0;
  }

  setRecordWord(record: number, field: number, value: number): void {
    this.#u32[this.#offset(record, field) / 4] = value;
  }

  recordTime(record: number, field: number): number {
    return this.#f64[this.#offset(record, field) / 8] ?? 0;
  }

  setRecordTime(record: number, field: number, value: number): void {
    this.#f64[this.#offset(record, field) / 8] = value;
  }

  /** A writable view of `length` bytes of `record` at `field`. */
  recordBytes(record: number, field: number, length: number): Buffer {
    const start = this.#offset(record, field);
    return this.#bytes.subarray(start, start + length);
  }

  /** Zero the whole of `record`. */
  wipeRecord(record: number): void {
    this.recordBytes(record, 0, RECORD_SIZE).fill(0);
  }

  /** Record now as the last creation, re-creation or clear time of `record`. */
  stamp(record: number): void {
    this.setRecordTime(record, R_UPDATED_AT, Date.now());
  }

  /** The identity a record holds (for a long key, its label is only the inline bytes). */
  identityAt(record: number): KeyIdentity {
    const length = Math.min(this.recordWord(record, R_KEY_LENGTH), 2 ** 31);
    const digest = Buffer.from(this.recordBytes(record, this.#digestOffset, this.#digestBytes));
    const inline = Buffer.from(this.recordBytes(record, R_KEY, Math.min(length, INLINE_KEY_BYTES)));
    return { label: inline.toString('utf8'), length, digest, inline, tag: digest.readUInt32LE(0) };
  }

  /** Every record, in creation order. */
  records(): RecordView[] {
    const views: RecordView[] = [];
    const count = this.recordCount();
    for (let record = 0; record < count; record++) {
      const keyLength = this.recordWord(record, R_KEY_LENGTH);
      views.push({
        key: this.recordBytes(record, R_KEY, Math.min(keyLength, INLINE_KEY_BYTES)).toString('utf8'),
        keyLength,
        word: Atomics.load(this.gens, this.wordIndex(record)),
        createdAt: this.recordTime(record, R_CREATED_AT),
        updatedAt: this.recordTime(record, R_UPDATED_AT),
      });
    }
    return views;
  }

  // The index.

  /** Search the index without a lock. Returns the record number, or -1 when the key is not published. */
  find(identity: KeyIdentity): number {
    const { capacity } = this.header;
    const { ref } = this.probe(identity.tag, (candidate, slot) => {
      if (candidate > capacity) throw this.corrupt(`an index entry names record ${candidate - 1} of ${capacity}`);
      return this.slotTag(slot) === identity.tag && this.#holds(candidate - 1, identity);
    });
    return ref - 1; // -1 when it stopped at an empty entry or went round the table
  }

  /** Whether the index publishes `record` (under the tag its digest gives). */
  isPublished(record: number): boolean {
    const tag = this.recordBytes(record, this.#digestOffset, 4).readUInt32LE(0);
    return this.probe(tag, (ref) => ref === record + 1).ref === record + 1;
  }

  /**
   * The one probe loop of the index (linear probing from the tag's home
   * position): visit each published entry until `stop` says so, or until an
   * empty entry, past which no key of this tag can be.
   */
  probe(tag: number, stop: (ref: number, slot: number) => boolean): ProbeStop {
    const { tableSize } = this.header;
    const mask = tableSize - 1;
    let slot = tag & mask;
    for (let probes = 0; probes < tableSize; probes++) {
      const ref = Atomics.load(this.#u32, this.#slotWord(slot));
      if (ref === 0 || stop(ref, slot)) return { slot, ref };
      slot = (slot + 1) & mask;
    }
    return { slot: -1, ref: 0 };
  }

  slotTag(slot: number): number {
    return this.#u32[this.#slotWord(slot) + 1] ?? 0;
  }

  setSlotTag(slot: number, tag: number): void {
    this.#u32[this.#slotWord(slot) + 1] = tag;
  }

  /** Publish `record` at `slot`: the last write of a key's creation, after which readers find it. */
  publishSlot(slot: number, record: number): void {
    Atomics.store(this.#u32, this.#slotWord(slot), record + 1);
  }

  // Kernel locks on bytes of the file (held by this open file description, released if the process dies).

  /** Take the lock on the byte at `offset`, waiting up to the lock timeout; false if it did not come free. */
  lock(offset: number, exclusive: boolean): boolean {
    return retryUntil(this.lockTimeoutMs, () => (this.addon.tryLock(this.fd, offset, exclusive) ? true : undefined)) ?? false;
  }

  unlock(offset: number): void {
    this.addon.unlock(this.fd, offset);
  }

  /** Whether another open file description holds a lock on the byte at `offset`. */
  lockedByOthers(offset: number): boolean {
    return this.addon.lockedByOthers(this.fd, offset);
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

  #offset(record: number, field: number): number {
    return this.header.recordsOffset + record * RECORD_SIZE + field;
  }

  /** Index in #u32 of the `ref` word of index entry `slot` (its tag is the next word). */
  #slotWord(slot: number): number {
    return this.header.indexOffset / 4 + slot * 2;
  }

  #holds(record: number, identity: KeyIdentity): boolean {
    return (
      this.recordWord(record, R_KEY_LENGTH) === identity.length &&
      this.recordBytes(record, this.#digestOffset, this.#digestBytes).equals(identity.digest.subarray(0, this.#digestBytes)) &&
      this.recordBytes(record, R_KEY, identity.inline.length).equals(identity.inline)
    );
  }
}

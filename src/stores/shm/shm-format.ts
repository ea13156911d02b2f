/**
 * The on-disk layout of a shared-memory store file (format version 2).
 *
 * ```
 * [0, 4096)              header: identity, layout, then mutable counters
 * [4096, index end)      index: tableSize entries of { u32 ref, u32 tag }
 * [dirty, dirty end)     dirty map: one bit per record, set when a relayed key changes (see RELAYED)
 * [records, file end)    records: capacity records of RECORD_SIZE bytes
 * ```
 *
 * The index is an open-addressing hash table with linear probing, kept at
 * most half full so that a search for a missing key always ends at an empty
 * entry. An entry's `ref` is a record number plus one (0 = empty) and is
 * written last, atomically, once its record is complete: readers never see
 * a half-made key. Records are claimed densely, in order, under the
 * creation lock, and are never freed: a cleared key keeps its record with
 * the ABSENT bit set on its generation, which is how a re-created key
 * continues above every value it had before. A watched key has the WATCHED
 * bit set as well, and a key whose next change a host's relay waits for the
 * RELAYED bit.
 *
 * All multi-byte fields are in the machine's byte order, which the header
 * records; every 64-bit field is 8-byte aligned.
 *
 * Format 1 (generation-sync 0.1) had no dirty map and 32-byte digests; a
 * file of format 1 is read only to carry its keys into a file of format 2
 * (see `retirement.ts`).
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';

import { corruptFileError, foreignFileError, StoreFormatError } from '../../store/errors';

/** First eight bytes of every store file. */
export const MAGIC = Buffer.from('GSYNCSHM', 'latin1');
/** The format this code writes and the newest it reads. */
export const FORMAT_VERSION = 2;
/** The format of generation-sync 0.1: read only to carry its keys over into a file of the current format. */
export const LEGACY_FORMAT_VERSION = 1;
/** Written as a native u32; reads back differently on a machine of the other byte order. */
export const BYTE_ORDER_MARK = 0x01020304;
const SWAPPED_BYTE_ORDER_MARK = 0x04030201;

export const HEADER_SIZE = 4096;
export const RECORD_SIZE = 320;
export const INDEX_ENTRY_SIZE = 8;
/** Records per 32-bit word of the dirty map. */
export const DIRTY_BITS_PER_WORD = 32;
/** Key bytes kept inline in a record; longer keys are identified by their SHA-256 and length. */
export const INLINE_KEY_BYTES = 256;
const PAGE_SIZE = 4096;
const CACHE_LINE = 64;
const MIN_TABLE_SIZE = 8;

/** Keys a store may hold, unless `capacity` says otherwise. */
export const DEFAULT_CAPACITY = 4096;
export const MAX_CAPACITY = 1 << 22;

// Header fields (byte offsets). Fields before IMMUTABLE_HEADER_END never
// change after creation and are covered by the checksum.
export const H_MAGIC = 0;
export const H_VERSION = 8;
export const H_BYTE_ORDER = 12;
export const H_HEADER_SIZE = 16;
export const H_RECORD_SIZE = 20;
export const H_CAPACITY = 24;
export const H_TABLE_SIZE = 28;
export const H_INDEX_OFFSET = 32;
export const H_RECORDS_OFFSET = 36;
export const H_FILE_SIZE = 40;
export const H_CREATED_AT = 48;
const IMMUTABLE_HEADER_END = 56;
export const H_CHECKSUM = 56;
const CHECKSUM_BYTES = 8;
/** Records in use (u32, atomic). Every record below it is published in the index. */
export const H_RECORD_COUNT = 64;
/** Record number + 1 of a creation in progress (u32, atomic); 0 when none. */
export const H_PENDING_RECORD = 68;
/**
 * Notification sequence (u32, atomic; a futex word): a process that changes
 * a watched key adds one to it and wakes the processes waiting on it.
 */
export const H_NOTIFY_SEQ = 72;
/** Flags (u32, atomic); see FLAG_RETIRED. */
export const H_FLAGS = 76;
/**
 * This file was unlinked, renamed or replaced while in use: a process that
 * noticed poisoned every key in it and carried its generations over to the
 * file now at the path. Whoever sees the flag moves there too.
 */
export const FLAG_RETIRED = 1;
/** Notifier threads sleeping on H_NOTIFY_SEQ (u32, atomic): a change wakes them only when there are any. */
export const H_NOTIFY_SLEEPERS = 80;
/** The relay's wake-up sequence (u32, atomic; a futex word): added to when a relayed key changes. */
export const H_RELAY_SEQ = 84;
/** Relay threads sleeping on H_RELAY_SEQ (u32, atomic): a change wakes the relay only when it sleeps. */
export const H_RELAY_SLEEPERS = 88;
/**
 * The term of the host's relay (u32, atomic): 0 while no relay ever ran on
 * this file; each relay that takes over adds one, and writes only while the
 * term is still its own, so that a relay that lost its place stops at once.
 */
export const H_RELAY_TERM = 92;
/** The relay's heartbeat (u32, atomic): added to by the relay while it makes progress. */
export const H_RELAY_BEAT = 96;
/** A random number written when the file is made: which file this is, whatever its path and inode. */
export const H_NONCE = 100;
/**
 * Liveness (u32, atomic): each process using the file adds to it at each
 * background check, and remembers what it saw. Restoring an older copy of the
 * file in place brings it back: a process that finds it below what it saw
 * knows the file went back in time.
 */
export const H_LIVENESS = 104;
/**
 * The floor of every key created from now on (u64, atomic): above every
 * generation a key whose record was given back ever had.
 */
export const H_RECLAIM_FLOOR = 112;

/** Byte 0 of the file carries the key-creation lock (exclusive, OFD). */
export const CREATION_LOCK_BYTE = 0;
/**
 * A process watching record r holds a shared OFD lock on byte
 * WATCH_LOCK_BASE + r (past the end of the file; the kernel allows that),
 * so any process can ask whether a key still has watchers, and a watcher
 * that dies stops counting at once.
 */
export const WATCH_LOCK_BASE = 2 ** 32;

// Record fields (byte offsets within a record).
/** Generation (i64, atomic). */
export const R_GENERATION = 0;
/** Creation time, ms since the epoch (f64). */
export const R_CREATED_AT = 8;
/** Last creation, re-creation or clear, ms since the epoch (f64). */
export const R_UPDATED_AT = 16;
/** Key length in UTF-8 bytes (u32). */
export const R_KEY_LENGTH = 24;
/**
 * The value the key first held in this file, when it was created present
 * with a value below 2^32 (a seed in seconds); 0 otherwise (u32). A key
 * still at this value was never bumped, cleared or raised here: the relay
 * (src/stores/relay) takes that as "nothing changed on this host".
 */
export const R_FIRST_VALUE = 28;
/** When the key expires, ms since the epoch (f64); 0: never. */
export const R_EXPIRES_AT = 32;
/** The first DIGEST_BYTES bytes of the SHA-256 of the key's UTF-8 bytes. */
export const R_DIGEST = 40;
export const DIGEST_BYTES = 24;
/** First INLINE_KEY_BYTES bytes of the key. */
export const R_KEY = 64;

/** Format 1's record: a whole SHA-256 at byte 32, the key at 64, the other fields where format 2 has them. */
export const LEGACY_R_DIGEST = 32;
export const LEGACY_DIGEST_BYTES = 32;

/** Bit 62 of a generation word: the key is absent; the low bits keep the highest value it had. */
export const ABSENT = 1n << 62n;
/**
 * Bit 61 of a generation word: some process watches the key, so whoever
 * changes it must wake the watchers. Keeping the flag in the word costs the
 * hot path nothing: an increment that returns a flagged word simply leaves
 * its fast path.
 */
export const WATCHED = 1n << 61n;
/**
 * Bit 60 of a generation word: the host's relay waits to hear of the key's
 * next change. Unlike WATCHED it is used once: the first process to change
 * the key clears it, sets the record's bit in the dirty map and wakes the
 * relay (if it sleeps); later changes take the fast path until the relay has
 * forwarded the key and set the bit again.
 */
export const RELAYED = 1n << 60n;
/** Every flag of a generation word. */
export const FLAGS = ABSENT | WATCHED | RELAYED;
/** The value bits of a generation word. */
export const VALUE_MASK = RELAYED - 1n;

/** Where everything is in a store file of a given capacity. */
export interface Layout {
  readonly version: number;
  readonly capacity: number;
  readonly tableSize: number;
  readonly indexOffset: number;
  /** Where the dirty map starts (format 2; 0 in format 1, which has none). */
  readonly dirtyOffset: number;
  readonly recordsOffset: number;
  readonly fileSize: number;
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

export function layoutFor(capacity: number, version = FORMAT_VERSION): Layout {
  let tableSize = MIN_TABLE_SIZE;
  while (tableSize < capacity * 2) tableSize *= 2;
  const indexOffset = HEADER_SIZE;
  const indexEnd = alignUp(indexOffset + tableSize * INDEX_ENTRY_SIZE, CACHE_LINE);
  const dirtyOffset = version === LEGACY_FORMAT_VERSION ? 0 : indexEnd;
  const recordsOffset = version === LEGACY_FORMAT_VERSION ? indexEnd : alignUp(dirtyOffset + Math.ceil(capacity / DIRTY_BITS_PER_WORD) * 4, CACHE_LINE);
  const fileSize = alignUp(recordsOffset + capacity * RECORD_SIZE, PAGE_SIZE);
  return { version, capacity, tableSize, indexOffset, dirtyOffset, recordsOffset, fileSize };
}

function checksum(header: Buffer): Buffer {
  return createHash('sha256').update(header.subarray(0, IMMUTABLE_HEADER_END)).digest().subarray(0, CHECKSUM_BYTES);
}

/** A fresh header for a new store file (of the current format). */
export function encodeHeader(layout: Layout, createdAt: number, nonce: number): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(header, H_MAGIC);
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const native = isLittleEndian();
  view.setUint32(H_VERSION, FORMAT_VERSION, native);
  view.setUint32(H_BYTE_ORDER, BYTE_ORDER_MARK, native);
  view.setUint32(H_HEADER_SIZE, HEADER_SIZE, native);
  view.setUint32(H_RECORD_SIZE, RECORD_SIZE, native);
  view.setUint32(H_CAPACITY, layout.capacity, native);
  view.setUint32(H_TABLE_SIZE, layout.tableSize, native);
  view.setUint32(H_INDEX_OFFSET, layout.indexOffset, native);
  view.setUint32(H_RECORDS_OFFSET, layout.recordsOffset, native);
  view.setFloat64(H_FILE_SIZE, layout.fileSize, native);
  view.setFloat64(H_CREATED_AT, createdAt, native);
  checksum(header).copy(header, H_CHECKSUM);
  view.setUint32(H_NONCE, nonce >>> 0, native);
  return header;
}

/** What a valid header says. */
export interface HeaderInfo extends Layout {
  readonly createdAt: number;
}

/**
 * Validate the first bytes of a file (`header`, up to HEADER_SIZE of them)
 * against the file's real size. Throws {@link StoreFormatError}: foreign
 * for a file that is not a store, unsupported for a newer format, corrupt
 * for anything inconsistent. Never trusts a field before checking it.
 */
export function decodeHeader(header: Buffer, actualFileSize: number, path: string): HeaderInfo {
  if (header.length < MAGIC.length || !header.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw foreignFileError(path, actualFileSize === 0 ? 'an empty file' : 'not a generation-sync shared-memory store');
  }
  const corrupt = (why: string): StoreFormatError => corruptFileError(path, 'store', why);
  if (header.length < HEADER_SIZE) throw corrupt(`the file is ${actualFileSize} bytes, shorter than its header`);

  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const native = isLittleEndian();
  const byteOrder = view.getUint32(H_BYTE_ORDER, native);
  if (byteOrder === SWAPPED_BYTE_ORDER_MARK) {
    throw new StoreFormatError(
      'ERR_GENSYNC_FOREIGN_FILE',
      `${path} was written by a machine of the other byte order and cannot be shared with this one.`,
      { path },
    );
  }
  const version = view.getUint32(H_VERSION, native);
  if (version > FORMAT_VERSION) {
    throw new StoreFormatError(
      'ERR_GENSYNC_UNSUPPORTED_VERSION',
      `${path} has store format ${version}, newer than format ${FORMAT_VERSION} that this version of ` +
        'generation-sync understands. Upgrade generation-sync in this application, or use another path.',
      { path },
    );
  }
  if (version !== FORMAT_VERSION && version !== LEGACY_FORMAT_VERSION) throw corrupt(`format version ${version}`);
  if (byteOrder !== BYTE_ORDER_MARK) throw corrupt('bad byte-order mark');
  if (!checksum(header).equals(header.subarray(H_CHECKSUM, H_CHECKSUM + CHECKSUM_BYTES))) {
    throw corrupt('header checksum mismatch');
  }

  const capacity = view.getUint32(H_CAPACITY, native);
  if (capacity < 1 || capacity > MAX_CAPACITY) throw corrupt(`capacity ${capacity}`);
  const expected = layoutFor(capacity, version);
  const fields: Array<[string, number, number]> = [
    ['header size', view.getUint32(H_HEADER_SIZE, native), HEADER_SIZE],
    ['record size', view.getUint32(H_RECORD_SIZE, native), RECORD_SIZE],
    ['table size', view.getUint32(H_TABLE_SIZE, native), expected.tableSize],
    ['index offset', view.getUint32(H_INDEX_OFFSET, native), expected.indexOffset],
    ['records offset', view.getUint32(H_RECORDS_OFFSET, native), expected.recordsOffset],
    ['recorded file size', view.getFloat64(H_FILE_SIZE, native), expected.fileSize],
    ['file size', actualFileSize, expected.fileSize],
  ];
  for (const [name, actual, wanted] of fields) {
    if (actual !== wanted) throw corrupt(`${name} is ${actual}, expected ${wanted}`);
  }
  const recordCount = view.getUint32(H_RECORD_COUNT, native);
  const pending = view.getUint32(H_PENDING_RECORD, native);
  if (recordCount > capacity) throw corrupt(`record count ${recordCount} exceeds capacity ${capacity}`);
  if (pending > capacity) throw corrupt(`pending record ${pending} exceeds capacity ${capacity}`);

  return { ...expected, createdAt: view.getFloat64(H_CREATED_AT, native) };
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

/**
 * Opening a store file: create it complete under a temporary name and
 * publish it without replacing anything, or open the one at the path and
 * check it (owner, mode, links, header) before mapping it.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { randomInt } from 'node:crypto';
import { closeSync, fchmodSync, fdatasyncSync, fstatSync, openSync, readSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';

import { StoreError } from '../../store/errors';
import { checkDirectoryChain, checkStoreFile, errnoCode, ioError, OPEN_EXISTING, OPEN_NEW, openFailure, publishWithoutReplacing, temporaryName } from '../../system/filesystem';
import { pause } from '../../system/pause';
import { MappedFile } from './mapped-file';
import type { NativeAddon } from './native';
import { decodeHeader, encodeHeader, HEADER_SIZE, layoutFor } from './shm-format';

/** Attempts to open a path whose file another process is creating or replacing at that moment. */
const OPEN_ATTEMPTS = 5;
const OPEN_RETRY_PAUSE_MS = 10;

/** What open() checked once, kept for reopening the path later. */
export interface OpenSettings {
  readonly capacity: number;
  readonly mode: number;
  readonly lockTimeoutMs: number;
}

/**
 * Open, check and map the store file at `path`, creating it if there is none. Retired or not, and of format 1
 * or not: see `retirement.ts`, which replaces both.
 */
export function openStoreFile(path: string, settings: OpenSettings, addon: NativeAddon): MappedFile {
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
      return new MappedFile(path, fd, header, buffer, stats.ino, stats.dev, addon, settings.lockTimeoutMs);
    } catch (error) {
      closeSync(fd);
      if (error instanceof StoreError) throw error;
      throw ioError(error, 'open the store', path);
    }
  }
}

/** Write a complete, empty store file at `file`, which must not exist. */
export function buildStoreFile(file: string, settings: OpenSettings, addon: NativeAddon): void {
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
    writeSync(fd, encodeHeader(layout, Date.now(), randomInt(1, 2 ** 32)), 0, HEADER_SIZE, 0);
    fdatasyncSync(fd);
  } catch (error) {
    throw ioError(error, 'create the store', file);
  } finally {
    closeSync(fd);
  }
}

export function removeQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // Already renamed into place, or never made: nothing left to remove.
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

function readHeader(fd: number, stats: Stats, file: string): Buffer {
  const header = Buffer.alloc(Math.min(HEADER_SIZE, Math.max(stats.size, 0)));
  try {
    const read = readSync(fd, header, 0, header.length, 0);
    return header.subarray(0, read);
  } catch (error) {
    throw ioError(error, 'read the header of', file);
  }
}

/**
 * Watching keys of the file store. An `fs.watch` on the store's directory
 * reports replacements of the file at once; a check every 500 ms catches
 * anything it misses (some filesystems and containers do not deliver
 * inotify events). Neither keeps the process alive.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

import type { StoreClosedError } from '../../store/errors';
import type { GenerationListener } from '../../store/store';
import { WatchList, type WatchedKey } from '../../store/watch';

/** How often watchers check the file besides what `fs.watch` reports. */
export const WATCH_SAFETY_POLL_MS = 500;

export class FileWatching {
  readonly #watched = new WatchList<string>();
  #fsWatcher: FSWatcher | undefined;
  #safetyPoll: NodeJS.Timeout | undefined;

  constructor(
    private readonly path: string,
    /** The live generation of a key; throws while the file cannot be read. */
    private readonly read: (key: string) => number | null,
    private readonly isClosed: () => boolean,
  ) {}

  /** See {@link FileStore.watch}; `key` is checked. */
  watch(key: string, since: number | null | undefined, listener: GenerationListener, onClose?: (error: StoreClosedError) => void): () => void {
    const watched = this.#watched.get(key) ?? this.#startWatching(key);
    const { behind, remove } = this.#watched.register(watched, since, this.read(key), listener, onClose);
    if (behind) queueMicrotask(() => this.#deliver());
    return () => {
      if (remove() && this.#watched.size === 0) this.#stopWatching();
    };
  }

  /** The store closed: stop watching and tell every listener with an `onClose`. */
  close(error: StoreClosedError): void {
    this.#stopWatching();
    this.#watched.close(error);
  }

  #startWatching(key: string): WatchedKey<string> {
    const watched = this.#watched.open(key, key);
    if (this.#safetyPoll === undefined) {
      const check = (): void => this.#deliver();
      this.#safetyPoll = setInterval(check, WATCH_SAFETY_POLL_MS);
      this.#safetyPoll.unref();
      try {
        const name = basename(this.path);
        this.#fsWatcher = watch(dirname(this.path), { persistent: false }, (_event, filename) => {
          if (filename === null || filename === name) check();
        });
        // The directory may vanish or the watch limit be reached: the safety poll carries on.
        this.#fsWatcher.on('error', () => this.#closeFsWatcher());
      } catch {
        this.#fsWatcher = undefined;
      }
    }
    return watched;
  }

  #stopWatching(): void {
    clearInterval(this.#safetyPoll);
    this.#safetyPoll = undefined;
    this.#closeFsWatcher();
  }

  #closeFsWatcher(): void {
    this.#fsWatcher?.close();
    this.#fsWatcher = undefined;
  }

  /** Give every listener whose key changed the current generation. */
  #deliver(): void {
    if (this.isClosed()) return;
    this.#watched.deliverAll((watched) => {
      try {
        return this.read(watched.key);
      } catch {
        return undefined; // the file is unreadable just now: the synchronizers report it
      }
    });
  }
}

// Keyv with whole-namespace invalidation across processes: the
// generational-key pattern, with the generation kept in generation-sync
// instead of in the cache itself. (cache-manager is not wrapped here: it keys
// its stores itself, so the prefix would have to go into every key you pass.)
//
// Every key is stored under `<generation>:<key>`. Invalidating bumps the
// generation, so every process reads from a fresh keyspace at once; entries
// of older generations are never read again and leave by their TTL (give them
// one) or by the backend's eviction. The generation is taken before a value is
// loaded, so a change made during the load files that value under the old,
// dead generation, never as current.
//
//   const pages = new GenerationKeyv('pages', { ttl: 3_600_000 });   // any Keyv options (store: redis, sqlite, ...)
//   const html = await pages.getOrLoad(url, () => render(url));
//   pages.invalidate();                                              // every process, every key of "pages"
import { Keyv } from 'keyv';
import { GenerationSynchronizer } from 'generation-sync';

export class GenerationKeyv {
  #sync;
  /** The Keyv underneath, for anything this wrapper does not cover. */
  keyv;

  /** `options` are Keyv's, plus `store` for the synchronizer (generation-sync's, not Keyv's: name it `syncStore`). */
  constructor(name, { syncStore, ...keyvOptions } = {}) {
    this.#sync = new GenerationSynchronizer(['keyv', name], syncStore === undefined ? {} : { store: syncStore });
    this.keyv = new Keyv({ namespace: `gensync-${name}`, ...keyvOptions });
  }

  /** The current generation's prefix (one atomic load when nothing changed). */
  #prefix() {
    if (this.#sync.isExpired()) this.#sync.refresh();
    return `${this.#sync.syncGen}:`;
  }

  get(key) {
    return this.keyv.get(this.#prefix() + key);
  }

  /** Store `value` as current. Prefer getOrLoad() when the value is loaded: it files a value by the generation it was loaded in. */
  set(key, value, ttl) {
    return this.keyv.set(this.#prefix() + key, value, ttl);
  }

  /** The cached value, or what `load()` gives, cached under the generation taken before loading. */
  async getOrLoad(key, load, ttl) {
    const prefix = this.#prefix();
    const cached = await this.keyv.get(prefix + key);
    if (cached !== undefined) return cached;
    const value = await load();
    await this.keyv.set(prefix + key, value, ttl);
    return value;
  }

  /** Every key, in every process, reads as absent from now on. Returns whether the others were told. */
  invalidate() {
    return this.#sync.markUpdated();
  }
}

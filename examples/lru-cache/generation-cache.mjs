// An lru-cache whose entries are dropped when a generation changes in any
// process on the host: the most common way Node services cache, made safe to
// run in many processes.
//
// Each entry is tagged with the generation of its namespace taken *before* its
// value was loaded. A lookup first asks the namespace's synchronizer whether
// anything changed (one atomic load); if so, it takes the new generation and
// every older entry of that namespace becomes a miss (lru-cache evicts them in
// time). A change made while a value loads therefore never gets that value
// cached as current.
//
//   const products = new GenerationCache({ max: 10_000 });
//   await products.get('catalog', id, () => db.product(id));   // cached per namespace
//   await db.saveProduct(id, data); products.invalidate('catalog'); // every process drops "catalog"
//
// One namespace (the whole cache) or many (a tenant, a table) are the same code:
// pass one name, or one per group of entries that change together.
import { LRUCache } from 'lru-cache';
import { GenerationSynchronizer } from 'generation-sync';

export class GenerationCache {
  #cache;
  #synchronizers = new Map();
  #store;

  /** `options` are lru-cache's (`max` is required there), plus `store` for the synchronizers. */
  constructor({ store, ...lruOptions }) {
    this.#cache = new LRUCache(lruOptions);
    this.#store = store;
  }

  #synchronizer(namespace) {
    let sync = this.#synchronizers.get(namespace);
    if (sync === undefined) {
      sync = new GenerationSynchronizer(['lru-cache', namespace], this.#store === undefined ? {} : { store: this.#store });
      this.#synchronizers.set(namespace, sync);
    }
    if (sync.isExpired()) sync.refresh(); // older entries of this namespace are misses from now on
    return sync;
  }

  /** The cached value of `key` in `namespace`, or what `load()` gives (then cached). */
  async get(namespace, key, load) {
    const sync = this.#synchronizer(namespace);
    const generation = sync.syncGen;
    const cacheKey = `${namespace}\u0000${key}`;
    const hit = this.#cache.get(cacheKey);
    if (hit !== undefined && hit.generation === generation && generation !== null) return hit.value;
    const value = await load();
    // Tagged with the generation taken before loading: if the namespace changed meanwhile, the next get() misses.
    if (generation !== null) this.#cache.set(cacheKey, { generation, value });
    return value;
  }

  /** Drop every entry of `namespace`, here and in every other process. Returns whether the others were told. */
  invalidate(namespace) {
    return this.#synchronizer(namespace).markUpdated();
  }

  /** How many entries the cache holds (stale ones included, until they are evicted or looked up). */
  get size() {
    return this.#cache.size;
  }
}

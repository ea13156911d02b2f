// The test-side view of redis-server: the class, and the one server that
// vitest's global setup starts for the whole run.
import { inject } from 'vitest';

export { RedisServer } from './support/redis-server.cjs';

/**
 * The server that vitest's global setup started for the whole run
 * (test/support/global-setup.ts), for tests that only need a server to
 * exist. Tests that kill or restart a server start their own.
 */
export function sharedRedisUrl(): string {
  const url = inject('redisUrl');
  if (typeof url !== 'string') throw new Error('no shared redis-server: is test/support/global-setup.ts configured?');
  return url;
}

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

// Vitest global setup: one redis-server for the whole run, on a free
// loopback port with no persistence, stopped when the run ends.
import { RedisServer } from './redis-server.cjs';

export default async function setup(project: { provide(key: 'redisUrl', value: string): void }): Promise<() => Promise<void>> {
  const server = await RedisServer.start();
  project.provide('redisUrl', server.url);
  return () => server.stop();
}

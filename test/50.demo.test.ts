// `npm start`: the cluster demo runs on the default store, every worker
// notices every change, and it ends by itself.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

describe('the npm start demo', () => {
  it('shows every worker noticing every change, then ends by itself', async () => {
    const dir = tempDir();
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [join(ROOT, 'examples', 'demo.mjs'), '--seconds', '2', '--interval', '300'],
      { env: { ...process.env, GENERATION_SYNC_DIR: dir }, timeout: 30_000 },
    );
    expect(stdout).toContain(`share ${join(dir, 'generations.shm')} (shm store)`);
    const updates = stdout.match(/\[primary\] +saved settings v(\d+)/g) ?? [];
    expect(updates.length).toBeGreaterThanOrEqual(3);
    const reloads = stdout.match(/\[worker \d+\] noticed v\d+ after [\d.]+ ms, reloaded in [\d.]+ ms, refreshed to generation \d+/g) ?? [];
    expect(reloads).toHaveLength(4 * updates.length);
    expect(stdout).toMatch(new RegExp(`summary: ${updates.length} updates, ${4 * updates.length} reloads across 4 workers \\(every worker saw every update\\)`));
  });
});

import { availableParallelism } from 'node:os';

import { defineConfig } from 'vitest/config';

// Bounds stretch only under emulation: GENSYNC_TIME_SCALE, checked and explained in test/support/time-scale.ts (which
// the tests import; importing it here would load a TypeScript module through Vite's CommonJS config loader).
const scale = Number(process.env.GENSYNC_TIME_SCALE ?? 1) || 1;

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Test files run two at a time (never more than the cores): measured on this 2-core machine at quick effort,
    // one at a time took 6 min 16 s, two 2 min 34 s, three 2 min 11 s with both cores saturated (the multi-process
    // tests fork their own workers, so a third file mostly competes with the first two).
    fileParallelism: true,
    maxWorkers: Math.max(1, Math.min(2, availableParallelism())),
    testTimeout: 120_000 * scale,
    hookTimeout: 60_000 * scale,
    pool: 'forks',
  },
});

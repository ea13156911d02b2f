import { defineConfig } from 'vitest/config';

// Bounds stretch only under emulation: GENSYNC_TIME_SCALE, checked and explained in test/support/time-scale.ts (which
// the tests import; importing it here would load a TypeScript module through Vite's CommonJS config loader).
const scale = Number(process.env.GENSYNC_TIME_SCALE ?? 1) || 1;

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Multi-process tests fork their own workers; running test files one at
    // a time keeps them from starving each other on small CI machines.
    fileParallelism: false,
    testTimeout: 120_000 * scale,
    hookTimeout: 60_000 * scale,
    pool: 'forks',
  },
});

import { defineConfig } from 'vitest/config';

import { scaled } from './test/support/time-scale.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Multi-process tests fork their own workers; running test files one at
    // a time keeps them from starving each other on small CI machines.
    fileParallelism: false,
    // Stretched only under emulation (GENSYNC_TIME_SCALE, see test/support/time-scale.ts).
    testTimeout: scaled(120_000),
    hookTimeout: scaled(60_000),
    pool: 'forks',
  },
});

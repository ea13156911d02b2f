// How hard this test run tries: the one place that sets how many times a
// test repeats what it proves (teardown rounds, soak length, the largest
// counts). GENSYNC_EFFORT=quick (the default, `npm test`) runs every test
// file and every behaviour with fewer repetitions; GENSYNC_EFFORT=full
// (`npm run test:full`, and .ci/run's full stage) runs them at the counts the
// closing notes quote. A test never reads the variable itself: it takes its
// count from here, so that no test is ever edited to run shorter.
//
// Time bounds are a separate matter (test/support/time-scale.ts): they only
// stretch under emulation and never change what a test proves.
const raw = process.env.GENSYNC_EFFORT ?? 'quick';
if (raw !== 'quick' && raw !== 'full') {
  throw new Error(`GENSYNC_EFFORT must be "quick" (npm test) or "full" (npm run test:full), not ${JSON.stringify(raw)}`);
}

/** Which effort this run is at. */
export const EFFORT: 'quick' | 'full' = raw;

const full = EFFORT === 'full';

/** Every repetition count the suites take, by what it counts. */
export const effort = {
  /** Each way a watching process or Worker can end, tried this many times (55.watch). */
  teardownRounds: full ? 100 : 10,
  /** Length of each soak and stress run, in milliseconds: the shm file stress, the file-store soak, the Redis soak. */
  soakMs: full ? 120_000 : 5_000,
  /** Per process, increments of one key in the exact-total test on the shared-memory store (40.multiprocess). */
  shmHammer: full ? 250_000 : 50_000,
  /** Per process, increments of one key in the exact-total test on the file and Redis stores. */
  storeHammer: full ? 2_000 : 300,
  /** Rapid bumps a watcher must end on the last of (55.watch). */
  watchBurst: full ? 10_000 : 1_000,
  /** Rounds of 32 processes racing to create one key (90.faults). */
  creationRaceRounds: full ? 3 : 1,
  /** Relay SIGKILLs mid-stream (47.relay). */
  relayKills: full ? 10 : 3,
  /** Rounds of each way a relay is replaced while another host changes a key (49.relay-recovery). */
  takeoverRounds: full ? 5 : 2,
  /** Keys the host holds in the takeover test, which its next relay reads again (49.relay-recovery). */
  takeoverKeys: full ? 40_000 : 10_000,
  /** Keys a host creates and bumps at once, which the other host holds (49.relay-recovery). */
  relayBurstKeys: full ? 10_000 : 2_000,
  /** The relay soak: keys per host, keys of each burst of new ones (49.relay-recovery; its length is soakMs). */
  relaySoakKeys: full ? 5_000 : 500,
  relaySoakBurst: full ? 1_000 : 100,
} as const;

// How much slower than native this test run's machine is allowed to be.
//
// Bounds in the tests are not speed claims: they only make a broken test end,
// or check that a soak really did what it says (so many kills in so much
// time). Under qemu-user emulation (.ci/run's arm64 run) every process start
// and every instruction costs several times more, so .ci/run sets
// GENSYNC_TIME_SCALE for that run only; everywhere else it is 1 and every
// bound is exactly what it was.
const raw = process.env.GENSYNC_TIME_SCALE ?? '1';
const parsed = Number(raw);
if (!Number.isFinite(parsed) || parsed < 1 || parsed > 100) {
  throw new Error(`GENSYNC_TIME_SCALE must be a number from 1 to 100 (how many times slower than native this machine runs), not ${JSON.stringify(raw)}`);
}

/** 1 natively; more under emulation (set by .ci/run for the arm64 run). */
export const TIME_SCALE: number = parsed;

/** A bound in milliseconds, stretched for an emulated run. */
export function scaled(ms: number): number {
  return Math.round(ms * TIME_SCALE);
}

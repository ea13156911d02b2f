/**
 * A test-only way to kill this process at an exact step of a multi-step
 * operation, so that the tests can prove every interruption is survived.
 * Set `GENERATION_SYNC_TEST_KILL_AT=<operation>:<step>` (for example
 * `shm-create:5`) before the process starts; the process then sends itself
 * SIGKILL at that checkpoint. Without the variable, a checkpoint is one
 * comparison.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

/** The checkpoints of creating a key in the shared-memory store, in order. */
export const SHM_CREATE_STEPS = [
  'locked',
  'claimed',
  'zeroed',
  'stamped',
  'keyed',
  'seeded',
  'tagged',
  'published',
  'counted',
  'settled',
] as const;

/** The checkpoints of a FileStore write, in order (lock, write, release). */
export const FILE_WRITE_STEPS = [
  'lock-made',
  'owner-staged',
  'owner-linked',
  'read',
  'temp-opened',
  'temp-written',
  'temp-synced',
  'renamed',
  'owner-removed',
] as const;

type Operation = 'shm-create' | 'file-write';
type Step<O extends Operation> = O extends 'shm-create' ? (typeof SHM_CREATE_STEPS)[number] : (typeof FILE_WRITE_STEPS)[number];

const [killOperation, killIndex] = (process.env.GENERATION_SYNC_TEST_KILL_AT ?? '').split(':');
const killStep = Number(killIndex);

/** Mark reaching `step` of `operation`; dies here if the test asked for it. */
export function checkpoint<O extends Operation>(operation: O, step: Step<O>): void {
  if (killOperation !== operation) return;
  const steps: readonly string[] = operation === 'shm-create' ? SHM_CREATE_STEPS : FILE_WRITE_STEPS;
  if (steps.indexOf(step) + 1 === killStep) process.kill(process.pid, 'SIGKILL');
}

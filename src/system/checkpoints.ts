/**
 * Named steps inside multi-step operations, where a test can stop a process
 * to prove that every interruption is survived.
 *
 * The package itself never stops anything here and reads no environment
 * variable for it: a checkpoint calls the function stored under the global
 * symbol `generation-sync.checkpoint` if there is one, and does nothing
 * otherwise. Only code already running in the process can set that symbol
 * (the fault tests' fixture does, and then kills itself at the step it was
 * told). Not part of the public API: the package exports only what index.ts
 * names.
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

const HOOK = Symbol.for('generation-sync.checkpoint');

/** Mark reaching `step` of `operation` (calls the hook a test installed, if any). */
export function checkpoint<O extends Operation>(operation: O, step: Step<O>): void {
  const hook = (globalThis as { [HOOK]?: (operation: string, step: string) => void })[HOOK];
  if (hook !== undefined) hook(operation, step);
}

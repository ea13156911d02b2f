/**
 * Who holds a lock or owns a leftover file on this host, and whether that
 * holder is provably gone.
 *
 * A pid alone proves little: containers of one pod share a host name and a
 * volume but not their pids, a pid from before a reboot names nothing, a
 * pid is reused, and a `worker_threads` Worker that was terminated leaves
 * its process alive. So a holder is named by its pid, its PID namespace and
 * boot (where the pid means something), and on Linux by its thread and that
 * thread's start time. A holder is declared gone only where this process can
 * see it and sees it gone; anything else answers "not provably gone".
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';


/** What a record left by a holder says about it. */
export interface Holder {
  readonly pid: number;
  readonly host: string;
  /** The PID namespace (`/proc/self/ns/pid`); absent where the system does not say (not Linux). */
  readonly pidNamespace?: string | undefined;
  /** The boot (`/proc/sys/kernel/random/boot_id`); absent where the system does not say. */
  readonly boot?: string | undefined;
  /** The holder's thread id (Linux), which is the pid for a main thread. */
  readonly thread?: number | undefined;
  /** That thread's start time in clock ticks since boot, so that a reused thread id is told apart. */
  readonly threadStart?: string | undefined;
}

interface Scope {
  readonly pidNamespace: string | undefined;
  readonly boot: string | undefined;
}

let scope: Scope | undefined;
let tag: string | undefined;
let thread: { readonly thread: number; readonly threadStart: string } | null | undefined;

function readTrimmed(what: () => string): string | undefined {
  try {
    return what().trim();
  } catch {
    return undefined;
  }
}

/** This process's PID namespace and boot. */
export function processScope(): Scope {
  scope ??= {
    pidNamespace: readTrimmed(() => readlinkSync('/proc/self/ns/pid')),
    boot: readTrimmed(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')),
  };
  return scope;
}

/**
 * Eight hex digits naming this PID namespace and boot, for the names of
 * files a process leaves beside a store: a pid in such a name is only
 * evidence for a process with the same tag.
 */
export function scopeTag(): string {
  if (tag === undefined) {
    const { pidNamespace, boot } = processScope();
    tag = createHash('sha256').update(`${pidNamespace ?? ''}\n${boot ?? ''}`).digest('hex').slice(0, 8);
  }
  return tag;
}

/** The start time (clock ticks since boot) in a /proc `stat` line: field 22, counting the name as field 2. */
function startTime(statLine: string): string | undefined {
  return statLine.slice(statLine.lastIndexOf(')') + 2).split(' ')[19];
}

/** The calling thread's id and start time (Linux; each worker thread loads its own copy of this module). */
function currentThread(): { readonly thread: number; readonly threadStart: string } | undefined {
  if (thread === undefined) {
    try {
      const id = Number(readlinkSync('/proc/thread-self').split('/').pop());
      const start = startTime(readFileSync('/proc/thread-self/stat', 'utf8'));
      thread = Number.isSafeInteger(id) && start !== undefined ? { thread: id, threadStart: start } : null;
    } catch {
      thread = null;
    }
  }
  return thread ?? undefined;
}

/** The record that names the calling thread as a holder. */
export function thisHolder(): Holder {
  return { pid: process.pid, host: hostname(), ...processScope(), ...currentThread() };
}

/** Whether a process with this pid exists (in this PID namespace). A pid owned by another user counts as alive. */
export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Whether `holder` is provably gone: on this host, in this PID namespace
 * and boot, and its thread (or, without one, its process) no longer exists,
 * or its thread id now names a thread that started at another time.
 * A holder this process cannot see is never declared gone.
 */
export function holderIsGone(holder: Partial<Holder>): boolean {
  if (holder.host !== hostname() || typeof holder.pid !== 'number' || !Number.isSafeInteger(holder.pid) || holder.pid <= 0) {
    return false;
  }
  const here = processScope();
  if (holder.pidNamespace !== here.pidNamespace || holder.boot !== here.boot) return false;
  if (typeof holder.thread === 'number' && Number.isSafeInteger(holder.thread) && holder.thread > 0) {
    let line: string;
    try {
      line = readFileSync(`/proc/${holder.pid}/task/${holder.thread}/stat`, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ESRCH') return true;
      return !processIsAlive(holder.pid);
    }
    // Without its start time (a leftover's name carries none), a thread that exists counts as the holder.
    return typeof holder.threadStart === 'string' && startTime(line) !== holder.threadStart;
  }
  return !processIsAlive(holder.pid);
}

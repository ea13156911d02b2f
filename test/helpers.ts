import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach } from 'vitest';

import type { Logger } from 'generation-sync';
import { scaled } from './support/time-scale';

export const ROOT = resolve(__dirname, '..');
export const FIXTURES = join(ROOT, 'test', 'fixtures');

const made: string[] = [];

/** A fresh private directory, removed after the test. */
export function tempDir(prefix = 'gensync-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

export interface Worker {
  readonly child: ChildProcess;
  /** The next message from the worker (queued), or a rejection if it exits first. */
  next<T = Record<string, unknown>>(timeoutMs?: number): Promise<T>;
  send(message: unknown): void;
  /**
   * Send `message` with an id and wait for the answer carrying it (fixtures that echo `id`, as
   * relay-worker.mjs does: concurrent requests and late answers are told apart), or for the next answer
   * without one (other fixtures answer in order).
   */
  request<T>(message: Record<string, unknown>, timeoutMs: number): Promise<T>;
  /** Resolves with the exit code once the worker has exited. */
  readonly exited: Promise<number | null>;
  readonly stderr: () => string;
}

let requested = 0;

/** Fork a fixture from test/fixtures with an IPC channel. */
export function startWorker(fixture: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Worker {
  const child = fork(join(FIXTURES, fixture), args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout?.on('data', () => {});
  const queue: unknown[] = [];
  const waiting: Array<(message: unknown) => void> = [];
  const requests = new Map<number, (message: unknown) => void>();
  // Whether the fixture echoes the ids of requests (it says so in its first message).
  let echoesIds = false;
  child.on('message', (message) => {
    if ((message as { echoesIds?: unknown } | null)?.echoesIds === true) echoesIds = true;
    const id = (message as { id?: unknown } | null)?.id;
    if (typeof id === 'number') {
      // The answer to a request: to whoever waits for it (nobody, when it came after the request gave up).
      requests.get(id)?.(message);
      return;
    }
    const resolveNext = waiting.shift();
    if (resolveNext) resolveNext(message);
    else queue.push(message);
  });
  const exited = new Promise<number | null>((resolveExit) => child.on('exit', (code) => resolveExit(code)));
  // A message sent as the worker dies (ERR_IPC_CHANNEL_CLOSED): the answer never comes, and next() says why.
  child.on('error', () => undefined);
  return {
    child,
    exited,
    stderr: () => stderr,
    send: (message) => child.send(message as never),
    request<T>(message: Record<string, unknown>, timeoutMs: number): Promise<T> {
      if (!echoesIds) {
        child.send(message as never);
        return this.next<T>(timeoutMs);
      }
      const id = ++requested;
      const answered = new Promise<T>((resolveAnswer, reject) => {
        const timer = setTimeout(() => {
          requests.delete(id);
          reject(new Error(`no answer from ${fixture} to ${String(message.op)} within ${timeoutMs} ms; stderr: ${stderr}`));
        }, timeoutMs);
        requests.set(id, (answer) => {
          clearTimeout(timer);
          requests.delete(id);
          resolveAnswer(answer as T);
        });
        void exited.then((code) => {
          clearTimeout(timer);
          requests.delete(id);
          reject(new Error(`${fixture} exited with ${code} before answering ${String(message.op)}; stderr: ${stderr}`));
        });
      });
      child.send({ ...message, id } as never);
      return answered;
    },
    next<T>(timeoutMs = scaled(60_000)): Promise<T> {
      if (queue.length > 0) return Promise.resolve(queue.shift() as T);
      return new Promise<T>((resolveMessage, reject) => {
        const take = (message: unknown): void => {
          clearTimeout(timer);
          resolveMessage(message as T);
        };
        const timer = setTimeout(() => {
          // A late message is queued for the next caller, not handed to this one that gave up.
          waiting.splice(waiting.indexOf(take) >>> 0, 1);
          reject(new Error(`no message from ${fixture} within ${timeoutMs} ms; stderr: ${stderr}`));
        }, timeoutMs);
        waiting.push(take);
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`${fixture} exited with ${code} before sending a message; stderr: ${stderr}`));
        });
      });
    },
  };
}

/** What a fixture worker (worker.mjs and its kin) answers to a command. */
export interface WorkerReply {
  syncGen?: number | null;
  ok?: boolean;
  expired?: boolean;
  failures?: number;
  error?: { message: string };
  [key: string]: unknown;
}

/** Send a worker one command and wait for its answer; a reply carrying an error fails the test. */
export async function ask<T extends object = WorkerReply>(worker: Worker, message: Record<string, unknown>, timeoutMs = scaled(60_000)): Promise<T> {
  const reply = await worker.request<T & { error?: { message: string } }>(message, timeoutMs);
  if (reply.error !== undefined) throw new Error(`worker failed: ${reply.error.message}`);
  return reply;
}

/** Kill any workers still running after a test. */
export function stopAll(workers: Worker[]): void {
  for (const worker of workers) if (worker.child.exitCode === null) worker.child.kill('SIGKILL');
}

/** A logger that keeps what it is told, for assertions. */
export function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    error: (message: string) => lines.push(`error: ${message}`),
    warn: (message: string) => lines.push(`warn: ${message}`),
    info: (message: string) => lines.push(`info: ${message}`),
  };
}


/**
 * Poll `probe` until it returns something other than undefined, and return
 * that; fail after `timeoutMs`. For waiting on other processes (never as a
 * speed assertion: the bound is only there so that a broken test ends).
 */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = scaled(10_000)): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The error `action` throws, or undefined if it returns. */
export function thrown(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  return undefined;
}

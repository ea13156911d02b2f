// The "database" of the web examples: a JSON file of settings. A write is a
// read-modify-write, so writers take turns: one lock across every process
// (proper-lockfile: a lock directory beside the file, taken over when its
// holder died and left it stale), and within the lock the new contents go to
// a temporary file of their own that is renamed over the old one, so a
// reader never sees half of a write and a crash never leaves half of one.
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';

import lockfile from 'proper-lockfile';

/** How long a writer waits for its turn: 10 ms between attempts at first, up to 200 ms, about 10 s in all. */
const WAIT = { retries: 60, minTimeout: 10, maxTimeout: 200 };

export async function readSettings(file) {
  return JSON.parse(await readFile(file, 'utf8'));
}

export async function writeSettings(file, changes) {
  const release = await lockfile.lock(file, { retries: WAIT, stale: 10_000 });
  const temporary = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const next = { ...(await readSettings(file)), ...changes };
    next.version = (next.version ?? 0) + 1;
    await writeFile(temporary, JSON.stringify(next));
    await rename(temporary, file);
    return next;
  } finally {
    await rm(temporary, { force: true });
    await release();
  }
}

// The "database" of the web examples: a JSON file of settings, replaced whole
// on every write, so a reader never sees half of one.
import { readFile, rename, writeFile } from 'node:fs/promises';

export async function readSettings(file) {
  return JSON.parse(await readFile(file, 'utf8'));
}

export async function writeSettings(file, changes) {
  const next = { ...(await readSettings(file)), ...changes };
  next.version = (next.version ?? 0) + 1;
  await writeFile(`${file}.${process.pid}.tmp`, JSON.stringify(next));
  await rename(`${file}.${process.pid}.tmp`, file);
  return next;
}

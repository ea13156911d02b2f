// Helpers shared by the benchmark sections.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';

export const CHILD = fileURLToPath(new URL('./child.mjs', import.meta.url));

const { RedisServer } = createRequire(import.meta.url)('../test/support/redis-server.cjs');

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function quantile(sortedValues, q) {
  return sortedValues[Math.min(sortedValues.length - 1, Math.floor(q * sortedValues.length))];
}

/** Run `node bench/child.mjs ...args` and parse the last line it prints as JSON. */
export function runChild(args, env = process.env) {
  const output = execFileSync(process.execPath, [CHILD, ...args], { encoding: 'utf8', env, maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(output.trim().split('\n').at(-1));
}

/** The machine and runtime, stamped on every report. */
export function machine() {
  return {
    cpu: cpus()[0]?.model?.trim() ?? 'unknown CPU',
    cores: cpus().length,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    date: new Date().toISOString().slice(0, 10),
  };
}

/**
 * Run `fn(url)` with a redis-server of its own on a free loopback port, or
 * return undefined when redis-server is not installed.
 */
export async function withRedis(fn) {
  if (!RedisServer.available()) return undefined;
  const server = await RedisServer.start();
  try {
    return await fn(server.url);
  } finally {
    await server.stop();
  }
}

/** Format nanoseconds for a table. */
export function duration(ns) {
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(2)} ms`;
  if (ns >= 1e3) return `${(ns / 1e3).toFixed(2)} µs`;
  return `${ns.toFixed(1)} ns`;
}

/** Print rows as an aligned table; the first row is the header, the first column left-aligned. */
export function printTable(rows, leftColumns = [0]) {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => String(row[column]).length)));
  for (const [index, row] of rows.entries()) {
    console.log(row.map((cell, column) => (leftColumns.includes(column) ? String(cell).padEnd(widths[column]) : String(cell).padStart(widths[column]))).join('  '));
    if (index === 0) console.log(widths.map((width) => '-'.repeat(width)).join('  '));
  }
}

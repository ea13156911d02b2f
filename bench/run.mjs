#!/usr/bin/env node
// npm run bench: every contender in its own child process, warm, several
// repetitions; prints medians, spread, and each contender's ratio to its
// baseline measured in the same run.
//
//   node bench/run.mjs [--reps 7] [--ops 5000000] [--only <substring>] [--json <file>]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { contenders } from './contenders.mjs';

const { values: args } = parseArgs({
  options: {
    reps: { type: 'string', default: '7' },
    ops: { type: 'string', default: '5000000' },
    only: { type: 'string' },
    json: { type: 'string' },
  },
});

const contenderScript = fileURLToPath(new URL('./contender.mjs', import.meta.url));

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function runContender(name) {
  const output = execFileSync(process.execPath, [contenderScript, name, args.reps, args.ops], { encoding: 'utf8' });
  return JSON.parse(output.trim().split('\n').at(-1));
}

const names = Object.keys(contenders).filter((name) => !args.only || name.includes(args.only));
const results = new Map();
for (const name of names) {
  const { samples } = runContender(name);
  results.set(name, { median: median(samples), min: Math.min(...samples), max: Math.max(...samples), samples });
}

const machine = `${cpus()[0]?.model ?? 'unknown CPU'} × ${cpus().length}, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`;
console.log(`generation-sync benchmarks — ${machine}`);
console.log(`${args.reps} repetitions × ${Number(args.ops).toLocaleString('en-US')} ops per contender, each contender in its own process\n`);
const rows = [['contender', 'median ns/op', 'min–max', 'ratio to baseline']];
for (const name of names) {
  const result = results.get(name);
  const { baseline } = contenders[name];
  const base = baseline && results.get(baseline);
  const ratio = base ? `${(result.median / base.median).toFixed(2)}× ${baseline}` : '';
  rows.push([name, result.median.toFixed(2), `${result.min.toFixed(2)}–${result.max.toFixed(2)}`, ratio]);
}
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
for (const [index, row] of rows.entries()) {
  console.log(row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]) : cell.padStart(widths[column]))).join('  '));
  if (index === 0) console.log(widths.map((width) => '-'.repeat(width)).join('  '));
}

if (args.json) {
  writeFileSync(args.json, JSON.stringify({ machine, reps: Number(args.reps), ops: Number(args.ops), results: Object.fromEntries(results) }, null, 2));
}

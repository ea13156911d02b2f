#!/usr/bin/env node
// npm run bench: every contender in its own child process, warm, several
// repetitions; prints medians, spread, and each contender's ratio to its
// baseline measured in the same run.
//
// The machine is shared and noisy, and its speed drifts over seconds. So
// the run is split into rounds: each round runs every contender once, in a
// rotating order, and a contender's ratio to its baseline is taken within
// each round, then the median over rounds is reported.
//
//   node bench/run.mjs [--rounds 5] [--reps 5] [--scale 1] [--only <substring>] [--json <file>]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { createRequire } from 'node:module';

import { contenders } from './contenders.mjs';

const { RedisServer } = createRequire(import.meta.url)('../test/support/redis-server.cjs');

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    reps: { type: 'string', default: '5' },
    scale: { type: 'string', default: '1' },
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

const env = { ...process.env };

/** Run one contender in a fresh process; returns the median ns/op of its repetitions. */
function runContender(name) {
  const ops = String(Math.max(1, Math.round(contenders[name].ops * Number(args.scale))));
  const output = execFileSync(process.execPath, [contenderScript, name, args.reps, ops], { encoding: 'utf8', env });
  return median(JSON.parse(output.trim().split('\n').at(-1)).samples);
}

const selected = Object.keys(contenders).filter((name) => !args.only || name.includes(args.only));
// A baseline runs whenever a selected contender needs it.
let names = [...new Set(selected.flatMap((name) => [contenders[name].baseline, name].filter(Boolean)))];

// Contenders that need Redis get a redis-server of their own on a free loopback port.
let redis;
if (names.some((name) => contenders[name].needs === 'redis')) {
  if (RedisServer.available()) {
    redis = await RedisServer.start();
    env.GENSYNC_BENCH_REDIS_URL = redis.url;
  } else {
    console.log('redis-server is not installed: skipping the Redis contenders (apt-get install -y redis-server)\n');
    names = names.filter((name) => contenders[name].needs !== 'redis');
  }
}
const rounds = Number(args.rounds);
const perRound = new Map(names.map((name) => [name, []]));
for (let round = 0; round < rounds; round++) {
  const order = names.map((_, i) => names[(i + round) % names.length]);
  for (const name of order) perRound.get(name).push(runContender(name));
}

await redis?.stop();

const results = {};
for (const name of names) {
  const times = perRound.get(name);
  const { baseline } = contenders[name];
  const ratios = baseline ? times.map((time, round) => time / perRound.get(baseline)[round]) : undefined;
  results[name] = {
    median: median(times),
    min: Math.min(...times),
    max: Math.max(...times),
    baseline,
    ratio: ratios && median(ratios),
    ratioMin: ratios && Math.min(...ratios),
    ratioMax: ratios && Math.max(...ratios),
    rounds: times,
  };
}

const machine = {
  cpu: cpus()[0]?.model ?? 'unknown CPU',
  cores: cpus().length,
  node: process.version,
  date: new Date().toISOString().slice(0, 10),
};
const format = (ns) => (ns >= 1e6 ? `${(ns / 1e6).toFixed(2)} ms` : ns >= 1e3 ? `${(ns / 1e3).toFixed(2)} µs` : `${ns.toFixed(1)} ns`);
console.log(`generation-sync benchmarks — ${machine.cpu} × ${machine.cores}, Node ${machine.node}, ${machine.date}`);
console.log(`${rounds} rounds × ${args.reps} timed repetitions; each contender in its own process; ratios taken within each round\n`);
const rows = [['contender', 'median/op', 'rounds min–max', 'ratio (median, min–max)', 'baseline']];
for (const name of names) {
  const r = results[name];
  rows.push([
    name,
    format(r.median),
    `${format(r.min)}–${format(r.max)}`,
    r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}× (${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)})`,
    r.baseline ?? '',
  ]);
}
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
for (const [index, row] of rows.entries()) {
  console.log(row.map((cell, column) => (column === 0 || column === 4 ? cell.padEnd(widths[column]) : cell.padStart(widths[column]))).join('  '));
  if (index === 0) console.log(widths.map((width) => '-'.repeat(width)).join('  '));
}

// Cross-checks: how much faster a contender is than alternatives measured in the same rounds.
const comparisons = [];
for (const name of names) {
  for (const other of contenders[name].fasterThan ?? []) {
    if (!perRound.has(other)) continue;
    const ratios = perRound.get(name).map((time, round) => perRound.get(other)[round] / time);
    comparisons.push({ contender: name, than: other, times: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) });
  }
}
if (comparisons.length > 0) {
  console.log('');
  for (const c of comparisons) {
    const fmt = (x) => Math.round(x).toLocaleString('en-US');
    console.log(`${c.contender} is ${fmt(c.times)}× faster than ${c.than} (rounds ${fmt(c.min)}–${fmt(c.max)}×)`);
  }
}

if (args.json) {
  writeFileSync(args.json, JSON.stringify({ machine, rounds, reps: Number(args.reps), scale: Number(args.scale), results, comparisons }, null, 2) + '\n');
}

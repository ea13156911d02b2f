#!/usr/bin/env node
// npm run bench: every benchmark of generation-sync against the floor and
// the alternatives users would pick, in one run, each contender in its own
// process. Prints tables and the bars (docs/ DESIGN's targets), writes
// benchmarks.json, benchmarks.md and benchmarks.svg (stamped with the
// machine, Node version and date) to a new temporary directory whose path it
// prints, and exits 1 when a bar it judged was not met.
//
//   node bench/run.mjs                      # the full run (several minutes)
//   node bench/run.mjs --write              # the same, and the report replaces the tracked docs/benchmarks.*
//   node bench/run.mjs --sections micro     # micro, latency, scaling, creation, relay
//   node bench/run.mjs --only shm,relay     # micro contenders whose name contains "shm" or "relay"
//   node bench/run.mjs --smoke --out DIR    # a few seconds, to check nothing rotted; bars shown, not judged
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { CLUSTER_BASELINE, runLatency } from './latency.mjs';
import { runMicro } from './micro.mjs';
import { chart, checkBars, markdown } from './report.mjs';
import { runCreation } from './creation.mjs';
import { runRelay } from './relay.mjs';
import { runRelayCost } from './relay-cost.mjs';
import { runScaling } from './scaling.mjs';
import { duration, machine, printTable } from './support.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    sections: { type: 'string', default: 'micro,latency,scaling,creation,relay' },
    rounds: { type: 'string' },
    reps: { type: 'string' },
    scale: { type: 'string' },
    only: { type: 'string' },
    out: { type: 'string' },
    write: { type: 'boolean', default: false },
  },
});
if (args.write && (args.out !== undefined || args.smoke)) throw new Error('--write replaces the tracked docs/benchmarks.*: not with --out or --smoke');
const outDir = args.write ? join(ROOT, 'docs') : (args.out ?? mkdtempSync(join(tmpdir(), 'gensync-bench-')));
const smoke = args.smoke;
const sections = new Set(args.sections.split(','));
const settings = {
  rounds: Number(args.rounds ?? (smoke ? 1 : 5)),
  reps: Number(args.reps ?? (smoke ? 1 : 5)),
  scale: Number(args.scale ?? (smoke ? 0.001 : 1)),
  latencyRounds: smoke ? 20 : 300,
  scalingProcesses: smoke ? [1, 2] : [1, 2, 4, 8],
  scalingMs: smoke ? 100 : 1000,
  relayProcesses: smoke ? [1, 3] : [1, 4, 8],
  relayKeys: smoke ? [10, 100] : [10, 1000, 10_000, 100_000],
  relayIdleMs: smoke ? 300 : 5000,
  creation: smoke ? { shm: [100], file: [20], redis: [20] } : { shm: [1000, 10_000, 100_000], file: [1000], redis: [1000, 10_000, 100_000] },
};

const run = { machine: machine(), command: smoke ? 'node bench/run.mjs --smoke' : 'npm run bench -- --write' };
console.log(`generation-sync benchmarks — ${run.machine.cpu} × ${run.machine.cores}, Node ${run.machine.node}, ${run.machine.date}\n`);

if (sections.has('micro')) {
  run.micro = await runMicro({ rounds: settings.rounds, reps: settings.reps, scale: settings.scale, only: args.only });
  console.log(`cost per operation (${settings.rounds} rounds × ${settings.reps} repetitions; ratios within each round)\n`);
  printTable(
    [
      ['contender', 'median/op', 'rounds min–max', 'ratio (median, min–max)', 'baseline'],
      ...Object.entries(run.micro.results).map(([name, r]) => [
        name,
        duration(r.median),
        `${duration(r.min)}–${duration(r.max)}`,
        r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}× (${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)})`,
        r.baseline ?? '',
      ]),
    ],
    [0, 4],
  );
  console.log('');
  for (const c of run.micro.comparisons) {
    console.log(`${c.contender} is ${Math.round(c.times).toLocaleString('en-US')}× faster than ${c.than}`);
  }
  if (run.micro.skipped.length) console.log(`skipped (redis-server not installed): ${run.micro.skipped.join(', ')}`);
  console.log('');
}

if (sections.has('latency')) {
  run.latency = await runLatency({ rounds: settings.latencyRounds, only: args.only });
  const base = run.latency.results[CLUSTER_BASELINE];
  console.log(`change notification latency, one way (ping-pong, ${settings.latencyRounds} rounds)\n`);
  printTable([
    ['contender', 'p50', 'p99', 'max', 'p50 vs cluster'],
    ...Object.entries(run.latency.results).map(([name, r]) => [
      name,
      duration(r.p50),
      duration(r.p99),
      duration(r.max),
      base && name !== CLUSTER_BASELINE ? `${(r.p50 / base.p50).toFixed(2)}×` : '',
    ]),
  ]);
  console.log('');
}

if (sections.has('scaling')) {
  run.scaling = await runScaling({ processes: settings.scalingProcesses, durationMs: settings.scalingMs });
  console.log('scaling on the shared-memory store (total operations per second)\n');
  printTable(
    [
      ['operation', 'keys', ...settings.scalingProcesses.map((n) => `${n} proc`)],
      ...['isExpired', 'markUpdated'].flatMap((op) =>
        ['one key', 'distinct keys'].map((keys) => [
          `${op}()`,
          keys,
          ...settings.scalingProcesses.map((n) => {
            const row = run.scaling.find((r) => r.op === op && r.keys === keys && r.processes === n);
            return `${(row.opsPerSecond / 1e6).toFixed(1)} M`;
          }),
        ]),
      ),
    ],
    [0, 1],
  );
  console.log('');
}

if (sections.has('creation')) {
  run.creation = await runCreation({ sizes: settings.creation });
  console.log('opening a store and creating keys\n');
  printTable([
    ['store', 'keys', 'time', 'file size', 'RSS'],
    ...run.creation.map((row) => [
      row.kind,
      row.keys.toLocaleString('en-US'),
      duration(row.ms * 1e6),
      row.fileBytes === null ? '–' : `${(row.fileBytes / 2 ** 20).toFixed(1)} MiB`,
      `${row.rssMb.toFixed(0)} MiB`,
    ]),
  ]);
  console.log('');
}

if (sections.has('relay')) {
  run.relay = await runRelay({ processes: settings.relayProcesses });
  console.log('Redis connections of one relayed host (each process watches a key)\n');
  printTable([['processes', 'connections', 'subscribed'], ...run.relay.map((row) => [row.processes, row.connections, row.subscribers])]);
  console.log('');
  run.relayCost = await runRelayCost({ keys: settings.relayKeys, idleMs: settings.relayIdleMs });
  console.log('what a relay costs as keys grow (two hosts; CPU of each relay process, medians)\n');
  printTable([
    ['keys', 'idle CPU', 'forward / change', 'take in / change', 'all taken in on the other host', 'longest event-loop stall', 'takeover (relay killed)'],
    ...run.relayCost.map((row) => [
      row.keys.toLocaleString('en-US'),
      `${row.idlePercent.toFixed(2)} %`,
      `${row.forwardUsPerChange.toFixed(1)} µs`,
      `${row.takeInUsPerChange.toFixed(1)} µs`,
      `${row.convergeMs.toFixed(0)} ms`,
      `${row.stallMs.toFixed(1)} ms`,
      `${row.takeoverMs.toFixed(0)} ms`,
    ]),
  ]);
  console.log('');
}

const bars = checkBars(run);
// A smoke run's counts are far too small to judge speed by: its bars are shown, marked, and never fail it.
const judged = !smoke;
for (const { bar, shown, met } of bars) console.log(`${met === undefined ? '–' : !judged ? '·' : met ? '✓' : '✗'} ${bar}: ${shown}`);
const missed = judged ? bars.filter((bar) => bar.met === false) : [];

mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, 'benchmarks.json'), JSON.stringify({ ...run, bars }, null, 2) + '\n');
if (run.micro) writeFileSync(join(outDir, 'benchmarks.svg'), chart(run.micro.results));
writeFileSync(join(outDir, 'benchmarks.md'), markdown(run, 'benchmarks.svg') + '\n');
console.log(`\nwrote ${join(outDir, 'benchmarks.md')}, benchmarks.svg and benchmarks.json${args.write ? '' : ' (npm run bench -- --write replaces the tracked docs/benchmarks.*)'}`);
if (!judged) console.log('smoke run: bars shown (·), not judged');
if (missed.length > 0) console.log(`\n${missed.length} bar${missed.length > 1 ? 's' : ''} not met: ${missed.map((bar) => bar.bar).join('; ')}`);
process.exit(missed.length > 0 ? 1 : 0);

#!/usr/bin/env node
// A live demo of generation-sync on the default store: a node:cluster
// primary and four workers each cache a "settings" object. The primary
// changes the settings every so often and calls markUpdated(); every worker
// is told (watch()), reloads, refreshes, and reports how long after the
// change it noticed. On a terminal the view redraws in place; piped, it
// prints one line per event.
//
//   npm start                  # about 10 seconds
//   npm start -- --seconds 30 --workers 8 --interval 500
import cluster from 'node:cluster';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { defaultStore, GenerationSynchronizer } from 'generation-sync';

const KEY = ['generation-sync-demo', 'settings'];
const LAST_CHANGE_WAIT_MS = 5000;
const THEMES = ['light', 'dark', 'solarized', 'high-contrast'];

const USAGE = 'usage: npm start -- [--seconds N] [--workers N] [--interval MS]   (defaults: 10 s, 4 workers, 1500 ms)';
let options;
try {
  ({ values: options } = parseArgs({
    options: {
      seconds: { type: 'string', default: process.env.DEMO_SECONDS ?? '10' },
      workers: { type: 'string', default: '4' },
      interval: { type: 'string', default: '1500' },
    },
  }));
} catch (error) {
  console.error(`demo: ${error.message}\n${USAGE}`);
  process.exit(2);
}
const seconds = Number(options.seconds);
const workerCount = Number(options.workers);
const intervalMs = Number(options.interval);
for (const [name, value, whole] of [['seconds', seconds, false], ['workers', workerCount, true], ['interval', intervalMs, false]]) {
  if (!Number.isFinite(value) || value <= 0 || (whole && (!Number.isInteger(value) || value > 64))) {
    console.error(`demo: --${name} must be ${whole ? 'a whole number from 1 to 64' : 'a positive number'}, not ${JSON.stringify(options[name])}\n${USAGE}`);
    process.exit(2);
  }
}

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes. */
const preciseNow = () => performance.timeOrigin + performance.now();
const clockTime = () => new Date().toISOString().slice(11, 23);
const ms = (value) => (value === undefined ? '-' : `${value.toFixed(2)} ms`);

function readSettings(file) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

function writeSettings(file, settings) {
  writeFileSync(`${file}.tmp`, JSON.stringify(settings));
  renameSync(`${file}.tmp`, file);
}

if (cluster.isPrimary) {
  const dir = mkdtempSync(join(tmpdir(), 'generation-sync-demo-'));
  const settingsFile = join(dir, 'settings.json');
  let version = 1;
  writeSettings(settingsFile, { version, theme: THEMES[0] });

  const sync = new GenerationSynchronizer(KEY);
  const live = process.stdout.isTTY === true;
  const header = [
    `generation-sync demo: ${workerCount} workers share ${sync.store.path} (${sync.store.kind} store)`,
    `key "${sync.cacheKey}" starts at generation ${sync.syncGen}; a change every ${intervalMs} ms for ${seconds} s`,
  ];
  const workers = new Map(); // cluster id -> { pid, generation, reloads, noticed, reload }
  const latencies = [];
  const bumpedAt = new Map(); // settings version -> when the primary called markUpdated()
  const reportsByVersion = new Map();
  let drawnLines = 0;
  let stopping = false;

  const draw = () => {
    const lines = [
      ...header,
      `settings v${version} (theme=${THEMES[version % THEMES.length]}), generation ${sync.syncGen}`,
      '',
      'worker pid     generation  reloads woken after reload took',
      ...[...workers.entries()].sort(([a], [b]) => a - b).map(([id, w]) =>
        `${String(id).padEnd(6)} ${String(w.pid).padEnd(7)} ${String(w.generation ?? '-').padEnd(11)} ${String(w.reloads).padEnd(7)} ${ms(w.noticed).padEnd(11)} ${ms(w.reload)}`,
      ),
    ];
    // Every line is cut to the terminal's width, so none wraps and the redraw moves up exactly as many rows as it drew.
    const width = Math.max(20, (process.stdout.columns ?? 80) - 1);
    const fitted = lines.map((line) => (line.length > width ? `${line.slice(0, width - 1)}…` : line));
    process.stdout.write(`${drawnLines > 0 ? `\x1b[${drawnLines}A\x1b[J` : ''}${fitted.join('\n')}\n`);
    drawnLines = lines.length;
  };
  const say = (line) => {
    if (!live) console.log(line);
  };

  if (!live) console.log(`${header.join('\n')}\n`);
  for (let i = 0; i < workerCount; i++) cluster.fork({ DEMO_SETTINGS: settingsFile });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`demo: worker ${worker.id} died (${signal ?? `exit code ${code}`}); stopping.`);
      process.exitCode = 1;
      stop();
    }
    if (Object.keys(cluster.workers ?? {}).length === 0) rmSync(dir, { recursive: true, force: true });
  });

  let ready = 0;
  cluster.on('message', (worker, message) => {
    if (message.type === 'ready') {
      workers.set(worker.id, { pid: worker.process.pid, generation: message.generation, reloads: 0 });
      if (++ready === workerCount) start();
      return;
    }
    if (message.type === 'reloaded') {
      // A burst of changes can wake a worker once, for the latest version: measure from that version's bump.
      message.noticedAfterMs = Math.max(0, message.noticedAt - (bumpedAt.get(message.version) ?? message.noticedAt));
      latencies.push(message.noticedAfterMs);
      reportsByVersion.set(message.version, (reportsByVersion.get(message.version) ?? 0) + 1);
      const state = workers.get(worker.id);
      Object.assign(state, { generation: message.generation, reloads: state.reloads + 1, noticed: message.noticedAfterMs, reload: message.reloadMs });
      say(
        `${clockTime()} [worker ${worker.id}] noticed v${message.version} after ${message.noticedAfterMs.toFixed(2)} ms, ` +
          `reloaded in ${message.reloadMs.toFixed(2)} ms, refreshed to generation ${message.generation}`,
      );
      if (live) draw();
    }
  });

  function change() {
    version++;
    const theme = THEMES[version % THEMES.length];
    writeSettings(settingsFile, { version, theme });
    bumpedAt.set(version, preciseNow()); // the wake-up is measured from here: the bump itself, after the file is written
    const reached = sync.markUpdated();
    say(`\n${clockTime()} [primary]  saved settings v${version} (theme=${theme}); markUpdated() -> generation ${sync.syncGen}${reached ? '' : ' (store unreachable!)'}`);
    if (live) draw();
  }

  function start() {
    if (live) draw();
    const timer = setInterval(change, intervalMs);
    setTimeout(() => {
      clearInterval(timer);
      waitForLastChange(Date.now() + LAST_CHANGE_WAIT_MS);
    }, seconds * 1000);
  }

  const lastVersionReports = () => (version === 1 ? workerCount : reportsByVersion.get(version) ?? 0);

  /** Stop once every worker has reported the last change, or when the wait runs out. */
  function waitForLastChange(deadline) {
    if (lastVersionReports() >= workerCount || Date.now() > deadline) stop();
    else setTimeout(waitForLastChange, 20, deadline);
  }

  function stop() {
    if (stopping) return;
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.send({ type: 'stop' });
    const updates = version - 1;
    const sorted = [...latencies].sort((a, b) => a - b);
    const quantile = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);
    const perWorker = [...workers.values()].map((w) => w.reloads);
    console.log(
      `\nsummary: ${updates} updates, ${latencies.length} reloads across ${workerCount} workers ` +
        `(${perWorker.every((n) => n === updates) ? 'every worker saw every update' : `reloads per worker: ${perWorker.join(', ')}`});\n` +
        `woken after p50 ${quantile(0.5).toFixed(2)} ms, p99 ${quantile(0.99).toFixed(2)} ms, max ${(sorted.at(-1) ?? NaN).toFixed(2)} ms` +
        `\n(from the primary's markUpdated() to the worker's watch() listener: ${sync.store.kind === 'shm' ? 'a futex wake-up' : 'a file-system event'})`,
    );
  }
} else {
  const settingsFile = process.env.DEMO_SETTINGS;
  const sync = new GenerationSynchronizer(KEY);
  let settings = readSettings(settingsFile);

  // Told, not polling: reload as soon as any process changes the generation.
  const unwatch = sync.watch(() => {
    const noticedAt = preciseNow();
    sync.refresh(); // take the generation first, then load: a change made during the load wakes us again
    settings = readSettings(settingsFile);
    process.send({
      type: 'reloaded',
      version: settings.version,
      generation: sync.syncGen,
      noticedAt,
      reloadMs: preciseNow() - noticedAt,
    });
  });

  process.on('message', (message) => {
    if (message.type === 'stop') {
      unwatch();
      defaultStore().close();
      process.disconnect();
    }
  });
  process.send({ type: 'ready', generation: sync.syncGen });
}

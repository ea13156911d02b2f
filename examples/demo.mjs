#!/usr/bin/env node
// A live demo of generation-sync on the default store: a node:cluster
// primary and four workers each cache a "settings" object. The primary
// changes the settings every so often and calls markUpdated(); every worker
// checks isExpired() as it serves (simulated) requests, reloads, refreshes,
// and reports how long after the change it noticed.
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
const REQUEST_INTERVAL_MS = 1;
const LAST_CHANGE_WAIT_MS = 5000;

const { values: options } = parseArgs({
  options: {
    seconds: { type: 'string', default: process.env.DEMO_SECONDS ?? '10' },
    workers: { type: 'string', default: '4' },
    interval: { type: 'string', default: '1500' },
  },
});
const seconds = Number(options.seconds);
const workerCount = Number(options.workers);
const intervalMs = Number(options.interval);
for (const [name, value] of [['seconds', seconds], ['workers', workerCount], ['interval', intervalMs]]) {
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`demo: --${name} must be a positive number`);
    process.exit(2);
  }
}

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes. */
const preciseNow = () => performance.timeOrigin + performance.now();
const clockTime = () => new Date().toISOString().slice(11, 23);

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
  const themes = ['light', 'dark', 'solarized', 'high-contrast'];
  let version = 1;
  writeSettings(settingsFile, { version, theme: themes[0], changedAt: preciseNow() });

  const sync = new GenerationSynchronizer(KEY);
  console.log(`generation-sync demo: ${workerCount} workers share ${sync.store.path} (${sync.store.kind} store)`);
  console.log(`key "${sync.cacheKey}" starts at generation ${sync.syncGen}; a change every ${intervalMs} ms for ${seconds} s\n`);

  const latencies = [];
  const reloadsByWorker = new Map();
  let ready = 0;

  let stopping = false;
  for (let i = 0; i < workerCount; i++) cluster.fork({ DEMO_SETTINGS: settingsFile });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`demo: worker ${worker.id} died (${signal ?? `exit code ${code}`}); stopping.`);
      process.exitCode = 1;
      stop();
    }
    if (Object.keys(cluster.workers ?? {}).length === 0) rmSync(dir, { recursive: true, force: true });
  });

  const reportsByVersion = new Map();
  const lastVersionReports = () => (version === 1 ? workerCount : reportsByVersion.get(version) ?? 0);

  cluster.on('message', (worker, message) => {
    if (message.type === 'ready') {
      ready++;
      if (ready === workerCount) start();
      return;
    }
    if (message.type === 'reloaded') {
      latencies.push(message.noticedAfterMs);
      reportsByVersion.set(message.version, (reportsByVersion.get(message.version) ?? 0) + 1);
      reloadsByWorker.set(worker.id, (reloadsByWorker.get(worker.id) ?? 0) + 1);
      console.log(
        `${clockTime()} [worker ${worker.id}] noticed v${message.version} after ${message.noticedAfterMs.toFixed(2)} ms, ` +
          `reloaded in ${message.reloadMs.toFixed(2)} ms, refreshed to generation ${message.generation}`,
      );
    }
  });

  function change() {
    version++;
    const theme = themes[version % themes.length];
    writeSettings(settingsFile, { version, theme, changedAt: preciseNow() });
    const reached = sync.markUpdated();
    console.log(`\n${clockTime()} [primary]  saved settings v${version} (theme=${theme}); markUpdated() -> generation ${sync.syncGen}${reached ? '' : ' (store unreachable!)'}`);
  }

  function start() {
    const timer = setInterval(change, intervalMs);
    setTimeout(() => {
      clearInterval(timer);
      waitForLastChange(Date.now() + LAST_CHANGE_WAIT_MS);
    }, seconds * 1000);
  }

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
    const perWorker = [...reloadsByWorker.values()];
    console.log(`\nsummary: ${updates} updates, ${latencies.length} reloads across ${workerCount} workers ` +
      `(${perWorker.every((n) => n === updates) ? 'every worker saw every update' : `reloads per worker: ${perWorker.join(', ')}`}); ` +
      `noticed after p50 ${quantile(0.5).toFixed(2)} ms, p99 ${quantile(0.99).toFixed(2)} ms, max ${(sorted.at(-1) ?? NaN).toFixed(2)} ms ` +
      `(workers check isExpired() every ${REQUEST_INTERVAL_MS} ms)`);
  }
} else {
  const settingsFile = process.env.DEMO_SETTINGS;
  const sync = new GenerationSynchronizer(KEY);
  let settings = readSettings(settingsFile);

  // Stand-in for a request handler: every request checks whether the cached settings are current.
  function handleRequest() {
    if (sync.isExpired()) {
      const noticedAt = preciseNow();
      settings = readSettings(settingsFile);
      sync.refresh();
      process.send({
        type: 'reloaded',
        version: settings.version,
        generation: sync.syncGen,
        noticedAfterMs: Math.max(0, noticedAt - settings.changedAt),
        reloadMs: preciseNow() - noticedAt,
      });
    }
  }

  const timer = setInterval(handleRequest, REQUEST_INTERVAL_MS);
  process.on('message', (message) => {
    if (message.type === 'stop') {
      clearInterval(timer);
      defaultStore().close();
      process.disconnect();
    }
  });
  process.send({ type: 'ready' });
}

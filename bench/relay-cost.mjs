// What a relay costs as the number of keys grows: two simulated hosts (store
// directories) on one redis-server. Host A has its relay and a second process
// that bumps; host B has its relay. For N keys held on both hosts:
//
//   idle      CPU of host A's relay while nothing changes, in % of one core
//   change    CPU per change: host A's relay forwarding, host B's taking in
//   converge  from the moment the last of N bumps returned on host A to
//             host B's relay having taken in all N
//   stall     the longest time either relay's event loop did not turn
//             meanwhile (a 2 ms timer that notices its own lateness): what
//             an application sharing the relay's process waits at most
//   takeover  host A's relay SIGKILLed: until the other process of host A
//             reports itself the connected relay, every key in step
//
// CPU is each process's own (process.cpuUsage()), so the other processes on
// the machine do not count; times are wall clock.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GenerationSynchronizer, RelayStore } from 'generation-sync';

import { CHILD, median, withRedis } from './support.mjs';

const NAMESPACE = 'bench-relay-cost';

/** A process of a host: hold `keys` keys; answer cpu, status, bump and wait commands. */
export async function relayCostHost(path, url, keys) {
  const capacity = Math.max(4096, 2 ** Math.ceil(Math.log2(Number(keys) * 2)));
  const store = RelayStore.open(path, { capacity, redis: { url, namespace: NAMESPACE }, electionIntervalMs: 50, logger: { error() {}, warn() {}, info() {} } });
  // The event-loop stall tracker runs only while a change is measured (its 2 ms timer would count as idle CPU).
  let longestStallMs = 0;
  let lastTick = 0;
  let tracker;
  const syncs = [];
  for (let i = 0; i < Number(keys); i++) syncs.push(new GenerationSynchronizer(`cost-${i}`, { store, normalizeCacheKey: false }));
  const keepAlive = setInterval(() => undefined, 1 << 30);
  const answer = (value) => process.send(value);
  process.on('message', async (message) => {
    switch (message.op) {
      case 'relaying':
        for (let i = 0; i < 2000 && !store.relayStatus().connected; i++) await new Promise((resolve) => setTimeout(resolve, 10));
        answer({ relaying: store.relayStatus().connected, settled: store.relayStatus().connected ? await store.flush(60_000) : false });
        break;
      case 'cpu': {
        const { user, system } = process.cpuUsage();
        answer({ cpuUs: user + system, takenIn: store.relayStatus().counters.takenIn, at: performance.now() });
        break;
      }
      case 'bump': {
        for (const sync of syncs) sync.markUpdated();
        answer({ at: performance.timeOrigin + performance.now() });
        break;
      }
      case 'until': {
        // Wait until this relay has taken in `takenIn` changes; answer when (wall clock), and its CPU then.
        while (store.relayStatus().counters.takenIn < message.takenIn) await new Promise((resolve) => setTimeout(resolve, 2));
        const { user, system } = process.cpuUsage();
        answer({ at: performance.timeOrigin + performance.now(), cpuUs: user + system });
        break;
      }
      case 'track':
        longestStallMs = 0;
        lastTick = performance.now();
        tracker = setInterval(() => {
          const now = performance.now();
          longestStallMs = Math.max(longestStallMs, now - lastTick - 2);
          lastTick = now;
        }, 2);
        answer({});
        break;
      case 'stalls':
        clearInterval(tracker);
        answer({ longestStallMs });
        break;
      case 'settle':
        answer({ settled: await store.flush(120_000), cpuUs: Object.values(process.cpuUsage()).reduce((a, b) => a + b, 0) });
        break;
      case 'stop':
        clearInterval(keepAlive);
        store.close();
        await store.whenClosed();
        process.exit(0);
    }
  });
  answer({ ready: true });
}

function host(path, url, keys) {
  const child = fork(CHILD, ['relay-cost-host', path, url, String(keys)], { stdio: 'inherit' });
  const waiting = [];
  child.on('message', (message) => waiting.shift()?.(message));
  const next = () => new Promise((resolve) => waiting.push(resolve));
  return {
    child,
    ready: next(),
    ask: (message) => {
      const reply = next();
      child.send(message);
      return reply;
    },
  };
}

async function measure(url, keys, rounds, idleMs) {
  const dir = mkdtempSync(join(tmpdir(), 'gensync-relay-cost-'));
  const processes = [];
  try {
    // Each host's relay first, alone, so that it is the one elected; then host A's bumper.
    const relayA = host(join(dir, 'a.shm'), url, keys);
    processes.push(relayA);
    await relayA.ready;
    if (!(await relayA.ask({ op: 'relaying' })).relaying) throw new Error('host A did not get a relay');
    const relayB = host(join(dir, 'b.shm'), url, keys);
    processes.push(relayB);
    await relayB.ready;
    if (!(await relayB.ask({ op: 'relaying' })).relaying) throw new Error('host B did not get a relay');
    const bumper = host(join(dir, 'a.shm'), url, keys);
    processes.push(bumper);
    await bumper.ready;
    await relayA.ask({ op: 'settle' });
    await relayB.ask({ op: 'settle' });

    const idleStart = await relayA.ask({ op: 'cpu' });
    await new Promise((resolve) => setTimeout(resolve, idleMs));
    const idleEnd = await relayA.ask({ op: 'cpu' });
    const idlePercent = ((idleEnd.cpuUs - idleStart.cpuUs) / 1000 / (idleEnd.at - idleStart.at)) * 100;

    const forwardUs = [];
    const takeInUs = [];
    const convergeMs = [];
    const stallMs = [];
    for (let round = 0; round < rounds; round++) {
      const a0 = await relayA.ask({ op: 'cpu' });
      const b0 = await relayB.ask({ op: 'cpu' });
      await relayA.ask({ op: 'track' });
      await relayB.ask({ op: 'track' });
      const { at: bumpedAt } = await bumper.ask({ op: 'bump' });
      const b1 = await relayB.ask({ op: 'until', takenIn: b0.takenIn + keys });
      convergeMs.push(b1.at - bumpedAt);
      // The relays' stalls while the change crossed (flush() below is the benchmark's own wait).
      stallMs.push(Math.max((await relayA.ask({ op: 'stalls' })).longestStallMs, (await relayB.ask({ op: 'stalls' })).longestStallMs));
      const a1 = await relayA.ask({ op: 'settle' });
      forwardUs.push((a1.cpuUs - a0.cpuUs) / keys);
      takeInUs.push((b1.cpuUs - b0.cpuUs) / keys);
    }
    // The takeover: host A's relay killed; its bumper becomes the relay, reads every key again, reports itself connected.
    const killedAt = performance.now();
    relayA.child.kill('SIGKILL');
    if (!(await bumper.ask({ op: 'relaying' })).relaying) throw new Error('host A did not get a new relay');
    const takeoverMs = performance.now() - killedAt;
    return {
      keys,
      rounds,
      idlePercent,
      forwardUsPerChange: median(forwardUs),
      takeInUsPerChange: median(takeInUs),
      convergeMs: median(convergeMs),
      stallMs: median(stallMs),
      takeoverMs,
    };
  } finally {
    const running = processes.filter((process) => process.child.exitCode === null && process.child.signalCode === null);
    for (const process of running) process.child.send({ op: 'stop' });
    await Promise.all(running.map((process) => new Promise((resolve) => process.child.once('exit', resolve))));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** @param {{ keys: number[], idleMs: number }} options */
export async function runRelayCost({ keys, idleMs }) {
  return (
    (await withRedis(async (url) => {
      const rows = [];
      for (const n of keys) rows.push(await measure(url, n, n <= 100 ? 20 : n <= 10_000 ? 3 : 1, idleMs));
      return rows;
    })) ?? []
  );
}

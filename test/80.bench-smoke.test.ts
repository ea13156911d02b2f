// A short run of every benchmark, so that they never rot. It checks that
// each section runs and reports; it asserts nothing about speed (that is the
// benchmarks' job, on a quiet machine, not the tests').
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

describe('npm run bench, smoke version', () => {
  it('runs every section and writes the JSON, the Markdown report and the SVG chart', () => {
    const out = tempDir();
    execFileSync(process.execPath, [join(ROOT, 'bench', 'run.mjs'), '--smoke', '--out', out], { encoding: 'utf8', timeout: 300_000 });

    const run = JSON.parse(readFileSync(join(out, 'benchmarks.json'), 'utf8')) as {
      machine: { cpu: string; cores: number; node: string; date: string };
      micro: { results: Record<string, { median: number }>; comparisons: Array<{ contender: string; than: string; times: number }> };
      latency: { results: Record<string, { p50: number }> };
      scaling: Array<{ op: string; keys: string; processes: number; opsPerSecond: number }>;
      creation: Array<{ kind: string; keys: number; ms: number }>;
      bars: Array<{ bar: string; value: number }>;
      relay: Array<{ processes: number; connections: number; subscribers: number }>;
      relayCost: Array<Record<string, number>>;
    };
    expect(run.machine.node).toBe(process.version);
    expect(Object.keys(run.micro.results).sort()).toEqual(
      [
        'cluster: ask the primary',
        'file isExpired()',
        'file markUpdated()',
        'floor: Atomics.add',
        'floor: Atomics.load',
        'floor: readFileSync + JSON.parse',
        'floor: proper-lockfile write',
        'lmdb: get',
        'lmdb: increment (write txn)',
        'lmdb: increment (write txn, noSync)',
        'redis isExpired()',
        'redis markUpdated()',
        'redis: GET',
        'redis: INCR',
        'relay isExpired()',
        'relay markUpdated()',
        'shm isExpired()',
        'shm markUpdated()',
      ].sort(),
    );
    for (const result of Object.values(run.micro.results)) expect(result.median).toBeGreaterThan(0);
    expect(run.micro.comparisons.length).toBeGreaterThanOrEqual(8);
    expect(Object.keys(run.latency.results)).toEqual(
      expect.arrayContaining(['node:cluster broadcast via the primary', 'shm watch (futex)', 'file watch (fs.watch)', 'redis: bare pub/sub', 'redis watch (pub/sub)', 'relay: host to host']),
    );
    expect(run.scaling).toHaveLength(8);
    expect(run.creation.map((row) => row.kind)).toEqual(['shm', 'file', 'redis']);
    // With the Redis watch against a bare pub/sub one-way (issue 16), the relay's check and host-to-host bars (issue 17),
    // and the relayed bump against the shared-memory one (issue 26).
    expect(run.bars).toHaveLength(12);
    expect(run.bars.map((bar) => bar.bar)).toContain("relay store: markUpdated() within 2× of the shared-memory store's");
    // The relay's cost as keys grow, with its event-loop stall and takeover time.
    expect(run.relayCost.map((row) => row.keys)).toEqual([10, 100]);
    for (const row of run.relayCost) for (const field of ['idlePercent', 'convergeMs', 'stallMs', 'takeoverMs']) expect(Number.isFinite(row[field]), field).toBe(true);
    expect(run.relay.map((row) => [row.processes, row.subscribers])).toEqual([
      [1, 1],
      [3, 1],
    ]);
    for (const bar of run.bars) expect(typeof bar.value).toBe('number');

    const report = readFileSync(join(out, 'benchmarks.md'), 'utf8');
    for (const heading of ['## The bars', '## Cost per operation', '## Change notification latency', '## Scaling', '## Creating keys', '## Redis connections of a relayed host']) {
      expect(report).toContain(heading);
    }
    expect(report).toContain(`Node ${process.version}`);
    expect(report).toContain('node bench/run.mjs --smoke');
    const svg = readFileSync(join(out, 'benchmarks.svg'), 'utf8');
    expect(svg).toMatch(/^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect(svg).toContain('shm isExpired()');
  });
});

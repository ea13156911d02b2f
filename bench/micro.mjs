// Per-operation costs: every contender in its own process, warm, several
// repetitions. The machine is shared and noisy and its speed drifts over
// seconds, so the run is split into rounds: each round runs every contender
// once, in a rotating order; a contender's ratio to its baseline (and to the
// alternatives it should beat) is taken within each round, and the median
// over rounds is reported.
import { contenders } from './contenders.mjs';
import { median, runChild, withRedis } from './support.mjs';

/**
 * @param {{ rounds: number, reps: number, scale: number, only?: string }} options
 * @returns {Promise<{ results: Record<string, object>, comparisons: object[], skipped: string[] }>}
 */
export async function runMicro({ rounds, reps, scale, only }) {
  // `only`: contenders whose names contain any of its comma-separated parts.
  const parts = only?.split(',').filter(Boolean) ?? [];
  const selected = Object.keys(contenders).filter((name) => parts.length === 0 || parts.some((part) => name.includes(part)));
  // A baseline runs whenever a selected contender needs it.
  let names = [...new Set(selected.flatMap((name) => [contenders[name].baseline, name].filter(Boolean)))];
  const needsRedis = names.some((name) => contenders[name].needs === 'redis');

  const measureAll = async (env) => {
    const perRound = new Map(names.map((name) => [name, []]));
    for (let round = 0; round < rounds; round++) {
      const order = names.map((_, i) => names[(i + round) % names.length]);
      for (const name of order) {
        const ops = String(Math.max(1, Math.round(contenders[name].ops * scale)));
        const { samples } = runChild(['contender', name, String(reps), ops], env);
        perRound.get(name).push(median(samples));
      }
    }
    return perRound;
  };

  const skipped = [];
  let perRound;
  if (needsRedis) {
    perRound = await withRedis((url) => measureAll({ ...process.env, GENSYNC_BENCH_REDIS_URL: url }));
    if (perRound === undefined) {
      skipped.push(...names.filter((name) => contenders[name].needs === 'redis'));
      names = names.filter((name) => contenders[name].needs !== 'redis');
    }
  }
  perRound ??= await measureAll(process.env);

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
  const comparisons = [];
  for (const name of names) {
    for (const other of contenders[name].fasterThan ?? []) {
      if (!perRound.has(other)) continue;
      const ratios = perRound.get(name).map((time, round) => perRound.get(other)[round] / time);
      comparisons.push({ contender: name, than: other, times: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) });
    }
  }
  return { results, comparisons, skipped };
}

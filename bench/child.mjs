// Entry point of every benchmark child process: `node bench/child.mjs <role> ...`.
// Each contender, ponger, worker or creator runs alone in a fresh process,
// so no measurement shares a JIT, heap or event loop with another.
import cluster from 'node:cluster';

const [role, ...args] = process.argv.slice(2);

switch (role) {
  case 'contender': {
    const { contenders } = await import('./contenders.mjs');
    const [name, reps, ops] = args;
    const contender = contenders[name];
    if (!contender) throw new Error(`unknown contender: ${name}`);
    const samples = await contender.run({ reps: Number(reps), ops: Number(ops) });
    process.stdout.write(JSON.stringify({ name, samples }) + '\n');
    break;
  }
  case 'ponger':
    await (await import('./latency.mjs')).ponger(args[0], args[1]);
    break;
  case 'pubsub-ponger':
    await (await import('./latency.mjs')).pubSubPonger(args[0]);
    break;
  case 'cluster-pinger':
    if (!cluster.isWorker) throw new Error('cluster-pinger runs as a cluster worker');
    (await import('./latency.mjs')).clusterWorker(Number(args[0]));
    break;
  case 'cluster-asker':
    if (!cluster.isWorker) throw new Error('cluster-asker runs as a cluster worker');
    (await import('./contenders.mjs')).clusterAsker(Number(args[0]), Number(args[1]));
    break;
  case 'scaling-worker':
    await (await import('./scaling.mjs')).scalingWorker(args);
    break;
  case 'relay-cost-host':
    await (await import('./relay-cost.mjs')).relayCostHost(args[0], args[1], args[2]);
    break;
  case 'relay-host-process':
    await (await import('./relay.mjs')).relayHostProcess(args[0], args[1]);
    break;
  case 'creation':
    await (await import('./creation.mjs')).createKeys(args[0], Number(args[1]), args[2]);
    break;
  default:
    throw new Error(`unknown role: ${role}`);
}

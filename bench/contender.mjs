// Runs one contender in this process and prints its samples as JSON.
//   node bench/contender.mjs <name> <reps> <ops>
import { contenders } from './contenders.mjs';

const [name, reps, ops] = process.argv.slice(2);
const contender = contenders[name];
if (!contender) {
  console.error(`unknown contender: ${name}`);
  process.exit(2);
}
const samples = await contender.run({ reps: Number(reps), ops: Number(ops) });
process.stdout.write(JSON.stringify({ name, samples }) + '\n');

// The file store on Windows, run by Windows' Node (under wine in .ci/run; see
// run-under-wine.mjs): real processes share one store file. Writes a JSON
// report to the path given as the first argument; the Linux side checks it.
// Usage: node.exe file-store.cjs <report.json> <package dir>
//        node.exe file-store.cjs --child <role> <store path> <package dir> [count]
const { appendFileSync, mkdtempSync, writeFileSync } = require('node:fs');
const { fork } = require('node:child_process');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

function open(packageDir) {
  return require(join(packageDir, 'dist', 'index.js'));
}

function errorsTo(lines) {
  return { error: (m, ...d) => lines.push(`${m} ${d.map(String).join(' ')}`), warn: (m) => lines.push(m) };
}

async function child(role, path, packageDir, count) {
  const { FileStore, GenerationSynchronizer } = open(packageDir);
  const store = FileStore.open(path);
  const logged = [];
  const sync = new GenerationSynchronizer('shared', { store, logger: errorsTo(logged) });
  if (role === 'bump') {
    let acknowledged = 0;
    for (let i = 0; i < count; i++) if (sync.markUpdated()) acknowledged++;
    store.close();
    process.send({ acknowledged, logged });
  } else if (role === 'hold-lock') {
    // Killed while it holds the writer lock: bumps in a loop until killed.
    process.send({ ready: true });
    for (;;) sync.markUpdated();
  }
}

/** Fork this script in `role`; resolve with its last message and exit code. */
function run(role, path, packageDir, count = 0) {
  const worker = fork(__filename, ['--child', role, path, packageDir, String(count)], { stdio: 'ignore' });
  let last;
  worker.on('message', (message) => (last = message));
  return { worker, done: new Promise((resolve) => worker.on('exit', (code) => resolve({ code, message: last }))) };
}

async function main(report, packageDir) {
  const { FileStore, GenerationSynchronizer } = open(packageDir);
  const results = { platform: process.platform, node: process.version, checks: [] };
  const check = (name, ok, detail) => results.checks.push({ name, ok: Boolean(ok), detail });
  const dir = mkdtempSync(join(tmpdir(), 'gensync-win32-'));
  const path = join(dir, 'generations.json');
  const logged = [];
  const store = FileStore.open(path);
  const sync = new GenerationSynchronizer('shared', { store, logger: errorsTo(logged) });
  const base = sync.syncGen;
  check('the store opens and creates a key (no "writable by every user" refusal)', typeof base === 'number', { base, logged });

  // 1. Three processes and this one bump at once: the total is exact.
  const children = [0, 1, 2].map(() => run('bump', path, packageDir, 150));
  let mine = 0;
  for (let i = 0; i < 150; i++) if (sync.markUpdated()) mine++;
  const outcomes = await Promise.all(children.map((c) => c.done));
  const acknowledged = mine + outcomes.reduce((sum, o) => sum + (o.message?.acknowledged ?? 0), 0);
  sync.refresh();
  check('4 processes x 150 bumps end at exactly base + 600', acknowledged === 600 && sync.syncGen === base + 600, {
    acknowledged,
    moved: sync.syncGen - base,
    codes: outcomes.map((o) => o.code),
    logged: [...logged, ...outcomes.flatMap((o) => o.message?.logged ?? [])].slice(0, 5),
  });

  // 2. A watcher here hears another process's bump.
  const heard = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), 10_000);
    const unwatch = sync.watch((change) => {
      clearTimeout(timer);
      unwatch();
      resolve(change.generation);
    });
  });
  const one = run('bump', path, packageDir, 1);
  const heardGeneration = await heard;
  await one.done;
  check('a watch hears another process bump', heardGeneration === sync.syncGen + 1, { heardGeneration, syncGen: sync.syncGen });
  sync.refresh();

  // 3. Cleared and re-created: never repeats.
  const before = sync.syncGen;
  sync.clear();
  const expiredAfterClear = sync.isExpired();
  sync.refresh();
  check('clear() expires the key; re-created, it starts above every value it had', expiredAfterClear && sync.syncGen > before, { before, after: sync.syncGen });

  // 4. A writer killed (TerminateProcess) while bumping: the others carry on, nothing acknowledged is lost.
  const victim = run('hold-lock', path, packageDir);
  await new Promise((resolve) => victim.worker.once('message', resolve));
  await new Promise((resolve) => setTimeout(resolve, 300));
  victim.worker.kill('SIGKILL');
  await victim.done;
  const afterKill = sync.markUpdated();
  const deadline = Date.now() + 30_000;
  let recovered = afterKill;
  while (!recovered && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    recovered = sync.markUpdated();
  }
  const other = new GenerationSynchronizer('shared', { store: FileStore.open(path) });
  check('after a writer is killed mid-bump, bumps work again and another process reads them', recovered && other.syncGen === sync.syncGen, {
    afterKill,
    recovered,
    mine: sync.syncGen,
    theirs: other.syncGen,
  });
  store.close();
  writeFileSync(report, JSON.stringify(results, null, 2));
}

const args = process.argv.slice(2);
const failed = (error) => {
  try {
    appendFileSync(args[0] === '--child' ? join(tmpdir(), 'gensync-win32-child-errors.txt') : args[0], `\nFAILED ${error?.stack ?? error}\n`);
  } finally {
    process.exit(1);
  }
};
if (args[0] === '--child') child(args[1], args[2], args[3], Number(args[4])).catch(failed);
else main(args[0], args[1]).catch(failed);

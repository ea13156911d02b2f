// The built package, consumed the way users consume it: `require`,
// `import`, and TypeScript types for both, from a separate project.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { ROOT, tempDir } from './helpers';

/** A consumer project whose node_modules holds this package (and @types/node) as a dependency would. */
function consumerProject(): string {
  const dir = tempDir('gensync-consumer-');
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true });
  symlinkSync(ROOT, join(dir, 'node_modules', 'generation-sync'));
  symlinkSync(join(ROOT, 'node_modules', '@types', 'node'), join(dir, 'node_modules', '@types', 'node'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  return dir;
}

const run = (dir: string, file: string, env: NodeJS.ProcessEnv = {}): string =>
  execFileSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', env: { ...process.env, GENERATION_SYNC_DIR: join(dir, 'store'), ...env } });

describe('the built package', () => {
  it('works through require()', () => {
    const dir = consumerProject();
    writeFileSync(
      join(dir, 'main.cjs'),
      `const { GenerationSynchronizer, makeCacheKey, SharedMemoryStore } = require('generation-sync');
       const sync = new GenerationSynchronizer('from-require');
       sync.markUpdated();
       console.log(JSON.stringify({ key: makeCacheKey(['a', 'b']), gen: typeof sync.syncGen, expired: sync.isExpired(), shm: sync.store instanceof SharedMemoryStore }));`,
    );
    expect(JSON.parse(run(dir, 'main.cjs'))).toEqual({ key: 'a:b', gen: 'number', expired: false, shm: true });
  });

  it('works through import, sharing one module instance with require()', () => {
    const dir = consumerProject();
    writeFileSync(
      join(dir, 'main.mjs'),
      `import { createRequire } from 'node:module';
       import * as esm from 'generation-sync';
       const cjs = createRequire(import.meta.url)('generation-sync');
       const sync = new esm.GenerationSynchronizer('from-import');
       console.log(JSON.stringify({
         sameClass: esm.GenerationSynchronizer === cjs.GenerationSynchronizer,
         sameStore: esm.defaultStore() === cjs.defaultStore(),
         names: Object.keys(esm).sort(),
         cjsNames: Object.keys(cjs).filter((name) => name !== '__esModule').sort(),
         expired: sync.isExpired(),
       }));`,
    );
    const out = JSON.parse(run(dir, 'main.mjs')) as Record<string, unknown>;
    expect(out.sameClass).toBe(true);
    expect(out.sameStore).toBe(true);
    expect(out.expired).toBe(false);
    expect(out.names).toEqual(out.cjsNames);
    expect(out.names).toContain('GenerationSynchronizer');
  });

  it('carries types for both module systems', () => {
    const dir = consumerProject();
    const body = `
      const sync = new GenerationSynchronizer(['users', 'settings'], { keyPrefix: 'example.com', cacheExpirationSecs: 60 });
      const generation: number | null = sync.syncGen;
      const expired: boolean = sync.isExpired();
      const reached: boolean = sync.markUpdated();
      const key: string = makeCacheKey('x', { useEncryption: true, encryptionKey: 'k' });
      const store: Store = SharedMemoryStore.open('/tmp/x.shm', { capacity: 10, mode: 0o600 });
      const code: ErrorCode = new StoreFullError('full').code;
      // @ts-expect-error syncGen is read-only
      sync.syncGen = 5;
      // @ts-expect-error keys are strings or arrays of strings
      new GenerationSynchronizer(42);
      // @ts-expect-error capacity is a number
      SharedMemoryStore.open('/tmp/x.shm', { capacity: 'big' });
      export { generation, expired, reached, key, store, code };
    `;
    writeFileSync(
      join(dir, 'consumer.cts'),
      `import { GenerationSynchronizer, makeCacheKey, SharedMemoryStore, StoreFullError, type ErrorCode, type Store } from 'generation-sync';\n${body}`,
    );
    writeFileSync(
      join(dir, 'consumer.mts'),
      `import { GenerationSynchronizer, makeCacheKey, SharedMemoryStore, StoreFullError, type ErrorCode, type Store } from 'generation-sync';\n${body}`,
    );
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'node16', moduleResolution: 'node16', target: 'es2022', strict: true, noEmit: true, types: ['node'] },
        files: ['consumer.cts', 'consumer.mts'],
      }),
    );
    const tsc = createRequire(join(ROOT, 'package.json')).resolve('typescript/bin/tsc');
    const output = (() => {
      try {
        return execFileSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8' });
      } catch (error) {
        return String((error as { stdout?: string }).stdout);
      }
    })();
    expect(output).toBe('');
  });

  it('declares what it exports and publishes only what it needs', () => {
    const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(manifest.exports).toMatchObject({
      '.': { import: { types: './dist/index.d.mts' }, require: { types: './dist/index.d.ts' } },
    });
    const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' })) as Array<{
      files: Array<{ path: string }>;
    }>;
    const files = packed[0]?.files.map((file) => file.path) ?? [];
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.mjs');
    expect(files).toContain('native/addon.cc');
    expect(files).toContain('binding.gyp');
    expect(files.some((file) => file.startsWith('test/') || file.startsWith('src/'))).toBe(false);
    // No source maps (they carried the whole source inline) and no test hooks: nothing in the package reads an
    // environment variable that makes a process kill itself (issue 16).
    expect(files.filter((file) => file.endsWith('.map'))).toEqual([]);
    const shipped = files.filter((file) => file.startsWith('dist/')).map((file) => readFileSync(join(ROOT, file), 'utf8'));
    expect(shipped.filter((text) => /GENERATION_SYNC_TEST|SIGKILL/.test(text))).toEqual([]);
    // What the README links to is in the package.
    for (const name of ['LICENSE', 'CHANGELOG.md', 'SECURITY.md', 'docs/reliability.md', 'docs/benchmarks.md', 'examples/cluster/server.mjs']) {
      expect(files).toContain(name);
    }
  });
});

describe('package hygiene (issue 16)', () => {
  const bin = (name: string): string => join(ROOT, 'node_modules', '.bin', name);

  it('publint finds nothing to fix, and Are the Types Wrong finds no problem in the packed tarball', () => {
    // Both exit non-zero on a problem; publint's suggestions are printed too, so its output must say "All good".
    expect(execFileSync(bin('publint'), ['--strict'], { cwd: ROOT, encoding: 'utf8' })).toMatch(/All good!/);
    const dir = tempDir('gensync-pack-');
    execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: ROOT, stdio: 'ignore' });
    const tarball = join(dir, readdirSync(dir).find((name) => name.endsWith('.tgz')) as string);
    expect(execFileSync(bin('attw'), [tarball, '--format', 'ascii'], { encoding: 'utf8' })).toMatch(/No problems found/);
  });

  it('the API reference in docs/api is what `npm run docs` makes from the TSDoc now', () => {
    const out = tempDir('gensync-api-');
    execFileSync(bin('typedoc'), ['--out', out, '--logLevel', 'Warn'], { cwd: ROOT, encoding: 'utf8' });
    const files = (dir: string): string[] => (readdirSync(dir, { recursive: true, withFileTypes: true }) as Array<{ isFile(): boolean; parentPath: string; name: string }>)
      .filter((entry) => entry.isFile())
      .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
      .sort();
    const committed = join(ROOT, 'docs', 'api');
    expect(files(committed), 'run `npm run docs` and commit docs/api').toEqual(files(out));
    for (const file of files(out)) {
      expect(readFileSync(join(committed, file), 'utf8'), `docs/api/${file} is stale: run \`npm run docs\``).toBe(readFileSync(join(out, file), 'utf8'));
    }
  });
});

describe('what people read shows the safe order: take the generation, then load (issue 30)', () => {
  /** Every file a user reads or copies from: the published declarations, the TSDoc they come from, the docs, the examples. */
  const readable = (): string[] => {
    const walk = (dir: string, keep: (name: string) => boolean): string[] =>
      (readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true }) as Array<{ isFile(): boolean; parentPath: string; name: string }>)
        .filter((entry) => entry.isFile() && keep(entry.name) && !entry.parentPath.includes('node_modules'))
        .map((entry) => join(entry.parentPath, entry.name));
    return [
      ...walk('dist', (name) => name.endsWith('.d.ts') || name.endsWith('.d.mts')),
      ...walk('src', (name) => name.endsWith('.ts')),
      ...walk('docs', (name) => name.endsWith('.md')),
      ...walk('examples', (name) => /\.(m?js|cjs|ts|md)$/.test(name)),
      join(ROOT, 'README.md'),
      join(ROOT, 'CONTRIBUTING.md'),
    ];
  };
  // A load (an assignment from a call named load/reload/fetch…, or such a call alone) right before refresh().
  const LOAD = /^(?:(?:const|let|var)\s+)?(?:[\w.[\]]+\s*=\s*)?(?:await\s+)?[\w.]*(?:load|reload|fetch|recompute)\w*\(/i;
  // Prose telling the reader to reload and refresh after it.
  const PROSE = /(?:reload|recompute)[^.]{0,80}?\b(?:and )?then,? (?:call )?(?:`|\{@link )?(?:\w+\.)?refresh/i;

  /** Lines of `text` where a load comes right before a refresh() call, or prose says to refresh after reloading. */
  const wrongOrder = (text: string): string[] => {
    const found: string[] = [];
    const lines = text.split('\n').map((line) => line.replace(/^\s*(?:\/\/|\*|#)?\s*/, '').replace(/\/\/.*$/, '').trim());
    let previous = '';
    for (const line of lines) {
      if (line === '' || line === '```' || line.startsWith('```')) continue;
      if (/^(?:await\s+)?[\w.]*refresh\(\)/.test(line) && LOAD.test(previous)) found.push(`${previous} / ${line}`);
      previous = line;
    }
    for (const match of text.replace(/\s*\n\s*(?:\*\s*)?/g, ' ').matchAll(new RegExp(PROSE, 'gi'))) found.push(match[0]);
    return found;
  };

  it('finds the wrong order where it is written (the check can fail)', () => {
    expect(wrongOrder('if (sync.isExpired()) {\n  settings = loadSettings();\n  sync.refresh();\n}')).toHaveLength(1);
    expect(wrongOrder(' * if (await sync.isExpired()) {\n *   settings = await loadSettings();\n *   await sync.refresh();\n * }')).toHaveLength(1);
    expect(wrongOrder(' * {@link isExpired}, reload or recompute their state, and then call\n * {@link refresh} to take the current generation.')).toHaveLength(1);
    expect(wrongOrder('if (sync.isExpired()) {\n  sync.refresh(); // first\n  settings = loadSettings();\n}')).toEqual([]);
  });

  it('in no published declaration, TSDoc comment, doc or example', () => {
    // The README's table of differences from djblets names the order it documents, as the thing not to do.
    const known = /the documented order: reload, then `refresh\(\)`/;
    const found = readable().flatMap((file) => wrongOrder(readFileSync(file, 'utf8').replace(known, '')).map((where) => `${file.slice(ROOT.length + 1)}: ${where}`));
    expect(found).toEqual([]);
  });
});

describe('errors: each code belongs to one class (issue 14)', () => {
  it('the README\'s table of errors lists every code the library has, each with its class', () => {
    const source = readFileSync(join(ROOT, 'src', 'store', 'errors.ts'), 'utf8');
    const classOf = new Map<string, string>([
      ['ERR_GENSYNC_INVALID_ARGUMENT', 'InvalidArgumentError'],
      ['ERR_GENSYNC_OUT_OF_RANGE', 'OutOfRangeError'],
      ...[...source.matchAll(/^\s+(ERR_GENSYNC_\w+): (\w+),$/gm)].map((match): [string, string] => [match[1]!, match[2]!]),
    ]);
    const codes = new Set([...source.matchAll(/'(ERR_GENSYNC_\w+)'/g)].map((match) => match[1]!));
    expect([...codes].sort()).toEqual([...classOf.keys()].sort());
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const rows = new Map([...readme.matchAll(/^\| `(ERR_GENSYNC_\w+)` \| `(\w+)`/gm)].map((match) => [match[1]!, match[2]!]));
    expect(Object.fromEntries([...rows].sort())).toEqual(Object.fromEntries([...classOf].sort()));
  });

  it('a class made with another class\'s code is refused, and each class takes its own codes', async () => {
    const errors = await import('generation-sync');
    const own: Array<[new (code: never, message: string) => Error, string]> = [
      [errors.StoreFormatError as never, 'ERR_GENSYNC_CORRUPT_VALUE'],
      [errors.StoreUnavailableError as never, 'ERR_GENSYNC_LOCK_LOST'],
      [errors.UnsafeStoreError as never, 'ERR_GENSYNC_NETWORK_FILESYSTEM'],
      [errors.StoreError as never, 'ERR_GENSYNC_STORE_IO'],
    ];
    for (const [Class, code] of own) expect(new Class(code as never, 'm')).toMatchObject({ code, message: 'm' });
    expect(() => new errors.StoreError('ERR_GENSYNC_LOCK_TIMEOUT' as never, 'm')).toThrow(/ERR_GENSYNC_LOCK_TIMEOUT is a code of StoreUnavailableError/);
    expect(() => new errors.StoreUnavailableError('ERR_GENSYNC_CORRUPT_FILE' as never, 'm')).toThrow(TypeError);
    expect(new errors.StoreFullError('m').code).toBe('ERR_GENSYNC_STORE_FULL');
  });
});

// A real redis-server for tests and benchmarks: started on a free loopback
// port, killed and restarted on demand. No persistence unless given a
// directory (then SAVE writes dump.rdb there, and a restart loads it, as a
// production server restarting from its last snapshot does). Optionally
// with its wall clock held still (see frozen-clock.c), for the tests that
// count changes.
'use strict';

const { execFileSync, spawn, spawnSync } = require('node:child_process');
const { existsSync, mkdirSync } = require('node:fs');
const { createServer, Socket } = require('node:net');
const { join } = require('node:path');

/** The frozen-clock shim, built on first use (a C compiler is needed anyway: node-gyp builds the addon). */
function frozenClockLibrary() {
  const dir = join(__dirname, '..', '..', 'node_modules', '.cache', 'generation-sync-test');
  const library = join(dir, 'frozen-clock.so');
  if (!existsSync(library)) {
    mkdirSync(dir, { recursive: true });
    const partial = `${library}.${process.pid}.tmp`;
    execFileSync('cc', ['-shared', '-fPIC', '-O2', '-o', partial, join(__dirname, 'frozen-clock.c')]);
    require('node:fs').renameSync(partial, library);
  }
  return library;
}

class RedisServer {
  /** @type {import('node:child_process').ChildProcess | undefined} */
  #child;

  /**
   * @param {number} port
   * @param {{ dir?: string, frozenClockUs?: number, args?: string[] }} [options]
   */
  constructor(port, options = {}) {
    /** @readonly */
    this.port = port;
    /** @readonly */
    this.options = options;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** @returns {number | undefined} */
  get pid() {
    return this.#child?.pid;
  }

  /** Whether the redis-server binary is installed. */
  static available() {
    return spawnSync('redis-server', ['--version']).status === 0;
  }

  /**
   * Start a server on a free port and wait until it answers. `dir`: keep
   * snapshots there (SAVE writes one; a restart loads it). `frozenClockUs`:
   * the server's wall clock (TIME) stands still at this many microseconds
   * since the epoch. `args`: more redis-server arguments.
   * @param {{ dir?: string, frozenClockUs?: number, args?: string[] }} [options]
   * @returns {Promise<RedisServer>}
   */
  static async start(options = {}) {
    if (!RedisServer.available()) {
      throw new Error('redis-server is not installed; `npm test` installs it (see test/support/ensure-test-tools.mjs).');
    }
    const server = new RedisServer(await freePort(), options);
    await server.restart();
    return server;
  }

  /**
   * (Re)start the server on the same port and wait until it accepts connections: empty, or, with a `dir`,
   * from the last snapshot saved there.
   */
  async restart() {
    if (this.#child && this.#child.exitCode === null && this.#child.signalCode === null) throw new Error('already running');
    const { dir, frozenClockUs, args = [] } = this.options;
    const persistence = dir === undefined ? [] : ['--dir', dir, '--dbfilename', 'dump.rdb'];
    const env = { ...process.env };
    if (frozenClockUs !== undefined) {
      env.LD_PRELOAD = frozenClockLibrary();
      env.GENSYNC_FROZEN_CLOCK_US = String(frozenClockUs);
    }
    const child = spawn(
      'redis-server',
      [
        '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', '--loglevel', 'warning',
        ...persistence, ...args,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env },
    );
    // What it says when it cannot start (a port taken, a damaged append-only file), for the error below.
    let said = '';
    const listen = (chunk) => {
      said = (said + chunk).slice(-2000);
    };
    child.stdout?.on('data', listen);
    child.stderr?.on('data', listen);
    this.#child = child;
    const deadline = Date.now() + 10_000;
    while (!(await answersPing(this.port))) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${said.trim() || '(it printed nothing)'}`);
      if (Date.now() > deadline) throw new Error('redis-server did not start within 10 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /**
   * Kill the server (SIGKILL by default) and wait until it is gone.
   * @param {NodeJS.Signals} [signal]
   */
  async kill(signal = 'SIGKILL') {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
  }

  /**
   * Run a command with redis-cli against this server (bounded: a stopped server must not hang the caller).
   * @param {...string} args
   * @returns {string}
   */
  cli(...args) {
    const result = spawnSync('redis-cli', ['-p', String(this.port), ...args], { encoding: 'utf8', timeout: 5000 });
    if (result.status !== 0) throw new Error(`redis-cli ${args.join(' ')} failed: ${result.stderr || result.error?.message}`);
    return result.stdout.trim();
  }

  stop() {
    return this.kill('SIGKILL');
  }
}

/** @returns {Promise<number>} */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * @param {number} port
 * @returns {Promise<boolean>}
 */
function answersPing(port) {
  return new Promise((resolve) => {
    const socket = new Socket();
    /** @param {boolean} ok */
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.connect(port, '127.0.0.1', () => socket.write('PING\r\n'));
    socket.once('data', (data) => done(data.toString().startsWith('+PONG')));
  });
}

module.exports = { RedisServer };

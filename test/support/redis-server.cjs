// A real redis-server for tests and benchmarks: started on a free loopback
// port with no persistence, killed and restarted on demand.
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const { createServer, Socket } = require('node:net');

class RedisServer {
  /** @type {import('node:child_process').ChildProcess | undefined} */
  #child;

  /** @param {number} port */
  constructor(port) {
    /** @readonly */
    this.port = port;
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
   * Start a server on a free port and wait until it answers.
   * @returns {Promise<RedisServer>}
   */
  static async start() {
    if (!RedisServer.available()) {
      throw new Error('redis-server is not installed; `npm test` installs it (see test/support/ensure-test-tools.mjs).');
    }
    const server = new RedisServer(await freePort());
    await server.restart();
    return server;
  }

  /** (Re)start the server on the same port, empty, and wait until it accepts connections. */
  async restart() {
    if (this.#child && this.#child.exitCode === null && this.#child.signalCode === null) throw new Error('already running');
    const child = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'],
      { stdio: 'ignore' },
    );
    this.#child = child;
    const deadline = Date.now() + 10_000;
    while (!(await answersPing(this.port))) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
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

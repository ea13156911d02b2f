#!/usr/bin/env node
// Part of `npm test`: some tests need programs from the system, never
// skipped when missing — redis-server (the Redis tests start their own on a
// free loopback port), bindfs (a real FUSE filesystem, to prove that a
// store on a network filesystem is refused) and openssl (a private CA for
// the Redis TLS test), and cc (it builds the small library that holds a
// test redis-server's clock still, test/support/frozen-clock.c). On a fresh Debian or Ubuntu
// machine where we run as root, install them from the distribution's
// packages; anywhere else, say how and fail.
import { spawnSync } from 'node:child_process';

const TOOLS = [
  { command: 'redis-server', args: ['--version'], packages: ['redis-server'], brew: 'redis' },
  { command: 'bindfs', args: ['--version'], packages: ['bindfs', 'fuse3'], brew: 'bindfs (with macFUSE)' },
  { command: 'openssl', args: ['version'], packages: ['openssl'], brew: 'openssl' },
  { command: 'cc', args: ['--version'], packages: ['gcc'], brew: 'the Xcode command-line tools' },
];

const present = (tool) => spawnSync(tool.command, tool.args, { encoding: 'utf8' }).status === 0;

const missing = TOOLS.filter((tool) => !present(tool));
if (missing.length === 0) process.exit(0);

const canApt = process.getuid?.() === 0 && spawnSync('apt-get', ['--version']).status === 0;
if (canApt) {
  const packages = missing.flatMap((tool) => tool.packages);
  console.log(`installing ${packages.join(', ')} from Debian packages for the tests...`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
  if (update.status === 0) spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'inherit', env });
}
const still = TOOLS.filter((tool) => !present(tool));
if (still.length === 0) process.exit(0);
console.error(
  `The tests need ${still.map((tool) => tool.command).join(' and ')}, which ${still.length > 1 ? 'are' : 'is'} not installed.\n` +
    `  Debian/Ubuntu: sudo apt-get install -y ${still.flatMap((tool) => tool.packages).join(' ')}\n` +
    `  macOS:         brew install ${still.map((tool) => tool.brew).join(' ')}`,
);
process.exit(1);

#!/usr/bin/env node
// Part of `npm test`: the Redis tests start their own redis-server on a free
// loopback port, so the binary must be installed. On a fresh Debian or
// Ubuntu machine where we run as root, install it from the distribution's
// packages; anywhere else, say how and fail (never skip the tests).
import { spawnSync } from 'node:child_process';

const found = () => spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).status === 0;

if (found()) process.exit(0);

const canApt = process.getuid?.() === 0 && spawnSync('apt-get', ['--version']).status === 0;
if (canApt) {
  console.log('redis-server is not installed; installing it from Debian packages (apt-get install -y redis-server)...');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
  const install = update.status === 0 && spawnSync('apt-get', ['install', '-y', 'redis-server'], { stdio: 'inherit', env });
  if (install && install.status === 0 && found()) process.exit(0);
}
console.error(
  'The Redis tests need redis-server, which is not installed.\n' +
    '  Debian/Ubuntu: sudo apt-get install -y redis-server\n' +
    '  macOS:         brew install redis',
);
process.exit(1);

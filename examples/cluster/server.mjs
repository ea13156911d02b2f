#!/usr/bin/env node
// A node:cluster HTTP service whose workers cache their settings and stay
// consistent without any message passing through the primary.
//
//   node examples/cluster/server.mjs            # PORT=3000 WORKERS=4
//   curl localhost:3000/settings
//   curl -X PUT -d '{"theme":"dark"}' localhost:3000/settings
//
// Every worker keeps the settings in a SynchronizedValue: GET answers from
// memory unless some worker changed them (one atomic load to check); PUT
// writes the settings file, then invalidate() reloads here and expires every
// other worker's copy, so the next request anywhere sees the new settings.
import cluster from 'node:cluster';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { SynchronizedValue } from 'generation-sync';

const port = Number(process.env.PORT ?? 3000);
const workerCount = Number(process.env.WORKERS ?? 4);

if (cluster.isPrimary) {
  // The "database": a JSON file every worker can read.
  const settingsFile = process.env.SETTINGS_FILE ?? join(mkdtempSync(join(tmpdir(), 'gensync-cluster-')), 'settings.json');
  writeFileSync(settingsFile, JSON.stringify({ version: 1, theme: 'light' }));
  for (let i = 0; i < workerCount; i++) cluster.fork({ SETTINGS_FILE: settingsFile });
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workerCount) console.log(`listening on http://127.0.0.1:${port} with ${workerCount} workers (settings in ${settingsFile})`);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const settingsFile = process.env.SETTINGS_FILE;
  const settings = new SynchronizedValue('example:settings', () => JSON.parse(readFileSync(settingsFile, 'utf8')));

  const server = createServer((request, response) => {
    const reply = (status, body) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    };
    if (request.url !== '/settings') return reply(404, { error: 'try /settings' });
    if (request.method === 'GET') {
      const current = settings.get();
      return reply(200, { pid: process.pid, generation: settings.synchronizer.syncGen, settings: current });
    }
    if (request.method === 'PUT') {
      let body = '';
      request.on('data', (chunk) => (body += chunk));
      request.on('end', () => {
        let changes;
        try {
          changes = JSON.parse(body);
        } catch {
          return reply(400, { error: 'the body must be JSON' });
        }
        const next = { ...settings.get(), ...changes, version: settings.get().version + 1 };
        writeFileSync(`${settingsFile}.${process.pid}`, JSON.stringify(next));
        renameSync(`${settingsFile}.${process.pid}`, settingsFile);
        const fresh = settings.invalidate();
        reply(200, { pid: process.pid, generation: settings.synchronizer.syncGen, settings: fresh });
      });
      return undefined;
    }
    return reply(405, { error: 'GET or PUT' });
  });
  server.listen(port, '127.0.0.1');
}

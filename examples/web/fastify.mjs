#!/usr/bin/env node
// Fastify: a plugin that gives every request the current settings through an
// AsyncSynchronizedValue. Run it in several processes on one host: a PUT to
// any of them is seen by every other on its next request.
//
//   SETTINGS_FILE=/srv/settings.json PORT=3000 node examples/web/fastify.mjs
import Fastify from 'fastify';
import fp from 'fastify-plugin';
import { AsyncSynchronizedValue } from 'generation-sync';

import { readSettings, writeSettings } from './settings-file.mjs';

/** The plugin: `request.settings` on every request, `fastify.settings` to invalidate after a write. */
const synchronizedSettings = fp(async (fastify, { key, load }) => {
  const value = await AsyncSynchronizedValue.create(key, load);
  fastify.decorate('settings', value);
  fastify.decorateRequest('settings', null);
  fastify.addHook('onRequest', async (request) => {
    request.settings = await value.get(); // one atomic load while nothing changed
  });
});

const file = process.env.SETTINGS_FILE;
const app = Fastify();
await app.register(synchronizedSettings, { key: 'example:web-settings', load: () => readSettings(file) });
app.get('/settings', async (request) => ({ pid: process.pid, settings: request.settings }));
app.put('/settings', async (request) => {
  await writeSettings(file, request.body);
  return { pid: process.pid, settings: await app.settings.invalidate() }; // reload here, expire everywhere
});
await app.listen({ port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' });
console.log(`fastify listening on ${app.server.address().port}`);
process.once('SIGTERM', () => app.close().then(() => process.exit(0)));

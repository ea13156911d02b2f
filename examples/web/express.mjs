#!/usr/bin/env node
// Express: per-request settings through an AsyncSynchronizedValue. Run it in
// several processes (PM2, cluster, or just twice) on one host: a PUT to any
// of them is seen by every other on its next request.
//
//   SETTINGS_FILE=/srv/settings.json PORT=3000 node examples/web/express.mjs
import express from 'express';
import { AsyncSynchronizedValue } from 'generation-sync';

import { readSettings, writeSettings } from './settings-file.mjs';

const file = process.env.SETTINGS_FILE;
const settings = await AsyncSynchronizedValue.create('example:web-settings', () => readSettings(file));

const app = express();
app.use(express.json());
// The middleware: one atomic load per request while nothing changed; one shared reload after a change anywhere.
app.use(async (req, _res, next) => {
  try {
    req.settings = await settings.get();
    next();
  } catch (error) {
    next(error);
  }
});
app.get('/settings', (req, res) => res.json({ pid: process.pid, settings: req.settings }));
app.put('/settings', async (req, res, next) => {
  try {
    await writeSettings(file, req.body);
    res.json({ pid: process.pid, settings: await settings.invalidate() }); // reload here, expire everywhere
  } catch (error) {
    next(error);
  }
});
const server = app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => console.log(`express listening on ${server.address().port}`));
process.once('SIGTERM', () => server.close(() => process.exit(0)));

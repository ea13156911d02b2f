#!/usr/bin/env node
// A GenerationKeyv in this process; another process invalidates its namespace;
// the next lookup here loads again.
//
//   node examples/keyv/demo.mjs
import { fork } from 'node:child_process';

import { GenerationKeyv } from './generation-keyv.mjs';

const pages = new GenerationKeyv('pages');
if (process.argv[2] === 'invalidate') {
  process.exit(pages.invalidate() ? 0 : 1);
}

let renders = 0;
const render = (url) => async () => {
  renders++;
  return `<html>${url} rendered by ${process.pid}</html>`;
};
await pages.getOrLoad('/home', render('/home'));
await pages.getOrLoad('/home', render('/home'));
console.log(`before: ${renders} render for 2 lookups`);
await new Promise((resolve) => fork(new URL(import.meta.url), ['invalidate']).once('exit', resolve));
await pages.getOrLoad('/home', render('/home'));
console.log(`after another process invalidated "pages": ${renders} renders`);

// The relay's decision for one key, as a table: what it sends given what it
// knows (decide), and what it writes into the host's file given Redis' answer
// (settle). Pure functions of src/stores/relay/sync.ts, no process needed.
import { describe, expect, it } from 'vitest';

import { decide, settle } from '../dist/stores/relay/sync.js';

type Base = number | null | undefined;

describe('decide(base, local, reread): what the relay sends', () => {
  const present = (generation: number, untouched = false) => ({ generation, untouched });
  const absent = { generation: null, untouched: false };
  it.each([
    // base, local, reread, step
    ['in step: nothing', 100, present(100), false, { kind: 'none' }],
    ['in step, read again: add 0 (raises Redis to the host if Redis went back)', 100, present(100), true, { kind: 'script', mode: 'add', delta: 0 }],
    ['3 bumps here: add 3', 100, present(103), false, { kind: 'script', mode: 'add', delta: 3 }],
    ['base unknown, key made here and untouched: adopt', undefined, present(100, true), false, { kind: 'script', mode: 'adopt', delta: 0 }],
    ['base unknown, key changed here: create (one change, never one less)', undefined, present(100), false, { kind: 'script', mode: 'create', delta: 0 }],
    ['Redis had none, key made here and untouched: adopt', null, present(7, true), false, { kind: 'script', mode: 'adopt', delta: 0 }],
    ['Redis had none, key changed here: create', null, present(7), false, { kind: 'script', mode: 'create', delta: 0 }],
    ['the host fell below its base (a file restored from a copy): create', 100, present(90), false, { kind: 'script', mode: 'create', delta: 0 }],
    ['cleared here: clear', 100, absent, false, { kind: 'clear' }],
    ['absent on both: nothing', null, absent, false, { kind: 'none' }],
    ['absent on both, read again: read', null, absent, true, { kind: 'script', mode: 'read', delta: 0 }],
    ['absent here, base unknown: read', undefined, absent, false, { kind: 'script', mode: 'read', delta: 0 }],
  ] as Array<[string, Base, { generation: number | null; untouched: boolean }, boolean, object]>)('%s', (_name, base, local, reread, step) => {
    expect(decide(base, local, reread)).toEqual(step);
  });
});

describe('settle(sent, result, now): what the relay writes', () => {
  it.each([
    // sent, result (Redis after the step), now (the host now), settlement
    ['forwarded, nothing more here: take the result', 103, 150, 103, { write: 150, base: 150, again: false }],
    ['forwarded, 2 more bumps here meanwhile: keep them pending above the result', 103, 150, 105, { write: 152, base: 150, again: false }],
    ['Redis already at the host value: write nothing', 150, 150, 150, { write: undefined, base: 150, again: false }],
    ['Redis has no value (cleared elsewhere): the host goes absent', 103, null, 105, { write: null, base: null, again: false }],
    ['Redis has no value, nor the host: nothing', null, null, null, { write: undefined, base: null, again: false }],
    ['Redis has no value, the key was made here meanwhile: forward it next', null, null, 7, { write: undefined, base: null, again: true }],
    ['cleared here meanwhile: forward the clear next', 103, 150, null, { write: undefined, base: 150, again: true }],
    ['absent here: take Redis\' value, unless the key was once higher here', null, 150, null, { write: 150, base: 150, again: false, refused: { base: null, again: false } }],
    ['made here meanwhile: what changed is not known, sync again', null, 150, 7, { write: undefined, base: undefined, again: true }],
    ['the host fell meanwhile (restored from a copy): sync again', 103, 150, 90, { write: undefined, base: undefined, again: true }],
  ] as Array<[string, number | null, number | null, number | null, object]>)('%s', (_name, sent, result, now, settlement) => {
    expect(settle(sent, result, now)).toEqual(settlement);
  });
});

/**
 * Argument checks shared by every public entry point. Each failure names
 * the option and says what was expected, so the caller can fix the call.
 *
 * Not part of the public API: the package exports only what index.ts names.
 *
 * @module
 */

import { InvalidArgumentError, OutOfRangeError } from './errors';

/** A plain description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return value.length > 40 ? 'a string' : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return `${typeof value} ${String(value)}`;
  }
  return typeof value === 'object' ? 'an object' : typeof value;
}

/** Checks that `options` is undefined or a plain object, and returns it as a record. */
export function optionsObject<T extends object>(options: T | undefined, what: string): Partial<T> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`${what} must be an object, not ${describe(options)}.`);
  }
  return options;
}

export function optionalBoolean(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') {
    throw new InvalidArgumentError(`Option "${name}" must be a boolean, not ${describe(value)}.`);
  }
  return value;
}

export interface IntegerBounds {
  readonly min: number;
  readonly max: number;
}

export function optionalInteger(value: unknown, name: string, fallback: number, bounds: IntegerBounds): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new InvalidArgumentError(`Option "${name}" must be a number, not ${describe(value)}.`);
  }
  if (!Number.isInteger(value) || value < bounds.min || value > bounds.max) {
    throw new OutOfRangeError(
      `Option "${name}" must be an integer from ${bounds.min} to ${bounds.max}, not ${String(value)}.`,
    );
  }
  return value;
}

export function optionalFunction<F extends (...args: never[]) => unknown>(
  value: unknown,
  name: string,
  fallback: F,
): F {
  if (value === undefined) return fallback;
  if (typeof value !== 'function') {
    throw new InvalidArgumentError(`Option "${name}" must be a function, not ${describe(value)}.`);
  }
  return value as F;
}

/** Checks a string that must be well-formed Unicode (no lone surrogates), so it has one UTF-8 encoding. */
export function wellFormedString(value: unknown, name: string): string {
  if (typeof value !== 'string') {
    throw new InvalidArgumentError(`${name} must be a string, not ${describe(value)}.`);
  }
  if (!value.isWellFormed()) {
    const index = firstLoneSurrogate(value);
    throw new InvalidArgumentError(
      `${name} contains a lone UTF-16 surrogate at index ${index}; ` +
        'keys must be well-formed Unicode so that each has exactly one UTF-8 encoding.',
    );
  }
  return value;
}

function firstLoneSurrogate(value: string): number {
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = value.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return i;
    }
    if (unit >= 0xdc00 && unit <= 0xdfff) return i;
  }
  return -1;
}

/**
 * Where the library reports what happens in the background (store outages
 * and their end), shared by the synchronizers and the stores.
 *
 * @module
 */

/** Where a synchronizer or store reports outages. `console` fits; so do pino, winston and bunyan loggers. */
export interface Logger {
  error(message: string, ...details: unknown[]): void;
  warn(message: string, ...details: unknown[]): void;
  info?(message: string, ...details: unknown[]): void;
}

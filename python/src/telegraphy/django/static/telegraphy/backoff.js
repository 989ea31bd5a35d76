// Full-jitter exponential backoff: delay = random(0, min(max, initial * 2^attempt)).
// (AWS Architecture Blog, "Exponential Backoff And Jitter"; centrifuge-js does the same.)

/** The default schedule, in milliseconds. */
export const DEFAULT_BACKOFF = Object.freeze({ initial: 500, max: 10000 });

/** One delay, in whole milliseconds, for the attempt numbered from 0. */
export function backoffDelay(attempt, { initial, max } = DEFAULT_BACKOFF, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 52));
  return Math.floor(random() * ceiling);
}

/** Counts attempts; reset() after a success. */
export class Backoff {
  constructor(options = {}, random = Math.random) {
    const initial = options.initial ?? DEFAULT_BACKOFF.initial;
    const max = options.max ?? DEFAULT_BACKOFF.max;
    if (!(Number.isFinite(initial) && initial > 0)) throw new TypeError("backoff.initial must be a positive number of milliseconds");
    if (!(Number.isFinite(max) && max >= initial)) throw new TypeError("backoff.max must be a number of milliseconds >= backoff.initial");
    this.options = { initial, max };
    this.attempt = 0;
    this.random = random;
  }

  /** The delay before the next attempt; counts the attempt. */
  next() {
    return backoffDelay(this.attempt++, this.options, this.random);
  }

  reset() {
    this.attempt = 0;
  }
}

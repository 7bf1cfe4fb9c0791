/**
 * Full-jitter exponential backoff and a seedable random generator.
 * @module
 */

/**
 * delay = random(0, min(maxDelay, minDelay * 2^attempt)), attempt counting from 0.
 */
export class Backoff {
  /**
   * @param {{minDelay: number, maxDelay: number, random?: () => number}} options
   */
  constructor({ minDelay, maxDelay, random = Math.random }) {
    if (!(minDelay > 0) || !(maxDelay >= minDelay)) {
      throw new RangeError(
        `reconnect delays must satisfy 0 < minDelay <= maxDelay (got ${minDelay}, ${maxDelay})`);
    }
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.random = random;
    /** Failed attempts since the last reset. */
    this.attempt = 0;
  }

  /** The cap of the next delay (before jitter). */
  ceiling() {
    return Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
  }

  /** The next delay in ms; advances the attempt counter. */
  next() {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }

  /** Back to attempt 0 (after a stable connection). */
  reset() {
    this.attempt = 0;
  }
}

/**
 * A deterministic generator in [0, 1) (mulberry32) for tests and simulations.
 * @param {number} seed
 * @returns {() => number}
 */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

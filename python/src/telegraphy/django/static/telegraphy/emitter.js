// A tiny typed event emitter: only the names given at construction exist, so a
// typo in on("stat", ...) throws instead of silently never firing.

export class Emitter {
  #listeners = new Map();

  constructor(names) {
    for (const name of names) this.#listeners.set(name, []);
  }

  /** Adds a listener; returns a function that removes it. */
  on(name, callback) {
    const list = this.#list(name);
    if (typeof callback !== "function") throw new TypeError(`on("${name}", callback): callback must be a function`);
    list.push(callback);
    return () => this.off(name, callback);
  }

  off(name, callback) {
    const list = this.#list(name);
    const i = list.indexOf(callback);
    if (i >= 0) list.splice(i, 1);
  }

  has(name) {
    return this.#list(name).length > 0;
  }

  /** Calls each listener; a listener that throws does not stop the others. */
  emit(name, ...args) {
    for (const callback of [...this.#list(name)]) {
      try {
        callback(...args);
      } catch (err) {
        console.error(`telegraphy: a "${name}" listener threw`, err);
      }
    }
  }

  #list(name) {
    const list = this.#listeners.get(name);
    if (!list) throw new TypeError(`unknown event "${name}"; known: ${[...this.#listeners.keys()].join(", ")}`);
    return list;
  }
}

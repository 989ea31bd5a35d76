// Helpers shared by the bus transports.

import { InvalidInput } from "../errors.js";

/** The URL with its password replaced by `***`, for messages. */
export function redact(url) {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = "***";
    return u.toString();
  } catch {
    return String(url).replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");
  }
}

/** Imports an optional peer dependency, or says how to install it. */
export async function importOptional(name, what) {
  try {
    return await import(name);
  } catch (e) {
    if (e?.code === "ERR_MODULE_NOT_FOUND" || e?.code === "MODULE_NOT_FOUND") {
      throw new InvalidInput(`publishing to ${what} needs the \`${name}\` package: npm install ${name}`, { cause: e });
    }
    throw e;
  }
}

/** `promise`, or `onTimeout()`'s error after `ms`. */
export function withTimeout(promise, ms, onTimeout) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

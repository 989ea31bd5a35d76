// Private brokers for a test file, from the fault suite's harness
// (tests/chaos/serve_brokers.py): it prints one JSON line (URLs, PEM paths)
// and stops every broker it started, by PID, when its stdin closes.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { REPO, withTimeout } from "./gateway.js";

/**
 * Starts serve_brokers.py with `args` in a fresh directory named after
 * `name`; resolves to `{ brokers, stop }` once it printed its line.
 */
export async function serveBrokers(name, args, what) {
  const dir = mkdtempSync(join(tmpdir(), `telegraphy-node-${name}-`));
  const helper = spawn("python3", [join(REPO, "tests/chaos/serve_brokers.py"), dir, ...args], { stdio: ["pipe", "pipe", "inherit"] });
  const stop = async () => {
    if (helper.exitCode === null) {
      const exited = new Promise((resolve) => helper.once("exit", resolve));
      helper.stdin.end(); // the helper stops every broker by PID
      await withTimeout(exited, 30000, "serve_brokers.py to stop the brokers").catch(() => helper.kill("SIGKILL"));
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const lines = createInterface({ input: helper.stdout });
  const first = new Promise((resolve, reject) => {
    lines.once("line", resolve);
    helper.once("exit", (code) => reject(new Error(`serve_brokers.py exited with ${code}`)));
  });
  try {
    return { brokers: JSON.parse(await withTimeout(first, 120000, what)), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

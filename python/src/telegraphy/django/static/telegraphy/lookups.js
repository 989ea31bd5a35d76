// Django-style field lookups, evaluated on an event's `data` object.
//
//   compileLookups({ status: "open", total__gte: 10, owner__name__istartswith: "a" })
//     → (data) => boolean     (every condition must hold: AND)
//
// A key is a field path joined with "__", optionally ending with a lookup
// name (default "exact"). Nested objects are followed (`owner__name` reads
// data.owner.name); when a step meets an array, each element is tried and the
// condition holds if it holds for any (like a Django lookup across a
// many-relation). An integer step indexes an array (`items__0__sku`).
//
// Validation happens here, at compile time: an unknown or unsupported lookup,
// or a value of the wrong shape for its lookup, throws a TypeError that names
// the key. Because the client does not know the model's fields, the last step
// counts as a lookup only when it is one of LOOKUP_NAMES; otherwise it is a
// field compared with exact. Steps that look like a mistyped lookup (wrong
// case, one letter off a lookup name of 3+ letters, another ORM's operator, a Django
// lookup this client does not implement) throw; to compare a field whose name
// really is such a word, end the key with "__exact".

const LOOKUPS = {
  exact: (v, arg) => (arg === null ? v == null : equal(v, arg)),
  iexact: (v, arg) => (arg === null ? v == null : v != null && lower(v) === lower(arg)),
  contains: (v, arg) => contains(v, arg, false),
  icontains: (v, arg) => contains(v, arg, true),
  in: (v, arg) => arg.some((x) => LOOKUPS.exact(v, x)),
  gt: (v, arg) => compare(v, arg, (c) => c > 0),
  gte: (v, arg) => compare(v, arg, (c) => c >= 0),
  lt: (v, arg) => compare(v, arg, (c) => c < 0),
  lte: (v, arg) => compare(v, arg, (c) => c <= 0),
  startswith: (v, arg) => v != null && text(v).startsWith(text(arg)),
  istartswith: (v, arg) => v != null && lower(v).startsWith(lower(arg)),
  endswith: (v, arg) => v != null && text(v).endsWith(text(arg)),
  iendswith: (v, arg) => v != null && lower(v).endsWith(lower(arg)),
  isnull: (v, arg) => (v == null) === arg,
  range: (v, [lo, hi]) => compare(v, lo, (c) => c >= 0) && compare(v, hi, (c) => c <= 0),
};

/** The supported lookup names. */
export const LOOKUP_NAMES = Object.freeze(Object.keys(LOOKUPS));

// Django lookups and transforms this client does not implement.
const UNSUPPORTED = new Set([
  "regex", "iregex", "search", "date", "time", "year", "iso_year", "month", "day", "week", "week_day",
  "iso_week_day", "quarter", "hour", "minute", "second", "has_key", "has_keys", "has_any_keys",
  "contained_by", "overlap", "len", "keys", "values", "trigram_similar", "unaccent",
]);

// Operators from other query languages, with what to write instead.
const ALIASES = {
  eq: 'use "exact" (or no lookup at all)',
  ne: "use exclude({ field: value })",
  neq: "use exclude({ field: value })",
  not: "use exclude({ ... })",
  nin: "use exclude({ field__in: [...] })",
  not_in: "use exclude({ field__in: [...] })",
  notin: "use exclude({ field__in: [...] })",
  ge: 'use "gte"',
  le: 'use "lte"',
  between: 'use "range"',
  like: 'use "contains"',
  ilike: 'use "icontains"',
  null: 'use "isnull"',
};

/** Splits a filter key into its field path and lookup name; throws on a bad key. */
export function parseKey(key) {
  if (typeof key !== "string" || key === "") throw new TypeError("a filter key must be a non-empty string");
  const steps = key.split("__");
  if (steps.some((s) => s === "")) {
    throw new TypeError(`filter key \`${key}\` has an empty field name; fields are joined with "__" (e.g. owner__name)`);
  }
  if (steps.length === 1) return { path: steps, lookup: "exact" };
  const last = steps[steps.length - 1];
  if (Object.hasOwn(LOOKUPS, last)) return { path: steps.slice(0, -1), lookup: last };
  const hint = mistypedLookup(last);
  if (hint) {
    throw new TypeError(
      `unknown lookup \`${last}\` in filter key \`${key}\` (${hint}). Supported lookups: ${LOOKUP_NAMES.join(", ")}. ` +
        `If \`${last}\` is a field, write \`${key}__exact\`.`,
    );
  }
  return { path: steps, lookup: "exact" };
}

function mistypedLookup(step) {
  if (UNSUPPORTED.has(step)) return "the JS client does not support this Django lookup";
  if (Object.hasOwn(ALIASES, step)) return ALIASES[step];
  const lowered = step.toLowerCase();
  if (Object.hasOwn(LOOKUPS, lowered)) return `lookups are lower case: use "${lowered}"`;
  for (const name of LOOKUP_NAMES) {
    if (name.length >= 3 && editDistanceAtMostOne(lowered, name)) return `did you mean "${name}"?`;
  }
  if (lowered.replaceAll("_", "") !== lowered) {
    const squeezed = lowered.replaceAll("_", "");
    if (Object.hasOwn(LOOKUPS, squeezed)) return `did you mean "${squeezed}"?`;
  }
  return null;
}

function editDistanceAtMostOne(a, b) {
  if (a === b) return true;
  if (Math.abs(a.length - b.length) > 1) return false;
  let i = 0;
  let j = 0;
  let edits = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      i++;
      j++;
      continue;
    }
    if (++edits > 1) return false;
    if (a.length > b.length) i++;
    else if (a.length < b.length) j++;
    else {
      i++;
      j++;
    }
  }
  return edits + (a.length - i) + (b.length - j) <= 1;
}

/** Checks a lookup's argument; throws a TypeError naming the key. */
function checkArgument(key, lookup, arg) {
  if (arg === undefined) throw new TypeError(`filter \`${key}\`: the value is undefined`);
  if (typeof arg === "function" || typeof arg === "symbol") throw new TypeError(`filter \`${key}\`: the value must be data, not a ${typeof arg}`);
  switch (lookup) {
    case "in":
      if (arg instanceof Set) return [...arg];
      if (!Array.isArray(arg)) throw new TypeError(`filter \`${key}\`: "in" needs an array of values`);
      return arg;
    case "range":
      if (!Array.isArray(arg) || arg.length !== 2 || arg.some((x) => x == null)) {
        throw new TypeError(`filter \`${key}\`: "range" needs [low, high] (both included)`);
      }
      return arg;
    case "isnull":
      if (typeof arg !== "boolean") throw new TypeError(`filter \`${key}\`: "isnull" needs true or false`);
      return arg;
    case "exact":
    case "iexact":
      return arg;
    default:
      if (arg === null) throw new TypeError(`filter \`${key}\`: "${lookup}" cannot compare with null; use isnull`);
      return arg;
  }
}

/**
 * Compiles a lookups object into a predicate over `data`. Every key must
 * match (AND). An empty object matches everything.
 */
export function compileLookups(spec) {
  if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
    throw new TypeError("filter()/exclude() take an object of lookups like { status: \"open\", total__gte: 10 } or a function (data, event) => boolean");
  }
  const conditions = Object.entries(spec).map(([key, value]) => {
    const { path, lookup } = parseKey(key);
    const arg = checkArgument(key, lookup, value);
    const test = LOOKUPS[lookup];
    return (data) => resolve(data, path).some((v) => test(v, arg));
  });
  return (data) => conditions.every((condition) => condition(data));
}

/** True when `data` satisfies every lookup in `spec`. */
export function matches(data, spec) {
  return compileLookups(spec)(data);
}

/** The candidate values at `path` (several when the path crosses an array). */
export function resolve(data, path) {
  let values = [data];
  for (const step of path) {
    const next = [];
    for (const value of values) {
      if (Array.isArray(value)) {
        if (/^\d+$/.test(step)) next.push(value[Number(step)]);
        else for (const item of value) next.push(item != null && typeof item === "object" ? item[step] : undefined);
      } else {
        next.push(value != null && typeof value === "object" && Object.hasOwn(value, step) ? value[step] : undefined);
      }
    }
    values = next;
  }
  return values.length ? values : [undefined];
}

// ---- comparisons ---------------------------------------------------------------------

const NUMERIC = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;

function text(v) {
  return v instanceof Date ? v.toISOString() : String(v);
}

function lower(v) {
  return text(v).toLowerCase();
}

// Brings two values to a comparable pair: numbers with numbers (a numeric
// string next to a number, or two numeric strings, become numbers: Django
// sends Decimals as strings),
// Dates as milliseconds (an ISO string next to a Date is parsed), strings with
// strings. Returns null when they cannot be compared.
function comparable(a, b) {
  if (a == null || b == null) return null;
  if (a instanceof Date || b instanceof Date) {
    const x = a instanceof Date ? a.getTime() : typeof a === "string" ? Date.parse(a) : NaN;
    const y = b instanceof Date ? b.getTime() : typeof b === "string" ? Date.parse(b) : NaN;
    return Number.isNaN(x) || Number.isNaN(y) ? null : [x, y];
  }
  if (typeof a === "number" && typeof b === "string" && NUMERIC.test(b)) return [a, Number(b)];
  if (typeof a === "string" && typeof b === "number" && NUMERIC.test(a)) return [Number(a), b];
  if (typeof a === "string" && typeof b === "string" && NUMERIC.test(a) && NUMERIC.test(b)) return [Number(a), Number(b)];
  if (typeof a !== typeof b || !["number", "string", "boolean", "bigint"].includes(typeof a)) return null;
  return [a, b];
}

function compare(v, arg, accept) {
  const pair = comparable(v, arg);
  if (!pair) return false;
  const [x, y] = pair;
  if (typeof x === "number" && (Number.isNaN(x) || Number.isNaN(y))) return false;
  return accept(x < y ? -1 : x > y ? 1 : 0);
}

function equal(a, b) {
  if (a === b) return true;
  if (typeof a === "string" && typeof b === "string") return false; // "007" is not "7"
  const pair = comparable(a, b);
  if (pair && typeof pair[0] !== "boolean") return pair[0] === pair[1];
  return deepEqual(a, b);
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (a == null || b == null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
}

function contains(v, arg, insensitive) {
  if (v == null) return false;
  if (Array.isArray(v)) {
    const wanted = Array.isArray(arg) ? arg : [arg];
    const same = insensitive ? (x, y) => x != null && lower(x) === lower(y) : equal;
    return wanted.every((w) => v.some((x) => same(x, w)));
  }
  if (typeof v === "object") return false;
  return insensitive ? lower(v).includes(lower(arg)) : text(v).includes(text(arg));
}

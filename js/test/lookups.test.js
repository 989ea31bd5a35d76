// Django-style lookups as pure functions: no gateway.

import { test } from "node:test";
import assert from "node:assert/strict";

import { compileLookups, matches, parseKey, resolve, LOOKUP_NAMES } from "../src/lookups.js";

const order = {
  id: 7,
  status: "Open",
  total: "12.50", // Django sends Decimals as strings
  qty: 3,
  note: null,
  created: "2024-05-01T10:00:00Z",
  tags: ["red", "Blue"],
  owner: { id: 3, name: "Ann Smith", team: { name: "ops" } },
  lines: [{ sku: "A-1", qty: 2 }, { sku: "B-2", qty: 5 }],
};

const yes = (spec) => assert.equal(matches(order, spec), true, `${JSON.stringify(spec)} should match`);
const no = (spec) => assert.equal(matches(order, spec), false, `${JSON.stringify(spec)} should not match`);

test("the supported lookups", () => {
  assert.deepEqual([...LOOKUP_NAMES].sort(), [
    "contains", "endswith", "exact", "gt", "gte", "icontains", "iendswith", "iexact", "in",
    "isnull", "istartswith", "lt", "lte", "range", "startswith",
  ]);
});

test("exact (the default) and iexact", () => {
  yes({ id: 7 });
  yes({ id__exact: 7 });
  yes({ id: "7" }); // a numeric string and a number compare as numbers
  no({ total: "12.5" }); // two strings are equal only as text
  yes({ total: 12.5 });
  no({ id: 8 });
  no({ status: "open" });
  yes({ status__iexact: "OPEN" });
  no({ status__iexact: "closed" });
  yes({ note: null }); // like Django: field=None is IS NULL
  yes({ missing: null });
  no({ id: null });
  yes({ tags: ["red", "Blue"] }); // deep equality for arrays and objects
  yes({ owner__team: { name: "ops" } });
  no({ owner__team: { name: "dev" } });
  no({ qty: true });
});

test("contains, icontains", () => {
  yes({ status__contains: "pe" });
  no({ status__contains: "PE" });
  yes({ status__icontains: "PE" });
  yes({ tags__contains: "red" }); // an array holds the value
  no({ tags__contains: "blue" });
  yes({ tags__icontains: "blue" });
  yes({ tags__contains: ["red", "Blue"] }); // every value
  no({ tags__contains: ["red", "green"] });
  no({ note__contains: "x" });
});

test("in", () => {
  yes({ id__in: [1, 7] });
  no({ id__in: [1, 2] });
  no({ id__in: [] });
  yes({ status__in: new Set(["Open", "Closed"]) });
  yes({ note__in: [null, 1] });
});

test("gt, gte, lt, lte, range", () => {
  yes({ qty__gt: 2 });
  no({ qty__gt: 3 });
  yes({ qty__gte: 3 });
  yes({ qty__lt: 4 });
  no({ qty__lt: 3 });
  yes({ qty__lte: 3 });
  yes({ total__gte: 12.5 }); // "12.50" compares as a number
  no({ total__gt: 12.5 });
  yes({ total__lt: "100" }); // two numeric strings compare as numbers
  yes({ created__lt: "2024-05-02" }); // other strings compare as text
  yes({ created__gte: "2024-01-01" }); // ISO dates compare as text
  yes({ created__lt: new Date("2024-06-01T00:00:00Z") }); // a Date parses the data's ISO string
  no({ created__gt: new Date("2024-06-01T00:00:00Z") });
  yes({ qty__range: [1, 3] });
  yes({ qty__range: [3, 3] });
  no({ qty__range: [4, 9] });
  no({ note__gt: 0 }); // null compares with nothing
  no({ status__gt: 1 }); // text and a number do not compare
});

test("startswith, istartswith, endswith, iendswith", () => {
  yes({ owner__name__startswith: "Ann" });
  no({ owner__name__startswith: "ann" });
  yes({ owner__name__istartswith: "ann" });
  yes({ owner__name__endswith: "Smith" });
  no({ owner__name__endswith: "smith" });
  yes({ owner__name__iendswith: "SMITH" });
  yes({ id__startswith: "7" }); // numbers are compared as text, as Django casts
  no({ note__startswith: "" });
});

test("isnull", () => {
  yes({ note__isnull: true });
  yes({ missing__isnull: true });
  yes({ id__isnull: false });
  no({ note__isnull: false });
  yes({ owner__missing__name__isnull: true });
});

test("nested fields with __, arrays match any element", () => {
  yes({ owner__id: 3 });
  yes({ owner__team__name: "ops" });
  no({ owner__team__name__in: ["dev"] });
  yes({ lines__sku: "B-2" }); // any line
  yes({ lines__qty__gte: 5 });
  no({ lines__qty__gt: 5 });
  yes({ lines__0__sku: "A-1" }); // an index
  assert.deepEqual(resolve(order, ["lines", "sku"]), ["A-1", "B-2"]);
  assert.deepEqual(resolve(order, ["nothing", "here"]), [undefined]);
  // A missing intermediate never throws.
  no({ status__name: "x" });
});

test("several keys are ANDed; an empty object matches everything", () => {
  yes({ status: "Open", qty__gte: 3, owner__name__icontains: "smith" });
  no({ status: "Open", qty__gte: 4 });
  yes({});
  const compiled = compileLookups({ qty__gt: 1 });
  assert.equal(compiled({ qty: 2 }), true);
  assert.equal(compiled({ qty: 1 }), false);
  assert.equal(compiled({}), false);
});

test("unknown lookups throw with a clear message", () => {
  const throws = (spec, pattern) => assert.throws(() => compileLookups(spec), pattern);
  throws({ total__gtee: 1 }, /unknown lookup `gtee` in filter key `total__gtee` \(did you mean "gte"\?\).*total__gtee__exact/);
  throws({ name__icontain: "a" }, /did you mean "icontains"/);
  throws({ name__startwith: "a" }, /did you mean "startswith"/);
  throws({ note__is_null: true }, /did you mean "isnull"/);
  throws({ qty__GTE: 1 }, /lower case: use "gte"/);
  throws({ created__year: 2024 }, /does not support this Django lookup/);
  throws({ name__regex: "^a" }, /does not support/);
  throws({ qty__ne: 1 }, /use exclude/);
  throws({ qty__nin: [1] }, /exclude\(\{ field__in/);
  throws({ qty__ge: 1 }, /use "gte"/);
  throws({ "owner____name": "x" }, /empty field name/);
  throws({ "__x": 1 }, /empty field name/);
  // Supported lookups list is in the message.
  throws({ x__gtee: 1 }, /Supported lookups: exact, iexact/);
});

test("bad values throw at compile time", () => {
  const throws = (spec, pattern) => assert.throws(() => compileLookups(spec), pattern);
  throws({ id__in: 3 }, /"in" needs an array/);
  throws({ id__in: "37" }, /"in" needs an array/);
  throws({ qty__range: [1] }, /"range" needs \[low, high\]/);
  throws({ qty__range: [1, null] }, /"range" needs/);
  throws({ note__isnull: "yes" }, /"isnull" needs true or false/);
  throws({ qty__gt: null }, /cannot compare with null; use isnull/);
  throws({ qty: undefined }, /the value is undefined/);
  throws({ qty: () => 1 }, /must be data/);
  throws(null, /object of lookups/);
  throws([["a", 1]], /object of lookups/);
});

test("a field whose name looks like a lookup can be forced with __exact", () => {
  assert.deepEqual(parseKey("owner__name"), { path: ["owner", "name"], lookup: "exact" });
  assert.deepEqual(parseKey("range"), { path: ["range"], lookup: "exact" }); // one step is always a field
  assert.deepEqual(parseKey("period__range__exact"), { path: ["period", "range"], lookup: "exact" });
  assert.equal(matches({ period: { range: 5 } }, { period__range__exact: 5 }), true);
  assert.deepEqual(parseKey("config__ranges__exact"), { path: ["config", "ranges"], lookup: "exact" });
  assert.throws(() => parseKey("config__ranges"), /did you mean "range"/);
});

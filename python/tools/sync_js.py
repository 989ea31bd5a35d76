"""Copies the JS client (js/src/*.js, owned by the JS client) into the
Django app's static folder, where {% telegraphy_scripts %} loads it from
(`static/telegraphy/telegraphy.js` and the modules it imports).

    python python/tools/sync_js.py           # copy
    python python/tools/sync_js.py --check   # exit 1 if the copy is stale

The test suite runs the check (tests/test_static_js.py)."""

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "js" / "src"
TARGET = ROOT / "python" / "src" / "telegraphy" / "django" / "static" / "telegraphy"
#: Files of the Django app itself, not from js/src.
OWN = {"boot.js", "widgets.js", "ready.js"}


def plan():
    """(source files, stale or missing targets, targets no longer in js/src)."""
    sources = sorted(p for p in SOURCE.glob("*.js"))
    clash = [p.name for p in sources if p.name in OWN]
    if clash:
        raise SystemExit(f"sync_js: js/src/{clash[0]} has the name of a Django app file; rename one of them")
    stale = [p for p in sources if not (TARGET / p.name).exists() or (TARGET / p.name).read_bytes() != p.read_bytes()]
    names = {p.name for p in sources}
    extra = sorted(p for p in TARGET.glob("*.js") if p.name not in names and p.name not in OWN)
    return sources, stale, extra


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences (exit 1 if any)")
    args = parser.parse_args(argv)
    if not (SOURCE / "telegraphy.js").exists():
        print(f"sync_js: {SOURCE}/telegraphy.js not found", file=sys.stderr)
        return 2
    sources, stale, extra = plan()
    if args.check:
        for p in stale:
            print(f"stale: static/telegraphy/{p.name} differs from js/src/{p.name}")
        for p in extra:
            print(f"extra: static/telegraphy/{p.name} is not in js/src")
        if stale or extra:
            print("run: python python/tools/sync_js.py")
            return 1
        print(f"sync_js: {len(sources)} files up to date")
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for p in stale:
        (TARGET / p.name).write_bytes(p.read_bytes())
        print(f"copied js/src/{p.name}")
    for p in extra:
        p.unlink()
        print(f"removed static/telegraphy/{p.name}")
    print(f"sync_js: {len(sources)} files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

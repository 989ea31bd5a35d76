"""A publisher process for the flood scenario: POST /publish as fast as one
keep-alive connection goes, `count` numbered events, then one JSON line per
event on stdout: [stream, seq, t0, t1, status, publication id, error].
Usage: flood_pub.py PORT TOPIC STREAM COUNT PAD"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from load import HttpPublisher  # noqa: E402


class _Gw:
    def __init__(self, port: int):
        self.port = port


def main() -> None:
    port, topic, stream, count, pad = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    p = HttpPublisher(_Gw(port), topic, stream, rate=None, count=count, pad=pad)
    p.run()  # in this thread
    out = sys.stdout
    for r in p.records:
        out.write(json.dumps([r.stream, r.seq, r.t0, r.t1, r.status, r.pubid, r.error]) + "\n")
    out.flush()


if __name__ == "__main__":
    main()

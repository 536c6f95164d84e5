#!/usr/bin/env python3
"""Calls Health/Check, EchoService/Get and EchoService/Expand over SparkWire.

    python3 example.py --host 127.0.0.1 --port 7070 --certs DIR [--identity gateway] [--server-identity echo]

Start a server with `sparkops wire echo-server --certs DIR`. Prints one line per result (the same
lines as the C example) and exits non-zero if a call fails.
"""

import argparse
import sys

import sparkwire
from sparkops.health.v1 import health_pb2
from sparkops.testing.v1 import echo_pb2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7070)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--identity", default="gateway")
    parser.add_argument("--server-identity", default="echo")
    args = parser.parse_args()

    failures = 0
    with sparkwire.connect(args.host, args.port, certs=args.certs, identity=args.identity,
                           server_identity=args.server_identity, window=8) as conn:
        status, reply = conn.unary("/sparkops.health.v1.Health/Check",
                                   health_pb2.HealthCheckRequest().SerializeToString(), timeout=5)
        if status.ok:
            health = health_pb2.HealthCheckResponse.FromString(reply)
            print("health", "SERVING" if health.status == health_pb2.HealthCheckResponse.SERVING_STATUS_SERVING else "NOT_SERVING")
        else:
            print("health failed:", status, file=sys.stderr)
            failures += 1

        request = echo_pb2.EchoRequest(text="hello from Python", payload=bytes([1, 2, 3]))
        status, reply = conn.unary("/sparkops.testing.v1.EchoService/Get", request.SerializeToString(), timeout=5)
        if status.ok:
            response = echo_pb2.EchoResponse.FromString(reply)
            print("get", response.text, len(response.payload))
        else:
            print("get failed:", status, file=sys.stderr)
            failures += 1

        words = "one two three four five six seven eight nine ten eleven twelve"
        try:
            for message in conn.server_streaming("/sparkops.testing.v1.EchoService/Expand",
                                                 echo_pb2.EchoRequest(text=words).SerializeToString(), timeout=5):
                response = echo_pb2.EchoResponse.FromString(message)
                print("expand", response.index, response.text)
        except sparkwire.CallError as error:
            print("expand failed:", error, file=sys.stderr)
            failures += 1

        status, _ = conn.unary("/sparkops.testing.v1.EchoService/Nope", b"")
        print("unknown-method status", status.code)

    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A grpcio peer for the Skiff tests: server and client of skiff.test.Echo
(tests/proto/echo.proto), using generic handlers on raw bytes and a few lines
of protobuf encoding, so no generated code is needed.

    grpc_peer.py server          # serves on 127.0.0.1:0, prints "PORT <n>",
                                 # stops when stdin closes
    grpc_peer.py client TARGET   # runs every call kind against TARGET, prints
                                 # one JSON line per check; exit 0 if all pass
    grpc_peer.py client TARGET --root-cert FILE --server-name NAME
                                 # the same over TLS, trusting the roots in FILE
                                 # and checking the server's certificate for NAME

The server behaves as the Rust test server does: echo the payload, repeat,
wait delay_ms, fail with fail_code/fail_message and add `trailers` to the
trailing metadata; each response reports the metadata it received.
"""

import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "skiff.test.Echo"
MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

# --- protobuf wire format, just enough for EchoRequest / EchoResponse ---


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num, data):
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _field_varint(num, value):
    return _varint(num << 3) + _varint(value) if value else b""


def _map_entries(num, mapping):
    out = b""
    for k, v in mapping.items():
        entry = _field_bytes(1, k.encode()) + _field_bytes(2, v.encode())
        out += _field_bytes(num, entry)
    return out


def decode(data):
    """Field number -> list of values (int for varints, bytes otherwise)."""
    fields = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        fields.setdefault(num, []).append(value)
    return fields


def _read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _decode_map(entries):
    out = {}
    for e in entries:
        f = decode(e)
        out[f.get(1, [b""])[0].decode()] = f.get(2, [b""])[0].decode()
    return out


def encode_request(payload=b"", repeat=0, delay_ms=0, fail_code=0, fail_message="", trailers=None):
    return (
        (_field_bytes(1, payload) if payload else b"")
        + _field_varint(2, repeat)
        + _field_varint(3, delay_ms)
        + _field_varint(4, fail_code)
        + (_field_bytes(5, fail_message.encode()) if fail_message else b"")
        + _map_entries(6, trailers or {})
    )


def decode_request(data):
    f = decode(data)
    return {
        "payload": f.get(1, [b""])[0],
        "repeat": f.get(2, [0])[0],
        "delay_ms": f.get(3, [0])[0],
        "fail_code": f.get(4, [0])[0],
        "fail_message": f.get(5, [b""])[0].decode(),
        "trailers": _decode_map(f.get(6, [])),
    }


def encode_response(payload, index, seen):
    return (_field_bytes(1, payload) if payload else b"") + _field_varint(2, index) + _map_entries(3, seen)


def decode_response(data):
    f = decode(data)
    return {
        "payload": f.get(1, [b""])[0],
        "index": f.get(2, [0])[0],
        "seen": _decode_map(f.get(3, [])),
    }


# --- server ---

CODES = {c.value[0]: c for c in grpc.StatusCode}


def _seen(context):
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


def _instructions(req, context):
    if req["delay_ms"]:
        time.sleep(req["delay_ms"] / 1000.0)
    if req["fail_code"]:
        context.set_trailing_metadata(tuple(req["trailers"].items()))
        context.abort(CODES[req["fail_code"]], req["fail_message"])


def unary(data, context):
    req = decode_request(data)
    _instructions(req, context)
    context.set_trailing_metadata(tuple(req["trailers"].items()))
    return encode_response(req["payload"], 0, _seen(context))


def server_stream(data, context):
    req = decode_request(data)
    context.set_trailing_metadata(tuple(req["trailers"].items()))
    for i in range(max(req["repeat"], 1)):
        if req["delay_ms"]:
            time.sleep(req["delay_ms"] / 1000.0)
        yield encode_response(req["payload"], i, _seen(context))
    if req["fail_code"]:
        context.abort(CODES[req["fail_code"]], req["fail_message"])


def client_stream(request_iterator, context):
    payload = b""
    trailers = {}
    for data in request_iterator:
        req = decode_request(data)
        _instructions(req, context)
        trailers.update(req["trailers"])
        payload += req["payload"]
    context.set_trailing_metadata(tuple(trailers.items()))
    return encode_response(payload, 0, _seen(context))


def bidi(request_iterator, context):
    trailers = {}
    for i, data in enumerate(request_iterator):
        req = decode_request(data)
        _instructions(req, context)
        trailers.update(req["trailers"])
        context.set_trailing_metadata(tuple(trailers.items()))
        yield encode_response(req["payload"], i, _seen(context))


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    sys.stdin.read()  # the test closes stdin (or kills us) when done
    server.stop(grace=1).wait()


# --- client ---


def _channel(target, root_cert, server_name):
    if root_cert is None:
        return grpc.insecure_channel(target, options=OPTIONS)
    with open(root_cert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = list(OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, creds, options=options)


def run_client(target, root_cert=None, server_name=None):
    results = []

    def check(name, fn):
        try:
            ok, detail = fn()
        except Exception as e:  # a failed call is a failed check, reported
            ok, detail = False, "%s: %s" % (type(e).__name__, e)
        results.append(ok)
        print(json.dumps({"check": name, "ok": ok, "detail": detail}), flush=True)

    with _channel(target, root_cert, server_name) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        path = "/%s/" % SERVICE
        unary_call = channel.unary_unary(path + "Unary")
        server_stream_call = channel.unary_stream(path + "ServerStream")
        client_stream_call = channel.stream_unary(path + "ClientStream")
        bidi_call = channel.stream_stream(path + "Bidi")

        def small_unary():
            resp, call = unary_call.with_call(
                encode_request(b"hello", trailers={"x-trailer": "t1"}),
                timeout=10,
                metadata=(("x-request-id", "py-req-1"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
            )
            r = decode_response(resp)
            trailing = dict(call.trailing_metadata() or ())
            ok = (
                r["payload"] == b"hello"
                and r["seen"].get("x-request-id") == "py-req-1"
                and r["seen"].get("traceparent", "").startswith("00-0af7651916cd43dd8448eb211c80319c")
                and trailing.get("x-trailer") == "t1"
            )
            return ok, {"seen": r["seen"], "trailing": trailing}

        def large_unary():
            payload = bytes(range(256)) * (3 * 4096)  # 3 MiB
            r = decode_response(unary_call(encode_request(payload), timeout=20))
            return r["payload"] == payload, {"sent": len(payload), "got": len(r["payload"])}

        def server_streaming():
            got = [decode_response(m) for m in server_stream_call(encode_request(b"s", repeat=5), timeout=10)]
            return [m["index"] for m in got] == list(range(5)), {"indexes": [m["index"] for m in got]}

        def client_streaming():
            parts = [b"a", b"bb", b"ccc", b"dddd"]
            r = decode_response(client_stream_call(iter([encode_request(p) for p in parts]), timeout=10))
            return r["payload"] == b"".join(parts), {"payload": r["payload"].decode(errors="replace")}

        def bidi_streaming():
            parts = [("m%d" % i).encode() for i in range(5)]
            got = [decode_response(m)["payload"] for m in bidi_call(iter([encode_request(p) for p in parts]), timeout=10)]
            return got == parts, {"got": [g.decode(errors="replace") for g in got]}

        def error_status():
            try:
                unary_call(
                    encode_request(fail_code=9, fail_message="custom failure", trailers={"x-custom": "abc"}),
                    timeout=10,
                )
                return False, "the call succeeded"
            except grpc.RpcError as e:
                trailing = dict(e.trailing_metadata() or ())
                ok = (
                    e.code() == grpc.StatusCode.FAILED_PRECONDITION
                    and e.details() == "custom failure"
                    and trailing.get("x-custom") == "abc"
                )
                return ok, {"code": str(e.code()), "details": e.details(), "trailing": trailing}

        check("unary", small_unary)
        check("unary_3mib", large_unary)
        check("server_stream", server_streaming)
        check("client_stream", client_streaming)
        check("bidi", bidi_streaming)
        check("error_status", error_status)

    passed = sum(results)
    print(json.dumps({"passed": passed, "failed": len(results) - passed}), flush=True)
    return 0 if passed == len(results) else 1


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        serve()
        return 0
    if len(sys.argv) >= 3 and sys.argv[1] == "client":
        flags = dict(zip(sys.argv[3::2], sys.argv[4::2]))
        return run_client(sys.argv[2], flags.get("--root-cert"), flags.get("--server-name"))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

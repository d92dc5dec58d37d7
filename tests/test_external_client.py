"""A client generated from the .proto with stock grpcio-tools, outside the package, talks to the server."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLIENT = textwrap.dedent("""
    import struct, sys
    import grpc
    import interlock
    assert interlock.__file__ is None or "gen" in interlock.__file__, interlock.__file__
    from interlock.v1 import interlock_pb2 as pb, interlock_pb2_grpc as rpc

    def tensor_f32(values):
        data = struct.pack("<%df" % len(values), *values)
        return pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[len(values)], data=data)

    def req(theta, action):
        return pb.CheckRequest(agent_id="cartpole", observation=tensor_f32([0, 0, theta, 0]),
                               action=pb.Tensor(dtype=pb.DATA_TYPE_INT64, data=struct.pack("<q", action)))

    stub = rpc.GuardStub(grpc.insecure_channel(sys.argv[1]))
    d = stub.Check(req(0.0, 1))
    print("check", pb.Verdict.Name(d.verdict), struct.unpack("<q", d.action.data)[0])
    out = stub.CheckBatch(pb.CheckBatchRequest(requests=[req(0.15, 1), req(0.0, 1)]))
    print("batch", [pb.Verdict.Name(x.verdict) for x in out.decisions])
    out = list(stub.CheckStream(iter([req(0.0, 1), req(0.15, 1), req(0.0, 0)])))
    print("stream", [pb.Verdict.Name(x.verdict) for x in out])
""")


def test_stock_generated_client(server, tmp_path):
    proto_root = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto_root)
    gen = tmp_path / "gen"
    gen.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            "interlock/v1/interlock.proto",
        ],
        check=True,
        cwd=tmp_path,
    )
    # Regular packages in gen/ shadow the installed interlock package for the script's sys.path[0].
    (gen / "interlock" / "__init__.py").write_text("")
    (gen / "interlock" / "v1" / "__init__.py").write_text("")
    (gen / "client.py").write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, str(gen / "client.py"), f"127.0.0.1:{server.port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=gen,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "check VERDICT_ALLOW 1",
        "batch ['VERDICT_SUBSTITUTE', 'VERDICT_ALLOW']",
        "stream ['VERDICT_ALLOW', 'VERDICT_SUBSTITUTE', 'VERDICT_ALLOW']",
    ]

"""Server reflection under both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only v1alpha, but current grpcurl and Postman ask for v1
first. The two protocols are the same messages under another package name, with the
same field numbers, so the bytes on the wire are identical: grpcio-reflection's own
servicer answers both, registered once per service name. The v1 file descriptor
(v1alpha's, renamed) is added to the descriptor pool so that clients can also
describe ``grpc.reflection.v1.ServerReflection`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def add_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` (the default one), once."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto()
    alpha_pb2.DESCRIPTOR.CopyToProto(fdp)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    fdp.name, fdp.package = V1_FILE, "grpc.reflection.v1"
    fdp.ClearField("options")  # v1alpha's java/go package options
    for message in fdp.message_type:
        for f in message.field:
            if f.HasField("type_name"):  # message-typed fields only (setting it on a string breaks it)
                f.type_name = f.type_name.replace(old, new)
    for service in fdp.service:
        for m in service.method:
            m.input_type = m.input_type.replace(old, new)
            m.output_type = m.output_type.replace(old, new)
    pool.AddSerializedFile(fdp.SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (and both reflection services) under v1 and v1alpha."""
    add_v1_descriptor()
    servicer = ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME))
    alpha_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha_pb2.ServerReflectionRequest.FromString,  # same wire format as v1
        response_serializer=alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )

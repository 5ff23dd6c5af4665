"""A client that knows nothing but an address, as grpcurl does.

Usage: reflection_client.py HOST:PORT PROTO_ROOT

1. Lists services through server reflection, v1 and v1alpha.
2. Describes aura.v1.Gateway from the descriptors the server sends (imports fetched by
   file name, like grpcurl).
3. Checks grpc.health.v1.
4. Generates stubs from proto/ with grpcio-tools and runs the `py` workflow through
   StartRun / GetRun.
"""

import importlib
import pathlib
import sys
import tempfile
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2


def reflect(channel, flavour, request):
    """One request on /grpc.reflection.<flavour>.ServerReflection (v1 and v1alpha share the
    wire format)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{flavour}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([request]), timeout=10))
    assert len(responses) == 1, responses
    if responses[0].HasField("error_response"):
        raise RuntimeError(f"{flavour}: {responses[0].error_response}")
    return responses[0]


def list_services(channel, flavour):
    resp = reflect(channel, flavour, reflection_pb2.ServerReflectionRequest(list_services=""))
    return sorted(s.name for s in resp.list_services_response.service)


def describe(channel, symbol):
    pool = descriptor_pool.DescriptorPool()
    seen = set()

    def add(file_bytes):
        fd = descriptor_pb2.FileDescriptorProto.FromString(file_bytes)
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependency:
            if dep not in seen:
                resp = reflect(channel, "v1", reflection_pb2.ServerReflectionRequest(file_by_filename=dep))
                for b in resp.file_descriptor_response.file_descriptor_proto:
                    add(b)
        pool.Add(fd)

    resp = reflect(channel, "v1", reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    for b in resp.file_descriptor_response.file_descriptor_proto:
        add(b)
    return pool.FindServiceByName(symbol)


def main():
    addr, proto_root = sys.argv[1], pathlib.Path(sys.argv[2])
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)

    v1 = list_services(channel, "v1")
    v1alpha = list_services(channel, "v1alpha")
    print("services(v1): " + " ".join(v1))
    print("services(v1alpha): " + " ".join(v1alpha))
    assert "aura.v1.Gateway" in v1 and "aura.v1.Gateway" in v1alpha
    assert "grpc.health.v1.Health" in v1 and v1 == v1alpha, (v1, v1alpha)

    service = describe(channel, "aura.v1.Gateway")
    methods = [m.name for m in service.methods]
    print("describe aura.v1.Gateway: " + " ".join(methods))
    for needed in ["RegisterWorkflow", "StartRun", "GetRun", "WatchRun", "Subscribe", "PollTasks"]:
        assert needed in methods, needed

    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    print("health: " + health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    files = [str(p.relative_to(proto_root)) for p in sorted((proto_root / "aura" / "v1").glob("*.proto"))]
    include = pathlib.Path(importlib.import_module("grpc_tools").__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    assert rc == 0, f"protoc failed with {rc}"
    sys.path.insert(0, out)
    run_pb2 = importlib.import_module("aura.v1.run_pb2")
    gateway_grpc = importlib.import_module("aura.v1.gateway_pb2_grpc")
    gateway = gateway_grpc.GatewayStub(channel)
    started = gateway.StartRun(run_pb2.StartRunRequest(workflow_name="py"), timeout=10)
    deadline = time.time() + 30
    while True:
        run = gateway.GetRun(run_pb2.GetRunRequest(run_id=started.run.run_id), timeout=10).run
        if run.state in (run_pb2.RUN_STATE_SUCCEEDED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED):
            break
        assert time.time() < deadline, "run did not finish"
        time.sleep(0.05)
    print("run: " + run_pb2.RunState.Name(run.state))
    try:
        gateway.GetRun(run_pb2.GetRunRequest(run_id="nope"), timeout=5)
        raise AssertionError("a malformed run id must be rejected")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.code()
        print("bad run id: INVALID_ARGUMENT")


if __name__ == "__main__":
    main()

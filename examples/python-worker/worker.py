#!/usr/bin/env python3
"""An AURA external worker in Python: it executes the `external` steps of one queue.

It talks only to the Gateway, with stubs generated from proto/ at start (grpcio-tools):

    PollTasks          long-poll for as many tasks as it has free threads (pull: never pushed)
    ReportTaskResults  one output or error per task, batched
    HeartbeatTasks     every second for the tasks in flight, so long tasks keep their lease;
                       an answer of CANCELLED or LOST stops the task

On SIGTERM (or Ctrl-C) it stops polling, lets running tasks finish for up to
--drain-timeout seconds and hands the rest back, so they run again at once elsewhere.

The task handler is `handle` below: it upper-cases `input.text`. Replace it with yours.

Usage: worker.py [--gateway HOST:PORT] [--queue py-queue] [--concurrency 4]
Needs: pip install grpcio grpcio-tools
"""

import argparse
import importlib
import logging
import os
import pathlib
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

log = logging.getLogger("aura-python-worker")

POLL_WAIT_SECONDS = 5  # how long one PollTasks waits when the queue is empty
HEARTBEAT_EVERY_SECONDS = 1.0
LEASE_EXTENSION_SECONDS = 10  # each heartbeat extends a lease to now + this


# --------------------------------------------------------------------------------------
# The work itself.


class TaskFailed(Exception):
    """A failed attempt. `retryable=False` fails the step without further attempts."""

    def __init__(self, message, retryable=False):
        super().__init__(message)
        self.retryable = retryable


class Cancelled(Exception):
    """The run was cancelled (or the lease lost) while the task ran: report nothing."""


def handle(task_input, dependency_outputs, cancelled):
    """Upper-cases `input.text`. `input.sleep_seconds` makes it a long task (it keeps its
    lease through heartbeats and stops when `cancelled` is set)."""
    text = task_input.get("text")
    if not isinstance(text, str):
        raise TaskFailed(f"input.text must be a string, got {text!r}")
    if cancelled.wait(float(task_input.get("sleep_seconds") or 0)):
        raise Cancelled()
    return {"upper": text.upper(), "length": len(text)}


# --------------------------------------------------------------------------------------
# Stubs generated from proto/.


def generate_stubs(proto_root):
    """Compiles proto/aura/v1/*.proto into a temporary directory and imports the modules."""
    from grpc_tools import protoc

    out = tempfile.TemporaryDirectory(prefix="aura-stubs-")
    files = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "aura" / "v1").glob("*.proto"))
    if not files:
        sys.exit(f"no .proto files under {proto_root / 'aura' / 'v1'} (see --proto-root)")
    include = pathlib.Path(importlib.import_module("grpc_tools").__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out.name}", f"--grpc_python_out={out.name}"]
    if protoc.main(args + files) != 0:
        sys.exit("generating stubs from proto/ failed")
    sys.path.insert(0, out.name)
    task_pb2 = importlib.import_module("aura.v1.task_pb2")
    gateway_pb2_grpc = importlib.import_module("aura.v1.gateway_pb2_grpc")
    return out, task_pb2, gateway_pb2_grpc


# --------------------------------------------------------------------------------------
# The worker loop.


class InFlight:
    def __init__(self, lease_token):
        self.lease_token = lease_token
        self.cancelled = threading.Event()


class Worker:
    def __init__(self, stub, pb, worker_id, queue_name, concurrency, drain_timeout):
        self.stub = stub
        self.pb = pb
        self.worker_id = worker_id
        self.queue_name = queue_name
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self.stopping = threading.Event()  # set by SIGTERM / SIGINT
        self.lock = threading.Lock()
        self.in_flight = {}  # task_id -> InFlight
        self.slot_freed = threading.Event()
        self.results = queue.Queue()  # TaskResult messages to report; None ends the reporter
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="task")
        self.finished = 0
        self.handed_back = 0

    # ---- main loop

    def run(self):
        reporter = threading.Thread(target=self.report_loop, name="reporter")
        heartbeats = threading.Thread(target=self.heartbeat_loop, name="heartbeats", daemon=True)
        reporter.start()
        heartbeats.start()
        log.info("polling queue %s as %s with %d threads", self.queue_name, self.worker_id, self.concurrency)
        backoff = 0.1
        while not self.stopping.is_set():
            with self.lock:
                free = self.concurrency - len(self.in_flight)
            if free <= 0:
                self.slot_freed.wait(0.5)
                self.slot_freed.clear()
                continue
            request = self.pb.PollTasksRequest(
                worker_id=self.worker_id,
                queues=[self.queue_name],
                max_tasks=min(free, 1000),
                wait=duration_pb2.Duration(seconds=POLL_WAIT_SECONDS),
            )
            try:
                # A poll is never cut short (the tasks it claims would be stuck until their
                # leases expire); its deadline only guards against a dead connection.
                tasks = self.stub.PollTasks(request, timeout=POLL_WAIT_SECONDS + 10).tasks
            except grpc.RpcError as err:
                log.warning("poll failed (%s: %s); retrying in %.1fs", err.code().name, err.details(), backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for task in tasks:
                if self.stopping.is_set():
                    self.hand_back(task.task_id, task.lease_token, "worker is stopping")
                else:
                    self.start(task)
        self.drain()
        self.results.put(None)
        reporter.join(timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped: %d tasks finished, %d handed back", self.finished, self.handed_back)

    def start(self, task):
        entry = InFlight(task.lease_token)
        with self.lock:
            self.in_flight[task.task_id] = entry
        self.pool.submit(self.execute, task, entry)

    def execute(self, task, entry):
        pb = self.pb
        result = None
        try:
            task_input = json_format.MessageToDict(task.input)
            deps = {k: json_format.MessageToDict(v) for k, v in task.dependency_outputs.items()}
            output = handle(task_input, deps, entry.cancelled)
            value = struct_pb2.Value()
            json_format.ParseDict(output, value)
            result = pb.TaskResult(task_id=task.task_id, lease_token=task.lease_token, output=value)
            log.info("task %s (attempt %d) done", task.task_id, task.attempt)
        except Cancelled:
            log.info("task %s cancelled", task.task_id)
        except TaskFailed as err:
            log.info("task %s failed: %s", task.task_id, err)
            error = pb.TaskError(message=str(err), retryable=err.retryable)
            result = pb.TaskResult(task_id=task.task_id, lease_token=task.lease_token, error=error)
        except Exception as err:  # a bug in the handler: worth another attempt
            log.exception("task %s raised", task.task_id)
            error = pb.TaskError(message=f"{type(err).__name__}: {err}", retryable=True)
            result = pb.TaskResult(task_id=task.task_id, lease_token=task.lease_token, error=error)
        with self.lock:
            owned = self.in_flight.pop(task.task_id, None) is entry
        # A task stopped by a heartbeat (cancelled, lease lost) or handed back by the drain
        # is no longer ours: its result would be refused.
        if owned and result is not None:
            with self.lock:
                self.finished += 1
            self.results.put(result)
        self.slot_freed.set()

    def hand_back(self, task_id, lease_token, why):
        """Returns a task unfinished: ready again at once, and the attempt does not count."""
        with self.lock:
            self.handed_back += 1
        error = self.pb.TaskError(message=why, retryable=True, release=True)
        self.results.put(self.pb.TaskResult(task_id=task_id, lease_token=lease_token, error=error))

    def drain(self):
        log.info("draining: %d tasks in flight, up to %.0fs", len(self.in_flight), self.drain_timeout)
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.in_flight:
                    break
            time.sleep(0.05)
        with self.lock:
            leftovers = list(self.in_flight.items())
            self.in_flight.clear()
        for task_id, entry in leftovers:
            entry.cancelled.set()
            self.hand_back(task_id, entry.lease_token, "worker stopped before the task finished")

    # ---- reporting and heartbeats

    def report_loop(self):
        done = False
        while not done:
            batch = [self.results.get()]
            while len(batch) < 500:
                try:
                    batch.append(self.results.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                done = True
                batch = [r for r in batch if r is not None]
            if batch:
                self.report(batch)

    def report(self, batch):
        request = self.pb.ReportTaskResultsRequest(worker_id=self.worker_id, results=batch)
        for attempt in range(10):
            try:
                acks = self.stub.ReportTaskResults(request, timeout=10).acks
                for ack in acks:
                    if not ack.accepted:
                        log.info("result of %s refused: %s", ack.task_id, ack.reason)
                return
            except grpc.RpcError as err:
                log.warning("reporting failed (%s); retrying", err.code().name)
                time.sleep(min(0.1 * 2**attempt, 2.0))
        log.error("giving up reporting %d results; they retry when their leases expire", len(batch))

    def heartbeat_loop(self):
        pb = self.pb
        while True:
            time.sleep(HEARTBEAT_EVERY_SECONDS)
            with self.lock:
                leases = [pb.TaskLease(task_id=t, lease_token=e.lease_token) for t, e in self.in_flight.items()]
            if not leases:
                continue
            request = pb.HeartbeatTasksRequest(
                worker_id=self.worker_id,
                leases=leases,
                extend_by=duration_pb2.Duration(seconds=LEASE_EXTENSION_SECONDS),
            )
            try:
                beats = self.stub.HeartbeatTasks(request, timeout=5).heartbeats
            except grpc.RpcError as err:
                log.warning("heartbeat failed (%s)", err.code().name)
                continue
            except ValueError:  # the channel was closed: the worker is exiting
                return
            for beat in beats:
                if beat.status in (pb.LEASE_STATUS_CANCELLED, pb.LEASE_STATUS_LOST):
                    with self.lock:
                        entry = self.in_flight.pop(beat.task_id, None)
                    if entry is not None:
                        log.info("stopping task %s: %s", beat.task_id, pb.LeaseStatus.Name(beat.status))
                        entry.cancelled.set()
                        self.slot_freed.set()


def main():
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default=os.environ.get("AURA_GATEWAY_URL", "127.0.0.1:50051"),
                        help="Gateway address, host:port or http://host:port [$AURA_GATEWAY_URL]")
    parser.add_argument("--queue", default=os.environ.get("AURA_QUEUE", "py-queue"),
                        help="queue named by the external steps' config [$AURA_QUEUE]")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("AURA_CONCURRENCY", "4")),
                        help="tasks run at once [$AURA_CONCURRENCY]")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds running tasks get to finish on SIGTERM")
    parser.add_argument("--worker-id", default=f"python-{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--proto-root", type=pathlib.Path, default=here.parent.parent / "proto",
                        help="directory holding aura/v1/*.proto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be 1-1000")

    stubs_dir, task_pb2, gateway_pb2_grpc = generate_stubs(args.proto_root.resolve())
    target = args.gateway.removeprefix("http://")
    channel = grpc.insecure_channel(target)
    worker = Worker(
        gateway_pb2_grpc.GatewayStub(channel), task_pb2, args.worker_id, args.queue, args.concurrency,
        args.drain_timeout,
    )

    def stop(signum, _frame):
        log.info("%s received: stopping", signal.Signals(signum).name)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        channel.close()
        stubs_dir.cleanup()


if __name__ == "__main__":
    main()

// BullMQ peer for AURA's queue-core benchmark (scenario 1 and 4 of issue 9).
//
// Our own script, modelled on the method of /work/shared/peers/bullmq/RESULTS.md (a, bulk
// throughput). It is normally driven by `aura-bench` (crates/aura-bench), which starts the
// redis-server, FLUSHALLs it before each scenario and parses the one JSON line printed on
// stdout. It can also be run by hand:
//
//   REDIS_PORT=6390 N_BULK=20000 CONCURRENCY=10 node bench.mjs bulk
//
// Method (same clock points as AURA's side, crates/aura-bench/src/bulk.rs):
// - One Node process holds the producer (Queue) and the consumer (Worker). The Worker is
//   created with autorun:false and waitUntilReady() before any clock starts.
// - t0..t1: queue.addBulk in batches of BULK_BATCH, each awaited before the next. Job name
//   'noop', data { i }, BullMQ's default job options (completed jobs are kept).
// - t1b: worker.run(); the processor is `async () => null`; t2 = the N-th 'completed'
//   event. Enqueue and processing never overlap.
// - Around each phase an admin connection sends `ECHO aura-bench:phase:<name>` (a marker
//   for MONITOR), `CONFIG RESETSTAT`, and afterwards `INFO commandstats cpu`. The harness
//   parses those texts exactly as it does AURA's; its own echo/config/info are excluded.
// - Node's CPU (process.cpuUsage) and the machine's /proc/stat "cpu" line are read at the
//   same points, so the harness can tell how busy the client and the rest of the machine
//   were.
// - Optionally (WARMUP_JOBS > 0) an unmeasured round of the same scenario on another queue
//   runs first, so the measured one does not pay for V8's JIT warm-up.
//
// Environment (defaults): REDIS_HOST (127.0.0.1), REDIS_PORT (6390), N_BULK (20000),
// BULK_BATCH (1000), CONCURRENCY (10), QUEUE_NAME (bench-<time>), SCENARIO_TIMEOUT_MS
// (600000), WARMUP_JOBS (0; the harness passes its BENCH_WARMUP_JOBS), N_LAT (1000),
// LAT_WARMUP (100), LAT_CONCURRENCY (10). Modes: `bulk` (scenario 1), `latency`
// (scenario 3) and `versions`. THE TARGET REDIS IS NOT FLUSHED HERE: use an empty,
// private instance.

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Queue, QueueEvents, Worker } from 'bullmq';
import IORedis from 'ioredis';

const env = process.env;
const host = env.REDIS_HOST ?? '127.0.0.1';
const port = Number(env.REDIS_PORT ?? 6390);
const mode = process.argv[2] ?? 'bulk';
const N = Number(env.N_BULK ?? 20000);
const BATCH = Number(env.BULK_BATCH ?? 1000);
const C = Number(env.CONCURRENCY ?? 10);
const QUEUE_NAME = env.QUEUE_NAME ?? `bench-${Date.now()}`;
const TIMEOUT_MS = Number(env.SCENARIO_TIMEOUT_MS ?? 600000);
const WARMUP_JOBS = Number(env.WARMUP_JOBS ?? 0);

const pkg = (name) => JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), 'utf8')).version;
const hostCpuLine = () => readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith('cpu ')) ?? '';
const nodeCpuS = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

// BullMQ creates its own connections from these options (the Worker's blocking one
// requires maxRetriesPerRequest: null).
const connection = { host, port, maxRetriesPerRequest: null };

// An unmeasured round of the same scenario on another queue, so the measured one does not
// pay for V8's JIT warm-up (each scenario runs in a fresh Node process); the queue is
// obliterated afterwards.
async function warmup(n) {
  const name = `${QUEUE_NAME}-warmup`;
  const queue = new Queue(name, { connection });
  const worker = new Worker(name, async () => null, { connection, concurrency: C, autorun: false });
  await queue.waitUntilReady();
  await worker.waitUntilReady();
  let completed = 0;
  const done = new Promise((resolve) => {
    worker.on('completed', () => { completed += 1; if (completed === n) resolve(); });
  });
  for (let next = 0; next < n; next += BATCH) {
    const jobs = [];
    for (let i = next; i < Math.min(next + BATCH, n); i += 1) jobs.push({ name: 'noop', data: { i } });
    await queue.addBulk(jobs);
  }
  const running = worker.run();
  await done;
  await worker.close();
  await running;
  await queue.obliterate({ force: true });
  await queue.close();
}

async function bulk() {
  if (WARMUP_JOBS > 0) await warmup(WARMUP_JOBS);
  const admin = new IORedis({ host, port, maxRetriesPerRequest: null });
  const info = () => admin.info('commandstats', 'cpu');

  const queue = new Queue(QUEUE_NAME, { connection });
  const worker = new Worker(QUEUE_NAME, async () => null, { connection, concurrency: C, autorun: false });
  await queue.waitUntilReady();
  await worker.waitUntilReady();

  let completed = 0;
  let failed = 0;
  let t2 = 0;
  let resolveDone;
  const done = new Promise((resolve) => { resolveDone = resolve; });
  worker.on('completed', () => {
    completed += 1;
    if (completed === N) { t2 = performance.now(); resolveDone(); }
  });
  worker.on('failed', () => { failed += 1; });
  worker.on('error', (err) => { console.error('worker error', err); });

  // Enqueue phase.
  const infoStart = await info();
  const host0 = hostCpuLine();
  const node0 = nodeCpuS();
  await admin.echo('aura-bench:phase:enqueue');
  await admin.config('RESETSTAT');
  const t0 = performance.now();
  for (let next = 0; next < N; next += BATCH) {
    const jobs = [];
    for (let i = next; i < Math.min(next + BATCH, N); i += 1) jobs.push({ name: 'noop', data: { i } });
    await queue.addBulk(jobs);
  }
  const t1 = performance.now();
  const infoEnqueue = await info();
  const host1 = hostCpuLine();
  const node1 = nodeCpuS();

  // Process phase.
  await admin.echo('aura-bench:phase:process');
  await admin.config('RESETSTAT');
  const t1b = performance.now();
  const running = worker.run();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${completed}/${N} completed`)), TIMEOUT_MS);
  });
  await Promise.race([done, timeout]);
  clearTimeout(timer);
  const infoProcess = await info();
  const host2 = hostCpuLine();
  const node2 = nodeCpuS();
  await admin.echo('aura-bench:phase:end');

  const counts = await queue.getJobCounts('wait', 'active', 'completed', 'failed', 'delayed');
  await worker.close();
  await running;
  await queue.close();
  await admin.quit();

  return {
    scenario: 'bulk',
    system: 'bullmq',
    n: N,
    batch: BATCH,
    concurrency: C,
    enqueue_s: (t1 - t0) / 1000,
    process_s: (t2 - t1b) / 1000,
    total_s: (t2 - t0) / 1000,
    info_start: infoStart,
    info_enqueue: infoEnqueue,
    info_process: infoProcess,
    node_cpu_s: [node0, node1, node2],
    host_cpu: [host0, host1, host2],
    completed_events: completed,
    failed_events: failed,
    final_counts: counts,
    versions: { node: process.version, bullmq: pkg('bullmq'), ioredis: pkg('ioredis') },
  };
}

// Latency (scenario 3), as in /work/shared/peers/bullmq/RESULTS.md (b): a Worker with
// concurrency LAT_CONCURRENCY and a QueueEvents run the whole time; one job is added with
// `await queue.add()`, then `await job.waitUntilFinished(queueEvents)`, then the next.
// LAT_WARMUP jobs are discarded, N_LAT measured (performance.now()).
async function latency() {
  const n = Number(env.N_LAT ?? 1000);
  const warm = Number(env.LAT_WARMUP ?? 100);
  const queue = new Queue(QUEUE_NAME, { connection });
  const events = new QueueEvents(QUEUE_NAME, { connection });
  const worker = new Worker(QUEUE_NAME, async () => null, { connection, concurrency: Number(env.LAT_CONCURRENCY ?? 10) });
  await queue.waitUntilReady();
  await events.waitUntilReady();
  await worker.waitUntilReady();
  const samples = [];
  for (let i = 0; i < warm + n; i += 1) {
    const t0 = performance.now();
    const job = await queue.add('noop', { i });
    await job.waitUntilFinished(events, TIMEOUT_MS);
    if (i >= warm) samples.push(performance.now() - t0);
  }
  await worker.close();
  await events.close();
  await queue.close();
  const sorted = [...samples].sort((a, b) => a - b);
  const pct = (p) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
  return { scenario: 'latency', system: 'bullmq', n, p50_ms: pct(50), p90_ms: pct(90), p99_ms: pct(99), samples_ms: samples };
}

async function versions() {
  return { node: process.version, bullmq: pkg('bullmq'), ioredis: pkg('ioredis') };
}

const modes = { bulk, latency, versions };
if (!modes[mode]) {
  console.error(`unknown mode ${mode}; one of ${Object.keys(modes).join(', ')}`);
  process.exit(2);
}
try {
  const out = await modes[mode]();
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
} catch (err) {
  console.error(err);
  process.exit(1);
}

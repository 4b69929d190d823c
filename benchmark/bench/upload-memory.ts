/**
 * Run as its own process (compiled: node dist/benchmark/bench/upload-memory.js FILE ENDPOINT KEY SECRET BUCKET):
 * uploads FILE through the worker's storage module and prints {baseline, peak, growth} of this process's RSS in MB,
 * sampled every 20 ms.
 */
import { stat } from "node:fs/promises";
import { ObjectStorage } from "../../handlers/storage/s3.js";

const [file, endpoint, key, secret, bucket] = process.argv.slice(2) as [
  string,
  string,
  string,
  string,
  string,
];
const storage = new ObjectStorage({
  forcePathStyle: true,
  partSizeBytes: 8 * 1024 * 1024,
  presignExpirySeconds: 3600,
  uploadTimeoutMs: 600_000,
});
const mb = (n: number) => n / 1024 / 1024;
globalThis.gc?.();
await new Promise((r) => setTimeout(r, 500));
const baseline = process.memoryUsage().rss;
let peak = baseline;
const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
const t = performance.now();
await storage.put(
  {
    accessKeyId: key,
    secretAccessKey: secret,
    endpointUrl: endpoint,
    bucketName: bucket,
    region: "us-east-1",
  },
  `memory/${Date.now()}.bin`,
  file,
);
clearInterval(timer);
storage.close();
const size = (await stat(file)).size;
process.stdout.write(
  `${JSON.stringify({ baselineMb: mb(baseline), peakMb: mb(peak), growthMb: mb(peak - baseline), bytes: size, seconds: (performance.now() - t) / 1000 })}\n`,
);

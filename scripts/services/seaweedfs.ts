import { writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { CreateBucketCommand, S3Client, BucketAlreadyOwnedByYou } from "@aws-sdk/client-s3";
import { answers, freePort, startService, type Service } from "./child.js";
import { runInstallScript } from "./install.js";

export interface S3Options {
  host: string;
  port: number;
  dataDir: string;
  accessKeyId: string;
  secretAccessKey: string;
  buckets: string[];
  logFile: string;
}

export interface S3Service extends Service {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** Starts SeaweedFS (master, volume, filer and S3 gateway in one process) with one admin identity. */
export async function startS3(opts: S3Options): Promise<S3Service> {
  const bin = await runInstallScript("install-tools.sh");
  await mkdir(opts.dataDir, { recursive: true });
  const config = join(opts.dataDir, "s3-identities.json");
  await writeFile(
    config,
    JSON.stringify({
      identities: [
        {
          name: "worker",
          credentials: [{ accessKey: opts.accessKeyId, secretKey: opts.secretAccessKey }],
          actions: ["Admin", "Read", "Write", "List", "Tagging"],
        },
      ],
    }),
  );
  // Every internal port is chosen here so that several stacks (tests, a developer's stack) can coexist.
  const [master, volume, filer] = [await freePort(), await freePort(), await freePort()];
  const grpc = [await freePort(), await freePort(), await freePort(), await freePort()];
  const endpoint = `http://${opts.host}:${opts.port}`;
  const service = await startService({
    name: "SeaweedFS S3",
    command: join(bin, "weed"),
    args: [
      "server",
      `-ip=${opts.host}`,
      `-ip.bind=${opts.host}`,
      `-dir=${opts.dataDir}`,
      `-master.port=${master}`,
      `-master.port.grpc=${grpc[0]}`,
      "-master.telemetry=false",
      `-volume.port=${volume}`,
      `-volume.port.grpc=${grpc[1]}`,
      "-volume.max=20",
      "-filer",
      `-filer.port=${filer}`,
      `-filer.port.grpc=${grpc[2]}`,
      "-s3",
      `-s3.port=${opts.port}`,
      `-s3.port.grpc=${grpc[3]}`,
      "-s3.port.iceberg=0",
      "-s3.port.lance=0",
      `-s3.config=${config}`,
    ],
    logFile: opts.logFile,
    ready: (signal) => answers(endpoint, signal),
    timeoutMs: 60_000,
  });
  const s3: S3Service = Object.assign(service, {
    endpoint,
    region: "us-east-1",
    accessKeyId: opts.accessKeyId,
    secretAccessKey: opts.secretAccessKey,
  });
  await createBuckets(s3, opts.buckets);
  return s3;
}

async function createBuckets(s3: S3Service, buckets: string[]): Promise<void> {
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  try {
    for (const bucket of buckets) {
      // The gateway can answer before the filer is ready for writes: retry briefly.
      for (let attempt = 0; ; attempt++) {
        try {
          await client.send(new CreateBucketCommand({ Bucket: bucket }), {
            abortSignal: AbortSignal.timeout(10_000),
          });
          break;
        } catch (err) {
          if (err instanceof BucketAlreadyOwnedByYou) break;
          if (attempt >= 20) throw err;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    }
  } finally {
    client.destroy();
  }
}

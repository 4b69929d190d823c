import { Command } from "commander";
import { RouterEmulator } from "./emulator.js";

const program = new Command()
  .name("router-emulator")
  .description(
    "A local Vast router/autoscaler: /route/ (signed auth_data), /pubkey/, /worker_status/, /delete_requests/,\n" +
      "and GET /workers to see what workers report. Point workers at it with REPORT_ADDR and the vastai client\n" +
      'with autoscaler_url (or instance="local" on the default port).',
  )
  .option("--host <host>", "address to listen on", "127.0.0.1")
  .option("--port <port>", "port to listen on", "8080")
  .option("--api-key <key>", "accept only this API key on /route/ (default: any)")
  .action(async (opts: { host: string; port: string; apiKey?: string }) => {
    const emulator = new RouterEmulator({
      host: opts.host,
      port: Number(opts.port),
      ...(opts.apiKey !== undefined && { apiKey: opts.apiKey }),
      log: (line) => console.log(`[router] ${line}`),
    });
    const url = await emulator.listen();
    console.log(`[router] listening on ${url}`);
    const stop = () => void emulator.close().then(() => process.exit(0));
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });

await program.parseAsync(process.argv);

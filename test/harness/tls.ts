import { execFileSync } from "node:child_process";

/**
 * Writes a self-signed certificate and its key with the real openssl (RSA 2048, one day): for `/CN=<ip>` with that
 * IP as its subject alternative name when `ip` is given (a server clients verify), else only the common name.
 */
export function selfSignedCert(opts: { cn: string; ip?: string; key: string; crt: string }): void {
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      `/CN=${opts.cn}`,
      ...(opts.ip ? ["-addext", `subjectAltName=IP:${opts.ip}`] : []),
      "-keyout",
      opts.key,
      "-out",
      opts.crt,
    ],
    { stdio: "ignore" },
  );
}

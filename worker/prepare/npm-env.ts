/**
 * npm sees only what npm needs: PATH, HOME, TMPDIR, the locale, npm's own settings (npm_config_*), the proxies
 * and Node's settings (NODE_*); never the worker's secrets (S3 keys, MASTER_TOKEN, webhook and Hugging Face
 * tokens, a token in PYWORKER_REPO or PROVISIONING_SCRIPT). An allow-list, so that a secret under a name nobody
 * foresaw stays out too; names shaped like a secret (*_TOKEN, *_KEY, *_SECRET, *_PASSWORD) stay out even within
 * it. A package's install script (one of them is a telemetry beacon) would see this environment and no more, and
 * npm runs none of them anyway (--ignore-scripts).
 */
const NPM_NAMES = /^(path|home|tmpdir|lang|lc_\w*|npm_config_\w*|node_\w*|(http|https|no|all)_proxy)$/;
const SECRET_SHAPED = /_(token|key|secret|password)$/;

export function npmEnvironment(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const allowed: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    const lower = name.toLowerCase();
    if (value === undefined || !NPM_NAMES.test(lower) || SECRET_SHAPED.test(lower)) continue;
    allowed[name] = value;
  }
  return allowed;
}

/**
 * A URL reduced to scheme, host and port, for logs: webhook URLs (Slack, Discord...) carry their token in the path
 * or query, and a URL may carry credentials. Anything that does not parse is not printed at all.
 */
export function redactUrl(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return "(not a URL)";
  }
}

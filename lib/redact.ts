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

/**
 * A URL that names a file (a model reference) as logs and errors show it: its scheme, host and path, without
 * credentials, query or fragment (a pre-signed URL's signature, a token); "(not a URL)" when it does not parse.
 */
export function redactUrlKeepingPath(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return "(not a URL)";
  }
}

// A URL in running text: scheme:// up to the next blank; the punctuation that ends a sentence or a quote is not
// part of it.
const URL_IN_TEXT = /[A-Za-z][A-Za-z0-9+.-]*:\/\/\S*/g;
const TRAILING_PUNCTUATION = /[\]'"),.;:!?>]+$/;

/**
 * Text with each URL in it redacted as redactUrl does: what a child program (git, a failed download) says may quote
 * a URL with its token, and every such line passes through here before it is logged or reported.
 */
export function redactText(text: string): string {
  return text.replace(URL_IN_TEXT, (url) => {
    const trailing = TRAILING_PUNCTUATION.exec(url)?.[0] ?? "";
    return redactUrl(url.slice(0, url.length - trailing.length)) + trailing;
  });
}

/**
 * A source setting (a repository, a script: a URL or a local path) as it may be shown: a path as it is, anything
 * with a scheme (a URL, user:password@host...) redacted.
 */
export function redactSource(source: string): string {
  return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(source) ? redactUrl(source)! : source;
}

import { ConfigError } from "../../config/index.js";

/** The ConfigError `fn` throws (failing the test when it throws nothing, or something else). */
export function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error("expected a ConfigError, nothing was thrown");
}

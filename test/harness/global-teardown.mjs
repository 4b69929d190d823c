export { default } from "./stack-teardown.ts";

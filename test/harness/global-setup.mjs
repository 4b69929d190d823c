// Jest loads global setup outside its own transform: the tsx loader (node --import tsx, see package.json) runs
// the TypeScript.
export { default } from "./stack-setup.ts";

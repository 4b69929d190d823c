#!/usr/bin/env node
import { buildProgram } from "./program.js";

// Production runs Node 22/24; Node 20 is still the system Node on some development machines, where the AWS SDK
// prints a 7-line "versions after January 2027 need Node 22" warning on every command. Its documented switch
// (aws/aws-sdk-js-v3#7983) turns that off, unless the user set it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
await buildProgram().parseAsync(process.argv);

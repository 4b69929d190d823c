import type { Command } from "commander";
import { buildProgram } from "../../worker/program.js";

/**
 * The CLI's help screens: commander wraps every description to the terminal's width, so a line break written into
 * one comes out as a stray short line ("on the routed" / "port"). Each text is one logical line, and each screen
 * fits the widths it is read at.
 */
function commands(program: Command): Command[] {
  return [program, ...program.commands.flatMap(commands)];
}

function texts(command: Command): [string, string][] {
  const name = command.name();
  return [
    [`${name}: description`, command.description()],
    [`${name}: summary`, command.summary()],
    ...command.options.map((o): [string, string] => [`${name} ${o.flags}`, o.description]),
    ...command.registeredArguments.map((a): [string, string] => [`${name} <${a.name()}>`, a.description]),
  ];
}

test("every command has a description", () => {
  const program = buildProgram();
  const names = program.commands.map((c) => c.name());
  expect(names).toEqual(expect.arrayContaining(["start", "benchmark", "submit", "check", "bundle-check"]));
  expect(commands(program).filter((c) => !c.description())).toEqual([]);
});

test("no description, summary or option text carries a hard line break", () => {
  const broken = commands(buildProgram())
    .flatMap(texts)
    .filter(([, text]) => /[\r\n]/.test(text));
  expect(broken).toEqual([]);
});

test.each([80, 120])("every help screen fits %i columns", (width) => {
  for (const command of commands(buildProgram())) {
    command.configureHelp({ helpWidth: width });
    const tooWide = command
      .helpInformation()
      .split("\n")
      .filter((line) => line.length > width);
    expect({ [command.name()]: tooWide }).toEqual({ [command.name()]: [] });
  }
});

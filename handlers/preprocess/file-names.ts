/**
 * What a file input's value may name. ComfyUI's LoadImage (and every node built like it) joins the value to its
 * input folder without confining it: `..`, an absolute path or a ` [output]` / ` [temp]` / ` [input]` annotation
 * (which picks another of ComfyUI's folders) reach other callers' outputs and any file on the machine. A value that
 * is not one of the choices ComfyUI itself declared for the input must therefore be a plain file name: a file at
 * the top of the input folder (the image's own inputs, and the worker's downloads `url_<hash><ext>`).
 * Each rule below is a way out of that folder; a name that passes all of them has none.
 */
const RULES: [test: (value: string) => boolean, problem: string][] = [
  [(v) => v.length === 0, "is empty"],
  [(v) => v.includes("\0"), "holds a NUL character"],
  [(v) => /[/\\]/.test(v), "holds a path separator"],
  [(v) => v === "." || v === "..", "names a folder"],
  [(v) => /^[A-Za-z]:/.test(v), "is an absolute path"],
  [
    (v) => /\[(?:output|input|temp)\]\s*$/i.test(v),
    "names one of ComfyUI's folders (an [output]/[input]/[temp] annotation)",
  ],
];

/** Why `value` is not a plain file name of the input folder, or undefined when it is one. */
export function fileNameProblem(value: string): string | undefined {
  return RULES.find(([test]) => test(value))?.[1];
}

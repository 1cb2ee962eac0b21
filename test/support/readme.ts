/**
 * Each package's README starts with a runnable example: the first fenced block, a `js` block of
 * 10 to 20 lines before the first `##` heading. The packed-package test runs exactly that text.
 */
export interface ReadmeExample {
  code: string;
  lines: number;
}

/** The README's leading example, or an error naming the file and what was expected. */
export function readmeExample(text: string, file: string): ReadmeExample {
  const fence = /^```(\S*)[^\n]*\n([\s\S]*?)^```\s*$/m.exec(text);
  if (!fence) throw new Error(`${file}: no fenced code block; expected a \`\`\`js example at the top`);
  const heading = /^## /m.exec(text);
  if (heading && heading.index < fence.index)
    throw new Error(
      `${file}: the first code block comes after the "${text.slice(
        heading.index,
        text.indexOf("\n", heading.index),
      )}" heading; expected the example before any section`,
    );
  if (fence[1] !== "js")
    throw new Error(`${file}: the first code block is \`\`\`${fence[1]}; expected \`\`\`js (plain JavaScript, runnable without a TypeScript loader)`);
  const code = fence[2];
  const lines = code.trimEnd().split("\n").length;
  if (lines < 10 || lines > 20) throw new Error(`${file}: the example has ${lines} lines; expected 10 to 20`);
  return { code, lines };
}

// `nodespeed run script.js a b` runs `<node> script.js a b` (like `deepspeed script.py` runs python);
// anything else is executed as given.
export function buildCommand(program: string, args: string[], node: string = process.execPath): string[] {
  return /\.(c|m)?js$/.test(program) ? [node, program, ...args] : [program, ...args];
}

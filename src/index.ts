// Public library entry: `import { ... } from 'nodespeed'`.
export {};

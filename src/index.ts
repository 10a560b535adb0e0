// Public library entry: `import { ... } from 'nodespeed'`.
export { rankInfo, type RankInfo } from './rankinfo.js';

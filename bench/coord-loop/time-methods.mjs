// Times some of the coordinator's methods in its own process: a node --import hook for coord.mjs
// (run.mjs --node-args=--import=./bench/coord-loop/time-methods.mjs; with --dist, that build's).
// Each call is timed with performance.now() and the mean per call printed as the process exits:
// what an arrival costs in the router and the API, apart from grpc-js and the rest of the loop.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const o = JSON.parse(process.argv[2] ?? '{}');
const dist = o.dist ?? resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist');
const { Router } = await import(join(dist, 'coordinator/router.js'));
const { InferenceApi } = await import(join(dist, 'coordinator/api.js'));
const { RequestStore } = await import(join(dist, 'coordinator/requests.js'));

const timed = [];
function time(proto, name, label) {
  const orig = proto[name];
  const s = { label, n: 0, ms: 0 };
  timed.push(s);
  proto[name] = function (...args) {
    const t = performance.now();
    try {
      return orig.apply(this, args);
    } finally {
      s.ms += performance.now() - t;
      s.n++;
    }
  };
}
time(Router.prototype, 'choose', 'Router.choose');
time(Router.prototype, 'submit', 'Router.submit (after choose)');
time(InferenceApi.prototype, 'admitChoices', 'InferenceApi.admitChoices');
time(InferenceApi.prototype, 'generate', 'the Generate handler, its synchronous part');
time(RequestStore.prototype, 'finish', 'RequestStore.finish (no-op calls too)');
process.on('exit', () => {
  for (const s of timed) process.stderr.write(`time-methods: ${s.label}: ${s.n} calls, ${s.n ? ((s.ms * 1000) / s.n).toFixed(2) : '-'} us each\n`);
});

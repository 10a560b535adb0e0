import { defineConfig } from 'vitest/config';

// Integration tests start real processes (workers, sshd, gRPC servers) on a 2-core machine:
// keep files sequential so timing-sensitive tests (heartbeats, teardown deadlines) are not starved.
// test/gpu's suites are included: on a host without a GPU they skip, each saying why in its title
// (`npx vitest run test/gpu` on a GPU host runs them; bench/gpu-visit.sh).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
    reporters: ['default'],
  },
});

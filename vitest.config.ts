import { defineConfig } from 'vitest/config';

// Integration tests start real processes (workers, sshd, gRPC servers) on a 2-core machine:
// keep files sequential so timing-sensitive tests (heartbeats, teardown deadlines) are not starved.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/gpu/**', 'node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
    reporters: ['default'],
  },
});

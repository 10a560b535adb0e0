// Finds and loads the .proto files (proto/ at the package root) with @grpc/proto-loader. The one
// place that knows where they are and how they are decoded; the TypeScript types of what it
// decodes are generated from the same files with the same options (scripts/proto-types.mjs).
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

// dist/protocol/proto.js and src/protocol/proto.ts both sit two levels below the package root.
export const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto');
export const INFERENCE_PROTO = join(PROTO_DIR, 'inference.proto');
export const CONTROL_PROTO = join(PROTO_DIR, 'control.proto');

// uint64 (seed, epoch) as decimal strings: no precision loss above 2^53. Enums as their names.
export const LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true } satisfies protoLoader.Options;

function load(path: string): protoLoader.PackageDefinition {
  if (!existsSync(path)) throw new Error(`nodespeed: ${path} is missing (the package is incomplete)`);
  return protoLoader.loadSync(path, { ...LOADER_OPTIONS, includeDirs: [PROTO_DIR] });
}

let inference: protoLoader.PackageDefinition | undefined;
let control: protoLoader.PackageDefinition | undefined;

export function inferencePackageDefinition(): protoLoader.PackageDefinition {
  return (inference ??= load(INFERENCE_PROTO));
}

export function controlPackageDefinition(): protoLoader.PackageDefinition {
  return (control ??= load(CONTROL_PROTO));
}

export const INFERENCE_SERVICE = 'nodespeed.v1.Inference';
export const CONTROL_SERVICE = 'nodespeed.control.v1.Control';

/** The service definition of a fully qualified service name in a package definition. */
export function serviceDefinition(def: protoLoader.PackageDefinition, name: string): grpc.ServiceDefinition {
  const svc = def[name];
  if (!svc || 'format' in svc) throw new Error(`proto: service ${name} not found`);
  return svc as grpc.ServiceDefinition;
}

/** A client constructor for a service (grpc.makeClientConstructor over the loaded definition). */
export function clientConstructor(def: protoLoader.PackageDefinition, name: string): grpc.ServiceClientConstructor {
  return grpc.makeClientConstructor(serviceDefinition(def, name), name);
}

// Programmatic launcher API (used by `nodespeed run` and `nodespeed launch`). See docs/LAUNCHER.md.
export { parseHostfile, loadHostfile, HostfileError, type HostEntry, type HostfileIssue } from './hostfile.js';
export { openHostfile, saveHostfile, addHost, removeHost, setHostSlots } from './hostfile-edit.js';
export { selectHosts, SelectionError, type SelectedHost, type SelectOptions } from './select.js';
export { planWorld, defaultLocalHosts, localPool, detectLocalGpus, visibleGpus, isLocalHost, type Placement, type RankPlacement, type PlanOptions } from './plan.js';
export { loadEnvFiles, parseEnvFile, parseEnvFileAssigns, carriedEnv, rankVars, EnvFileError, JOB_TOKEN_VAR, type VisibleDevices } from './env.js';
export { resolveTarget, connect, SshError, type SshOptions, type SshTarget, type SshErrorKind } from './ssh.js';
export { startJob, Job, type JobSpec, type JobResult, type RankLine, type RankExitEvent } from './supervisor.js';
export { buildCommand } from './command.js';
export { attachConsole, placementTable, dryRunCommands } from './format.js';
export { checkHost, checkTable, type HostCheck } from './check.js';
export { addLauncherOptions, readLauncherOptions, readRunOptions, planFromOptions, parseIntFlag, type LauncherOptions, type RunOptions } from './flags.js';
export { rankCommand, programArgv } from './command.js';
export { BACKENDS, backendCommand, type BackendName } from './backends.js';
export { parseCoreList, coresForRank } from './cores.js';

# NCCL's own floor on this host for the all-reduces a tensor-parallel decode step makes: one
# process per GPU (as nodespeed's workers), PyTorch's NCCL, all-reduce of a hidden-state row
# (4096 f32 = 16 KB, and bf16) timed eagerly (back to back, 1000 calls) and as 65 calls captured
# in one CUDA graph. Prints one JSON line per rank 0.
# usage: python3 bench/tp/nccl_latency.py [--world 2]
import json, os, sys, time
import torch, torch.distributed as dist, torch.multiprocessing as mp

def run(rank, world):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
    torch.cuda.set_device(rank)
    dist.init_process_group('nccl', rank=rank, world_size=world, device_id=torch.device('cuda', rank))
    out = {'world': world, 'nccl': '.'.join(map(str, torch.cuda.nccl.version())), 'torch': torch.__version__}
    for name, dt, n in [('f32_16KB', torch.float32, 4096), ('bf16_8KB', torch.bfloat16, 4096), ('f32_1MB', torch.float32, 262144)]:
        x = torch.ones(n, dtype=dt, device='cuda')
        for _ in range(50): dist.all_reduce(x)
        torch.cuda.synchronize(); dist.barrier()
        t0 = time.perf_counter()
        for _ in range(1000): dist.all_reduce(x)
        torch.cuda.synchronize()
        out[name + '_eager_us'] = round((time.perf_counter() - t0) * 1e3, 2)  # per call: ms total / 1000 calls = us
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for _ in range(3): dist.all_reduce(x)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(65): dist.all_reduce(x)
        for _ in range(3): g.replay()
        torch.cuda.synchronize(); dist.barrier()
        t0 = time.perf_counter()
        for _ in range(50): g.replay()
        torch.cuda.synchronize()
        out[name + '_graph_us'] = round((time.perf_counter() - t0) / 50 / 65 * 1e6, 2)
    if rank == 0: print(json.dumps(out), flush=True)
    dist.destroy_process_group()

if __name__ == '__main__':
    world = int(sys.argv[sys.argv.index('--world') + 1]) if '--world' in sys.argv else 2
    mp.spawn(run, args=(world,), nprocs=world)

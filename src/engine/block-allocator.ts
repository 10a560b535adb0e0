// Paged KV-cache bookkeeping: which physical blocks of the backend's cache belong to which
// sequence. The backend only reads the block tables; whoever schedules steps owns one of these.

export class KvCacheFullError extends Error {
  constructor(readonly needed: number, readonly free: number) {
    super(`KV cache full: ${needed} more blocks needed, ${free} free`);
    this.name = 'KvCacheFullError';
  }
}

export class BlockAllocator {
  private readonly freeList: number[];
  private readonly tables = new Map<string | number, number[]>();

  constructor(readonly numBlocks: number, readonly blockSize: number) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) throw new RangeError(`BlockAllocator: numBlocks must be a positive integer (got ${numBlocks})`);
    if (!Number.isInteger(blockSize) || blockSize < 1) throw new RangeError(`BlockAllocator: blockSize must be a positive integer (got ${blockSize})`);
    // Pop from the end: low block ids are handed out first.
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get freeBlocks(): number {
    return this.freeList.length;
  }

  /** Blocks that cover positions [0, tokens). */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  has(seq: string | number): boolean {
    return this.tables.has(seq);
  }

  /** Whether `seq` (new or existing) could grow to cover `tokens` positions right now. */
  canAllocate(seq: string | number, tokens: number): boolean {
    const have = this.tables.get(seq)?.length ?? 0;
    return this.blocksFor(tokens) - have <= this.freeList.length;
  }

  /** Grows (or creates) `seq`'s table to cover `tokens` positions; returns the table. */
  allocate(seq: string | number, tokens: number): Int32Array {
    const table = this.tables.get(seq) ?? [];
    const need = this.blocksFor(tokens) - table.length;
    if (need > this.freeList.length) throw new KvCacheFullError(need, this.freeList.length);
    for (let i = 0; i < need; i++) table.push(this.freeList.pop()!);
    this.tables.set(seq, table);
    return Int32Array.from(table);
  }

  table(seq: string | number): Int32Array {
    const table = this.tables.get(seq);
    if (!table) throw new Error(`BlockAllocator: unknown sequence ${String(seq)}`);
    return Int32Array.from(table);
  }

  /** Returns `seq`'s blocks to the free list (finish or cancel); unknown ids are ignored. */
  free(seq: string | number): void {
    const table = this.tables.get(seq);
    if (!table) return;
    for (let i = table.length - 1; i >= 0; i--) this.freeList.push(table[i]!);
    this.tables.delete(seq);
  }
}

// Paged KV-cache bookkeeping: which physical blocks of the backend's cache belong to which
// sequence. The backend only reads the block tables; whoever schedules steps owns one of these.
//
// Models whose every layer attends only to the last `window` positions (Mistral) reuse blocks
// that fell out of the window: a sequence's table cycles through a ring of R physical blocks
// (table[i] = ring[i % R]), so position p + R*B overwrites p. With R*B >= longestStep + window - 1
// nothing a step reads was overwritten: a token at q needs keys > q - window, and the newest
// write of a step that starts at s lands at most R*B - window + 1 before s. The whole context is
// served in a bounded number of blocks; the backend just follows the table.

export class KvCacheFullError extends Error {
  constructor(readonly needed: number, readonly free: number) {
    super(`KV cache full: ${needed} more blocks needed, ${free} free`);
    this.name = 'KvCacheFullError';
  }
}

export class BlockAllocator {
  private readonly freeList: number[];
  private readonly tables = new Map<string | number, { ring: number[]; positions: number }>();

  /** window: positions every layer keeps behind a token (0: all of them, no reuse). */
  constructor(readonly numBlocks: number, readonly blockSize: number, readonly window = 0) {
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

  /**
   * Physical blocks a sequence of `tokens` positions holds whose steps carry at most `longestStep`
   * tokens: all of its positions' blocks, or with a window the ring that is enough.
   */
  blocksNeeded(tokens: number, longestStep = tokens): number {
    const all = this.blocksFor(tokens);
    if (this.window <= 0) return all;
    return Math.min(all, Math.ceil((Math.min(longestStep, tokens) + this.window - 1) / this.blockSize));
  }

  has(seq: string | number): boolean {
    return this.tables.has(seq);
  }

  /** Physical blocks `seq` holds now (its ring's length with a window; 0 for an unknown one). */
  held(seq: string | number): number {
    return this.tables.get(seq)?.ring.length ?? 0;
  }

  /** Whether `seq` (new or existing) could grow to cover `tokens` positions right now. */
  canAllocate(seq: string | number, tokens: number, longestStep = tokens): boolean {
    return this.blocksNeeded(tokens, longestStep) - this.held(seq) <= this.freeList.length;
  }

  /**
   * Grows (or creates) `seq`'s table to cover `tokens` positions, for steps of at most
   * `longestStep` tokens (a prefill chunk; later steps may not be longer); returns the table.
   */
  allocate(seq: string | number, tokens: number, longestStep = tokens): Int32Array {
    const entry = this.tables.get(seq) ?? { ring: [], positions: 0 };
    if (this.window > 0 && entry.ring.length && entry.ring.length < this.blocksFor(entry.positions))
      throw new Error(`BlockAllocator: sequence ${String(seq)} already cycles through ${entry.ring.length} blocks; it cannot grow its ring`);
    const need = this.blocksNeeded(tokens, longestStep) - entry.ring.length;
    if (need > this.freeList.length) throw new KvCacheFullError(need, this.freeList.length);
    for (let i = 0; i < need; i++) entry.ring.push(this.freeList.pop()!);
    entry.positions = Math.max(entry.positions, tokens);
    this.tables.set(seq, entry);
    return this.tableOf(entry);
  }

  table(seq: string | number): Int32Array {
    const entry = this.tables.get(seq);
    if (!entry) throw new Error(`BlockAllocator: unknown sequence ${String(seq)}`);
    return this.tableOf(entry);
  }

  private tableOf(e: { ring: number[]; positions: number }): Int32Array {
    const n = Math.max(e.ring.length, this.blocksFor(e.positions));
    return Int32Array.from({ length: n }, (_, i) => e.ring[i % e.ring.length]!);
  }

  /** Returns `seq`'s blocks to the free list (finish or cancel); unknown ids are ignored. */
  free(seq: string | number): void {
    const entry = this.tables.get(seq);
    if (!entry) return;
    for (let i = entry.ring.length - 1; i >= 0; i--) this.freeList.push(entry.ring[i]!);
    this.tables.delete(seq);
  }
}

/** A sequence's block tables as a step takes them (StepSeq). */
export interface SeqTables {
  blockTable: Int32Array;
  /** The windowed layers' ring into their own pool (models that mix windowed and global layers). */
  windowBlockTable?: Int32Array;
}

export interface KvGroupsOptions {
  /** Blocks of the main pool: every layer's, or the global layers' when windowBlocks is set. */
  blocks: number;
  blockSize: number;
  /** Positions the layers keep behind a token. Without windowBlocks: every layer's (0: all). */
  window?: number;
  /** The windowed layers' own pool (the engine's kvWindowBlocks): its tables are rings of `window`. */
  windowBlocks?: number;
}

/**
 * The paged KV cache's groups of layers, each with its own pool and one table per sequence (the
 * shape of vLLM's hybrid KV cache manager): the main group, and for models that mix windowed and
 * global layers (Gemma 2/3, Qwen2 with max_window_layers) the windowed layers' group, whose table
 * cycles through a ring of the blocks the window needs. A long sequence then holds every block
 * only in the global layers. A sequence is admitted when both groups have room.
 */
export class KvGroups {
  readonly main: BlockAllocator;
  readonly windowed: BlockAllocator | null;

  constructor(o: KvGroupsOptions) {
    const w = o.window ?? 0;
    if (o.windowBlocks && w <= 0) throw new RangeError('KvGroups: a window pool needs a window');
    this.main = new BlockAllocator(o.blocks, o.blockSize, o.windowBlocks ? 0 : w);
    this.windowed = o.windowBlocks ? new BlockAllocator(o.windowBlocks, o.blockSize, w) : null;
  }

  get blockSize(): number {
    return this.main.blockSize;
  }

  /**
   * Why a sequence of `tokens` positions (steps of at most `longestStep`) can never be held, or
   * null when an empty cache holds it.
   */
  neverFits(tokens: number, longestStep = tokens, cache = 'the cache'): string | null {
    const main = this.main.blocksNeeded(tokens, longestStep);
    if (main > this.main.numBlocks) return `needs ${main} KV blocks, ${cache} has ${this.main.numBlocks}`;
    const w = this.windowed;
    if (w && w.blocksNeeded(tokens, longestStep) > w.numBlocks)
      return `needs ${w.blocksNeeded(tokens, longestStep)} KV blocks for the windowed layers, ${cache} has ${w.numBlocks}`;
    return null;
  }

  canAllocate(seq: string | number, tokens: number, longestStep = tokens): boolean {
    return this.main.canAllocate(seq, tokens, longestStep) && (!this.windowed || this.windowed.canAllocate(seq, tokens, longestStep));
  }

  /** Grows (or creates) `seq`'s tables in every group (BlockAllocator.allocate); nothing changes when one group is full. */
  allocate(seq: string | number, tokens: number, longestStep = tokens): SeqTables {
    if (!this.canAllocate(seq, tokens, longestStep)) {
      const g = this.main.canAllocate(seq, tokens, longestStep) ? this.windowed! : this.main;
      throw new KvCacheFullError(g.blocksNeeded(tokens, longestStep) - g.held(seq), g.freeBlocks);
    }
    this.main.allocate(seq, tokens, longestStep);
    this.windowed?.allocate(seq, tokens, longestStep);
    return this.tables(seq);
  }

  tables(seq: string | number): SeqTables {
    const blockTable = this.main.table(seq);
    return this.windowed ? { blockTable, windowBlockTable: this.windowed.table(seq) } : { blockTable };
  }

  free(seq: string | number): void {
    this.main.free(seq);
    this.windowed?.free(seq);
  }
}

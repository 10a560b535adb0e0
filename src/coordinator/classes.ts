// Request classes: each has a name, the integer priority its name stands for, the replica groups it
// may use in order of preference, and optionally a TTFT target (p99, ms) the router holds it to
// (router.ts), a stream interval (how often its clients' streams may write) and exclusive prefill
// (its requests' first prompt chunks ride steps without less urgent work: worker/scheduler.ts). A
// request names its class or gives an integer (protocol/priority.ts): an integer p falls in the
// class with the largest priority <= p (below every class: the most urgent one), so the classes
// split the integers into ranges and an integer orders requests within its class. Without a
// deployment file, or when it names none: realtime (-100), standard (0) and batch (100), each on
// every group in the groups' order. A request that gives no priority is standard's (0) when there
// is a standard class, else the least urgent class's.
import { PriorityError } from '../protocol/priority.js';
import type { Priority } from '../protocol/priority.js';

export interface ClassSpec {
  name: string;
  /** The integer its name stands for; lower is more urgent. */
  priority: number;
  /** Group names, in order of preference. */
  groups: string[];
  /** Time to first token its p99 should stay within; absent: none (it takes the first group with room). */
  ttftP99Ms?: number;
  /**
   * Its clients' streams (gRPC Generate, SSE) write at most one message per this many ms, the
   * tokens that came meanwhile merged into it; the first token and the stream's end do not wait.
   * Absent or 0: each token as soon as it comes.
   */
  streamIntervalMs?: number;
  /**
   * The step that carries the first prompt chunk of one of its requests leaves out less urgent
   * classes' sequences (they wait that one step), so its first token does not wait for a full
   * batch's step. Bounded per replica (worker/scheduler.ts). Absent: false.
   */
  exclusivePrefill?: boolean;
}

export interface RequestClass extends ClassSpec {
  /** 0 for the most urgent class: a request may preempt running requests of a higher rank. */
  rank: number;
  /** Indices of its groups in the layout, in order of preference. */
  groupIndex: number[];
}

/** The default classes and the priority each name stands for (vLLM's default priority, 0, is standard). */
export const DEFAULT_CLASS_PRIORITY: Readonly<Record<string, number>> = { realtime: -100, standard: 0, batch: 100 };

export function defaultClasses(groups: string[]): ClassSpec[] {
  return Object.entries(DEFAULT_CLASS_PRIORITY).map(([name, priority]) => ({ name, priority, groups: [...groups] }));
}

export class ClassTable {
  /** Most urgent first. */
  readonly list: RequestClass[];
  private readonly byName = new Map<string, RequestClass>();

  constructor(specs: ClassSpec[], groupNames: string[]) {
    if (!specs.length) throw new Error('request classes: none given');
    const sorted = [...specs].sort((a, b) => a.priority - b.priority);
    this.list = sorted.map((c, rank) => {
      const groupIndex = c.groups.map((g) => {
        const i = groupNames.indexOf(g);
        if (i < 0) throw new Error(`class ${c.name}: no group named ${g} (groups: ${groupNames.join(', ')})`);
        return i;
      });
      return { ...c, groups: [...c.groups], rank, groupIndex };
    });
    for (let i = 1; i < this.list.length; i++)
      if (this.list[i]!.priority === this.list[i - 1]!.priority)
        throw new Error(`classes ${this.list[i - 1]!.name} and ${this.list[i]!.name} have the same priority ${this.list[i]!.priority}`);
    for (const c of this.list) this.byName.set(c.name, c);
  }

  get(name: string): RequestClass | undefined {
    return this.byName.get(name);
  }

  /** The class an integer priority falls in: the largest priority <= p, or the most urgent class. */
  forValue(p: number): RequestClass {
    let c = this.list[0]!;
    for (const x of this.list) if (x.priority <= p) c = x;
    return c;
  }

  /** A request's class and its integer priority; an unknown class name throws a PriorityError. */
  resolve(p: Priority | undefined): { cls: RequestClass; priority: number } {
    if (!p) {
      const cls = this.byName.get('standard') ?? this.list[this.list.length - 1]!;
      return { cls, priority: cls.priority };
    }
    if ('value' in p) return { cls: this.forValue(p.value), priority: p.value };
    const cls = this.byName.get(p.className);
    if (!cls) throw new PriorityError(`unknown class "${p.className}" (this server has ${this.list.map((c) => c.name).join(', ')})`);
    return { cls, priority: cls.priority };
  }
}

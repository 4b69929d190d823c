/** Files that jobs still use, counted: a file is pinned while any job that pinned it has not let go. */
export class Pins {
  private readonly counts = new Map<string, number>();

  pin(file: string): void {
    this.counts.set(file, (this.counts.get(file) ?? 0) + 1);
  }

  unpin(file: string): void {
    const n = (this.counts.get(file) ?? 1) - 1;
    if (n <= 0) this.counts.delete(file);
    else this.counts.set(file, n);
  }

  has(file: string): boolean {
    return this.counts.has(file);
  }

  files(): Set<string> {
    return new Set(this.counts.keys());
  }
}
